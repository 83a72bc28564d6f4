"""The worker end to end against the real broker and Redis, with a tiny random LSTM.

The reference for every prediction and every final state is the same ONNX step run
offline over each stream's own series one event at a time: equality proves per-stream
order, batching in waves, state carried through the cache and Redis, and the offset fence.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
import orjson
import pytest
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry

from statecast.worker.loop import Worker
from statecast.worker.routing import Route
from statecast.worker.settings import Settings
from statecast.worker.state_codec import StateCodec
from statecast.worker.state_store import state_key
from tests.kafka_helpers import consume_all, create_topic, produce
from tests.worker_helpers import (
    TinyModel,
    event,
    offline_predictions,
    tiny_forecast_model,
    worker_settings,
)

pytestmark = pytest.mark.integration

Series = dict[str, list[list[float]]]


@pytest.fixture(scope="module")
def lstm(tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    return tiny_forecast_model(tmp_path_factory.mktemp("tiny"))


def make_series(n_streams: int, n_events: int, seed: int) -> Series:
    rng = random.Random(seed)
    return {
        f"meter-{i:03d}": [
            [rng.uniform(20, 40), rng.uniform(-5, 35), float(rng.randint(0, 1))]
            for _ in range(n_events)
        ]
        for i in range(n_streams)
    }


def interleaved(series: Series, seed: int) -> list[tuple[bytes, bytes]]:
    """Every stream's events in order, streams shuffled together at random."""
    rng = random.Random(seed)
    cursors = {s: 0 for s in series}
    out: list[tuple[bytes, bytes]] = []
    while cursors:
        s = rng.choice(sorted(cursors))
        i = cursors[s]
        row = series[s][i]
        out.append(
            (s.encode(), event(s, 1_700_000_000_000 + i, dict(zip(FEATS, row, strict=True))))
        )
        cursors[s] = i + 1
        if cursors[s] == len(series[s]):
            del cursors[s]
    return out


FEATS = ("demand", "temperature", "workday")


async def stored_state(
    redis_url: str, model: TinyModel, prefix: str, stream: str
) -> tuple[dict[str, Any], int] | None:
    client = aioredis.Redis.from_url(redis_url)
    try:
        raw = await client.get(state_key(prefix, model.spec.name, model.spec.state_version, stream))
    finally:
        await client.aclose()
    assert raw is None or isinstance(raw, bytes)
    res = StateCodec(model.spec.states, model.spec.state_version).decode(raw)
    if res.state is None:
        return None
    return res.state.tensors, res.state.offset


def by_stream(records: list[Any]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        p = orjson.loads(r.value)
        out.setdefault(p["stream"], []).append(p)
    return out


async def setup_topics(
    bootstrap: str, unique: Callable[[str], str], partitions: int = 4
) -> tuple[str, str, str]:
    topic, preds, dlq = unique("sensor"), unique("predictions"), unique("dlq")
    for t in (topic, preds, dlq):
        await create_topic(bootstrap, t, partitions=partitions)
    return topic, preds, dlq


def settings_for(
    lstm: TinyModel,
    kafka_bootstrap: str,
    redis_url: str,
    unique: Callable[[str], str],
    topics: tuple[str, str, str],
    **overrides: Any,
) -> Settings:
    topic, preds, dlq = topics
    return worker_settings(
        bootstrap=kafka_bootstrap,
        redis_url=redis_url,
        model=lstm,
        routes=[Route(topic, lstm.spec.name)],
        predictions=preds,
        dlq=dlq,
        group=unique("group"),
        prefix=unique("state"),
        **overrides,
    )


async def test_interleaved_streams_match_offline_run_and_replays_never_advance_state(
    lstm: TinyModel, kafka_bootstrap: str, redis_url: str, unique: Callable[[str], str]
) -> None:
    series = make_series(n_streams=40, n_events=25, seed=1)
    total = sum(len(v) for v in series.values())
    topics = await setup_topics(kafka_bootstrap, unique)
    await produce(kafka_bootstrap, topics[0], interleaved(series, seed=2))
    # Small batches: many batches, several waves each, states carried through the cache.
    settings = settings_for(lstm, kafka_bootstrap, redis_url, unique, topics, max_batch_records=97)
    registry = CollectorRegistry()
    stats = await Worker(settings, registry).run(max_records=total, idle_timeout_s=20)
    assert stats.records == total
    assert stats.predictions == total

    got = await consume_all(kafka_bootstrap, topics[1], expected=total)
    assert len(got) == total
    assert len({orjson.loads(r.value)["id"] for r in got}) == total
    preds = by_stream(got)
    assert set(preds) == set(series)
    for stream, rows in series.items():
        want, want_state = offline_predictions(lstm.onnx_path, lstm.spec, rows)
        assert [p["ts"] for p in preds[stream]] == sorted(p["ts"] for p in preds[stream])
        np.testing.assert_allclose(
            [p["prediction"]["demand_next"] for p in preds[stream]], want, atol=1e-4
        )
        assert all(p["model"] == "sensor_lstm@0.0.1-test" for p in preds[stream])
        stored = await stored_state(redis_url, lstm, settings.state_prefix, stream)
        assert stored is not None
        for name, arr in want_state.items():
            np.testing.assert_allclose(stored[0][name], arr, atol=1e-4)
    assert registry.get_sample_value("statecast_records_consumed_total", {"topic": topics[0]}) == (
        total
    )
    assert registry.get_sample_value(
        "statecast_predictions_published_total", {"model": "sensor_lstm"}
    ) == (total)
    for partition in range(4):  # everything consumed: no lag left on any partition
        labels = {"topic": topics[0], "partition": str(partition)}
        assert registry.get_sample_value("statecast_consumer_lag", labels) == 0
    waves = registry.get_sample_value("statecast_waves_per_batch_sum")
    batches = registry.get_sample_value("statecast_waves_per_batch_count")
    assert waves is not None
    assert batches is not None
    assert waves > batches  # several waves per batch: streams had more than one record

    # A second group re-reads the topic from the start with the same state prefix: every
    # record is at or below its stream's stored offset, so nothing is applied or published.
    before = {s: await stored_state(redis_url, lstm, settings.state_prefix, s) for s in series}
    replay = replace(settings, kafka=replace(settings.kafka, group_id=unique("again")))
    stats2 = await Worker(replay, CollectorRegistry()).run(max_records=total, idle_timeout_s=20)
    assert stats2.replays == total
    assert stats2.predictions == 0
    for s in series:
        after = await stored_state(redis_url, lstm, settings.state_prefix, s)
        prior = before[s]
        assert after is not None
        assert prior is not None
        assert after[1] == prior[1]
        for name in after[0]:
            np.testing.assert_array_equal(after[0][name], prior[0][name])
