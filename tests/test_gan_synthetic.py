"""The GAN synthesiser (loadtest/synthetic.py) with the shipped gan_demand generator: distinct,
realistic, deterministic sensor streams, and a synthetic replay served by a worker."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from prometheus_client import CollectorRegistry

from statecast.contract.manifest import check_digest, load_manifest
from statecast.contract.paths import PACKAGE_ROOT
from statecast.export import gan_export
from statecast.loadtest.generator import GeneratorConfig, StreamPlan
from statecast.loadtest.replay import ReplaySettings, TopicLoad, run_replay
from statecast.loadtest.series import sensor_series
from statecast.loadtest.synthetic import (
    DAY,
    HALF_HOUR_MS,
    RealCalendar,
    StreamSet,
    SyntheticStreams,
    generator_factory,
)
from statecast.worker.loop import Worker
from statecast.worker.routing import Route
from tests.fixtures.kafka import consume_all, create_topic
from tests.fixtures.tiny_models import TinyModel, tiny_forecast_model, worker_settings

STREAMS = 300


@pytest.fixture(scope="module")
def onnx_path() -> Path:
    return check_digest(load_manifest()["gan_demand"], PACKAGE_ROOT)


@pytest.fixture(scope="module")
def calendar() -> RealCalendar:
    return RealCalendar.load()


def days_of(synth: SyntheticStreams, streams: int, days: int) -> dict[str, np.ndarray]:
    """Per field ``[streams, days * 48]``, read in the generator's round-robin order."""
    rows: list[list[dict[str, Any]]] = [[] for _ in range(streams)]
    for step in range(days * DAY):
        for i in range(streams):
            rows[i].append(orjson.loads(synth.event(i, step)))
    out = {
        k: np.asarray([[r["values"][k] for r in rs] for rs in rows], np.float64)
        for k in ("demand", "temperature", "workday")
    }
    out["ts"] = np.asarray([[r["ts"] for r in rs] for rs in rows], np.float64)
    return out


def test_streams_are_distinct_realistic_and_repeatable(
    onnx_path: Path, calendar: RealCalendar
) -> None:
    synth = SyntheticStreams([StreamSet("sensor", STREAMS, 4, "sensor")], 3, onnx_path)
    got = days_of(synth, 60, 2)
    demand = got["demand"]
    # Distinct: no two streams share a day (fresh noise per stream and day).
    day1 = demand[:, :DAY]
    assert len({tuple(np.round(r, 4)) for r in day1}) == len(day1)
    # Time moves on by half an hour per event; a day boundary starts a new synthetic day.
    assert (np.diff(got["ts"], axis=1) == HALF_HOUR_MS).all()
    assert synth.block_days == 2
    # Realistic: within the range of real Victorian demand, and the average synthetic
    # day has the real average day's shape (night trough, evening peak).
    real = sensor_series()[0].values[:, 0].reshape(-1, DAY)
    assert demand.min() > real.min() - 0.5
    assert demand.max() < real.max() + 0.5
    assert np.corrcoef(demand.reshape(-1, DAY).mean(0), real.mean(0))[0, 1] > 0.9
    # Conditions are the real calendar's workday flags (constant within a day).
    assert set(np.unique(got["workday"])) <= {0.0, 1.0}
    assert (got["workday"][:, :DAY] == got["workday"][:, :1]).all()
    # Repeatable: the same seed gives the same events, another seed others.
    again = SyntheticStreams([StreamSet("sensor", STREAMS, 4, "sensor")], 3, onnx_path)
    assert [again.event(i, 5) for i in range(10)] == [synth.event(i, 5) for i in range(10)]
    other = SyntheticStreams([StreamSet("sensor", STREAMS, 4, "sensor")], 4, onnx_path)
    assert other.event(0, 5) != synth.event(0, 5)


def test_replay_cli_refuses_synthetic_prices() -> None:
    from statecast.cli import main

    with pytest.raises(SystemExit, match="sensor"):
        main(["replay", "--synthetic", "gan", "--topic", "prices", "--bootstrap", "x:1"])


def test_onnx_generator_matches_pytorch() -> None:
    assert gan_export.parity_gan_demand() <= 1e-4


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    return tiny_forecast_model(tmp_path_factory.mktemp("gan-replay"))


@pytest.mark.integration
async def test_synthetic_replay_feeds_a_worker(
    tiny: TinyModel, kafka_bootstrap: str, redis_url: str, unique: Callable[[str], str]
) -> None:
    topic, preds, dlq = unique("sensor"), unique("predictions"), unique("dlq")
    for t in (topic, preds, dlq):
        await create_topic(kafka_bootstrap, t, partitions=4)
    streams, steps = 200, 3
    settings = ReplaySettings(
        bootstrap=kafka_bootstrap,
        loads=(TopicLoad(topic, streams),),
        generator=GeneratorConfig(count=streams * steps),
        partitions=4,
    )
    plan = StreamPlan(topic, tuple(sensor_series()), streams, 4, id_prefix="syn")
    summary = await run_replay(
        settings, plans=[plan], generator_factory=generator_factory(seed=1), progress_out=None
    )
    assert summary["generator"]["events"] == streams * steps
    assert summary["streams"] == streams

    records = await consume_all(kafka_bootstrap, topic, streams * steps)
    by_stream: dict[bytes, list[dict[str, object]]] = defaultdict(list)
    for rec in records:
        event = orjson.loads(rec.value)
        assert rec.key == event["stream"].encode()
        by_stream[rec.key].append(event)
    assert len(by_stream) == streams
    assert all(len(v) == steps for v in by_stream.values())

    settings_w = worker_settings(
        bootstrap=kafka_bootstrap,
        redis_url=redis_url,
        model=tiny,
        routes=[Route(topic, "sensor_lstm", {})],
        predictions=preds,
        dlq=dlq,
        group=unique("g"),
        prefix=unique("state"),
    )
    total = streams * steps
    stats = await Worker(settings_w, CollectorRegistry()).run(max_records=total, idle_timeout_s=20)
    assert stats.records == total
    assert stats.dead_letters == 0
    assert stats.predictions == total
