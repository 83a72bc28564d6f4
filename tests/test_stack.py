"""The embedded stack: real Tansu and real redis-server processes."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer

from statecast.worker.devstack import (
    StackConfig,
    StackError,
    find_redis_server,
    free_port,
    stack_down,
    stack_status,
    stack_up,
)
from tests.conftest import CONSUMER_SESSION_TIMEOUT_MS
from tests.fixtures.kafka import create_topic, produce


@pytest.mark.integration
def test_stack_up_is_idempotent_and_down_stops_only_ours(tmp_path: Path) -> None:
    config = StackConfig(workdir=tmp_path, kafka_port=free_port(), redis_port=free_port())
    try:
        first = stack_up(config)
        assert all("started" in line for line in first)
        second = stack_up(config)
        assert all("already running" in line for line in second)
        ok, lines = stack_status(config)
        assert ok, lines
    finally:
        down = stack_down(config)
    assert [line.split(":")[0] for line in down] == ["redis", "kafka"]
    assert all(line.endswith("stopped") for line in down)
    ok, _ = stack_status(config)
    assert not ok


@pytest.mark.integration
def test_stack_cleans_up_after_a_crash(tmp_path: Path) -> None:
    config = StackConfig(workdir=tmp_path, kafka_port=free_port(), redis_port=free_port())
    try:
        stack_up(config)
        redis_svc = config.services()[1]
        pid = redis_svc.recorded_pid()
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        # The PID file now names a dead process: up restarts it, status sees it up again.
        lines = stack_up(config)
        assert any(line.startswith("redis: started") for line in lines), lines
        assert stack_status(config)[0]
    finally:
        stack_down(config)


@pytest.mark.integration
def test_down_with_stale_pid_file_reports_and_removes_it(tmp_path: Path) -> None:
    config = StackConfig(workdir=tmp_path, kafka_port=free_port(), redis_port=free_port())
    tmp_path.mkdir(exist_ok=True)
    # A PID that cannot be ours: far above pid_max on Linux defaults.
    (tmp_path / "redis.pid").write_text("4194304\n")
    lines = stack_down(config)
    assert "redis: was not running (stale PID file removed)" in lines
    assert not (tmp_path / "redis.pid").exists()


@pytest.mark.unit
def test_missing_redis_server_names_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(StackError, match="apt-get install redis-server"):
        find_redis_server()


@pytest.mark.integration
async def test_broker_and_redis_work_end_to_end(
    kafka_bootstrap: str, redis_url: str, unique: object
) -> None:
    """Topic create, produce, consume through a consumer group with commits, Redis I/O."""
    assert callable(unique)
    topic, group = unique("smoke"), unique("group")
    await create_topic(kafka_bootstrap, topic, partitions=3)
    sent = [(f"s{i % 5}".encode(), f"v{i}".encode()) for i in range(30)]
    await produce(kafka_bootstrap, topic, sent)

    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=kafka_bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=CONSUMER_SESSION_TIMEOUT_MS,
        heartbeat_interval_ms=1000,
    )
    await consumer.start()
    got: list[tuple[bytes | None, bytes | None]] = []
    try:
        async with asyncio.timeout(30):
            while len(got) < len(sent):
                batch = await consumer.getmany(timeout_ms=500)
                for records in batch.values():
                    got.extend((r.key, r.value) for r in records)
        await consumer.commit()
        committed = {tp: await consumer.committed(tp) for tp in consumer.assignment()}
    finally:
        await consumer.stop()
    assert sorted(got) == sorted(sent)
    assert sum(v or 0 for v in committed.values()) == len(sent)

    client = aioredis.from_url(redis_url)
    try:
        await client.set(f"{topic}:k", b"\x00\x01", ex=60)
        assert await client.get(f"{topic}:k") == b"\x00\x01"
        assert 0 < await client.ttl(f"{topic}:k") <= 60
    finally:
        await client.aclose()
