"""The worker end to end against the real broker and Redis, with a tiny random LSTM.

The reference for every prediction and every final state is the same ONNX step run
offline over each stream's own series one event at a time: equality proves per-stream
order, batching in waves, state carried through the cache and Redis, and the offset fence.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np
import orjson
import pytest
from prometheus_client import CollectorRegistry

from statecast.worker.loop import Worker
from tests.fixtures.e2e import by_stream, settings_for, setup_topics, stored_state
from tests.fixtures.kafka import consume_all, produce
from tests.fixtures.streams import interleave, make_series
from tests.fixtures.tiny_models import TinyModel, offline_predictions

pytestmark = pytest.mark.integration


async def test_interleaved_streams_match_offline_run_and_replays_never_advance_state(
    lstm: TinyModel, kafka_bootstrap: str, redis_url: str, unique: Callable[[str], str]
) -> None:
    series = make_series(n_streams=40, n_events=25, seed=1)
    total = sum(len(v) for v in series.values())
    topics = await setup_topics(kafka_bootstrap, unique)
    await produce(kafka_bootstrap, topics[0], interleave(series, seed=2))
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
