"""Bad input, Redis outages and the health endpoints, against the real broker and Redis."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import replace

import numpy as np
import orjson
import pytest
from prometheus_client import CollectorRegistry

from statecast.worker.backoff import DependencyTimeout
from statecast.worker.devstack import Service, free_port
from statecast.worker.health import HealthServer
from statecast.worker.loop import Worker
from statecast.worker.state.redis_conn import RedisSettings
from tests.fixtures.e2e import by_stream, settings_for, setup_topics, stored_state
from tests.fixtures.kafka import consume_all, produce
from tests.fixtures.streams import FEATURES, interleave, make_series
from tests.fixtures.tiny_models import TinyModel, event, offline_predictions

pytestmark = pytest.mark.integration


async def http_get(port: int, path: str) -> tuple[int, str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    data = await reader.read()
    writer.close()
    await writer.wait_closed()
    head, _, body = data.decode().partition("\r\n\r\n")
    return int(head.split()[1]), body


def good(stream: str, ts: int, row: list[float]) -> tuple[bytes, bytes]:
    return stream.encode(), event(stream, ts, dict(zip(FEATURES, row, strict=True)))


BAD: list[tuple[str, bytes]] = [
    ("not_json", b'{"stream": "s", '),
    ("schema", b'["stream", "s"]'),
    ("missing_feature", orjson.dumps({"stream": "s", "ts": 1, "values": {"demand": 1.0}})),
    (
        "extra_feature",
        orjson.dumps(
            {
                "stream": "s",
                "ts": 1,
                "values": {"demand": 1, "temperature": 2, "workday": 1, "x": 0},
            }
        ),
    ),
    (
        "wrong_type",
        orjson.dumps(
            {"stream": "s", "ts": 1, "values": {"demand": "high", "temperature": 2, "workday": 1}}
        ),
    ),
    (
        "not_finite",
        orjson.dumps(
            {"stream": "s", "ts": 1, "values": {"demand": 1e300, "temperature": 2, "workday": 1}}
        ),
    ),
    ("too_large", orjson.dumps({"stream": "s", "ts": 1, "values": {}, "pad": "x" * 10_000})),
    ("empty", b""),
]


async def test_each_bad_input_goes_to_the_dlq_and_leaves_state_untouched(
    lstm: TinyModel, kafka_bootstrap: str, redis_url: str, unique: Callable[[str], str]
) -> None:
    topics = await setup_topics(kafka_bootstrap, unique, partitions=2)
    rows = [[30.0 + i, 10.0 - i, float(i % 2)] for i in range(6)]
    records = [good("s", 0, rows[0]), good("s", 1, rows[1])]
    records += [(b"s", value) for _, value in BAD[:4]]
    records += [good("s", 2, rows[2]), good("s", 3, rows[3])]
    records += [(b"s", value) for _, value in BAD[4:]]
    records += [good("s", 4, rows[4]), good("s", 5, rows[5])]
    settings = settings_for(lstm, kafka_bootstrap, redis_url, unique, topics)
    registry = CollectorRegistry()
    worker = Worker(settings, registry)
    health = HealthServer(registry, worker.readiness)
    await health.start("127.0.0.1", 0)
    try:
        assert (await http_get(health.port, "/healthz"))[0] == 200
        assert (await http_get(health.port, "/readyz"))[0] == 503  # not started yet
        run = asyncio.create_task(worker.run(max_records=len(records), idle_timeout_s=20))
        status = 0
        for _ in range(600):  # ready once assigned with Kafka and Redis answering
            status, _ = await http_get(health.port, "/readyz")
            if status == 200 or run.done():
                break
            await asyncio.sleep(0.05)
        assert status == 200
        await produce(kafka_bootstrap, topics[0], records)
        stats = await asyncio.wait_for(run, timeout=60)
        status, metrics_text = await http_get(health.port, "/metrics")
        assert status == 200
        assert 'statecast_dead_letters_total{reason="not_json"} 1.0' in metrics_text
        assert "statecast_step_seconds_bucket" in metrics_text
    finally:
        await health.stop()

    assert stats.dead_letters == len(BAD)
    assert stats.predictions == len(rows)
    dead = await consume_all(kafka_bootstrap, topics[2], expected=len(BAD))
    assert len(dead) == len(BAD)
    by_reason = {dict(d.headers)["statecast.reason"].decode(): d for d in dead}
    assert set(by_reason) == {reason for reason, _ in BAD}
    for reason, value in BAD:
        d = by_reason[reason]
        assert d.value == value
        assert d.key == b"s"
        src = dict(d.headers)["statecast.source"].decode()
        assert src.startswith(f"{topics[0]}/")
        assert registry.get_sample_value("statecast_dead_letters_total", {"reason": reason}) == 1

    preds = by_stream(await consume_all(kafka_bootstrap, topics[1], expected=len(rows)))
    want, want_state = offline_predictions(lstm.onnx_path, lstm.spec, rows)
    np.testing.assert_allclose(
        [p["prediction"]["demand_next"] for p in preds["s"]], want, atol=1e-4
    )
    stored = await stored_state(redis_url, lstm, settings.state_prefix, "s")
    assert stored is not None
    assert stored[1] == len(records) - 1  # the last good record is the last record
    for name, arr in want_state.items():
        np.testing.assert_allclose(stored[0][name], arr, atol=1e-4)


async def test_redis_restart_mid_stream_loses_nothing_and_logs_once_per_change(
    lstm: TinyModel,
    kafka_bootstrap: str,
    private_redis: Service,
    unique: Callable[[str], str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    redis_url = f"redis://{private_redis.host}:{private_redis.port}/0"
    series = make_series(n_streams=12, n_events=20, seed=3)
    first = {s: rows[:10] for s, rows in series.items()}
    second = {s: rows[10:] for s, rows in series.items()}
    total = sum(len(v) for v in series.values())
    topics = await setup_topics(kafka_bootstrap, unique)
    settings = settings_for(
        lstm, kafka_bootstrap, redis_url, unique, topics, dependency_timeout_s=60.0
    )
    registry = CollectorRegistry()
    worker = Worker(settings, registry)
    caplog.set_level(logging.WARNING, logger="statecast.worker.backoff")
    run = asyncio.create_task(worker.run(max_records=total, idle_timeout_s=60))
    await produce(kafka_bootstrap, topics[0], interleave(first, seed=4))
    for _ in range(1200):
        if worker.stats.predictions >= total // 2:
            break
        await asyncio.sleep(0.05)
    assert worker.stats.predictions == total // 2

    private_redis.kill()  # Redis loses everything: it runs without persistence
    later = interleave(second, seed=5)
    await produce(kafka_bootstrap, topics[0], later)
    for _ in range(600):
        if registry.get_sample_value("statecast_dependency_up", {"dependency": "redis"}) == 0:
            break
        await asyncio.sleep(0.05)
    assert registry.get_sample_value("statecast_dependency_up", {"dependency": "redis"}) == 0
    await asyncio.sleep(1.0)  # several retries while down
    private_redis.start(timeout=30, detach=False)
    stats = await asyncio.wait_for(run, timeout=120)

    assert stats.predictions == total
    got = await consume_all(kafka_bootstrap, topics[1], expected=total)
    ids = [orjson.loads(r.value)["id"] for r in got]
    assert len(set(ids)) == total
    preds = by_stream(got)
    for stream, rows in series.items():
        want, want_state = offline_predictions(lstm.onnx_path, lstm.spec, rows)
        # Duplicates (same id) are allowed by the contract; compare first occurrences.
        seen: dict[str, float] = {}
        for p in preds[stream]:
            seen.setdefault(p["id"], p["prediction"]["demand_next"])
        np.testing.assert_allclose(list(seen.values()), want, atol=1e-4)
        stored = await stored_state(redis_url, lstm, settings.state_prefix, stream)
        assert stored is not None  # rewritten from the worker's cache after the restart
        for name, arr in want_state.items():
            np.testing.assert_allclose(stored[0][name], arr, atol=1e-4)
    down = [r for r in caplog.records if "unavailable at" in r.getMessage()]
    back = [r for r in caplog.records if "available again" in r.getMessage()]
    assert len(down) == 1
    assert len(back) == 1
    assert registry.get_sample_value("statecast_dependency_up", {"dependency": "redis"}) == 1


async def test_worker_gives_up_when_redis_stays_down(
    lstm: TinyModel, kafka_bootstrap: str, unique: Callable[[str], str]
) -> None:
    topics = await setup_topics(kafka_bootstrap, unique, partitions=1)
    settings = settings_for(lstm, kafka_bootstrap, "redis://127.0.0.1:1/0", unique, topics)
    settings = replace(
        settings,
        redis=RedisSettings(url=f"redis://127.0.0.1:{free_port()}/0"),
        dependency_timeout_s=1.0,
    )
    with pytest.raises(DependencyTimeout, match="redis"):
        await asyncio.wait_for(Worker(settings, CollectorRegistry()).run(), timeout=60)
