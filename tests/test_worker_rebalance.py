"""Two workers rebalancing mid-stream: the second joins while records keep arriving.

The states live in a three-node Redis Cluster, so every batch's state keys span slots
and nodes (one MGET and one fenced EVALSHA per slot, pipelined per node).

Worker A starts alone and owns every partition; once it has applied part of every stream,
worker B joins the same group and takes some partitions over. B starts those streams from
the states A left in Redis (no cache of its own), A drops them from its cache on revoke.
If B started from zero, skipped a record or applied one twice, its predictions and the
final states would differ from the same step run offline over each whole stream.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from prometheus_client import CollectorRegistry

from statecast.worker.loop import Worker
from statecast.worker.routing import Route
from tests.fixtures.delivery import check_outcome
from tests.fixtures.kafka import create_topic
from tests.fixtures.redis_cluster import RedisClusterHandle, redis_cluster
from tests.fixtures.streams import interleave, make_series
from tests.fixtures.tiny_models import TinyModel, tiny_forecast_model, worker_settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SESSION_TIMEOUT_MS = 3000  # Tansu answers JoinGroup after half of it: keeps the test short


async def produce_live(
    bootstrap: str,
    topic: str,
    records: list[tuple[bytes, bytes]],
    chunk: int,
    pause_s: float,
    hold_back: int = 0,
    release: asyncio.Event | None = None,
) -> None:
    """Send ``records`` in order, ``chunk`` at a time with a pause between chunks; the
    last ``hold_back`` records only once ``release`` is set."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    paced = len(records) - hold_back
    try:
        for start in range(0, paced, chunk):
            futures = [
                await producer.send(topic, value, key=key)
                for key, value in records[start : min(start + chunk, paced)]
            ]
            await asyncio.gather(*futures)
            await asyncio.sleep(pause_s)
        if hold_back:
            assert release is not None
            await release.wait()
            futures = [await producer.send(topic, v, key=k) for k, v in records[paced:]]
            await asyncio.gather(*futures)
    finally:
        await producer.stop()


@pytest.fixture(scope="module")
def lstm(tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    return tiny_forecast_model(tmp_path_factory.mktemp("rebalance-model"), seed=11)


async def _wait_until(cond: Callable[[], bool], within_s: float, what: str) -> None:
    deadline = time.monotonic() + within_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterHandle]:
    with redis_cluster(tmp_path_factory.mktemp("rebalance-cluster")) as handle:
        yield handle


async def test_second_worker_joins_mid_stream_and_continues_from_redis(
    lstm: TinyModel,
    kafka_bootstrap: str,
    cluster: RedisClusterHandle,
    unique: Callable[[str], str],
) -> None:
    series = make_series(n_streams=24, n_events=100, seed=5)
    total = sum(len(v) for v in series.values())
    topic, preds, dlq = unique("sensor"), unique("predictions"), unique("dlq")
    for t in (topic, preds, dlq):
        await create_topic(kafka_bootstrap, t, partitions=4)
    settings = worker_settings(
        bootstrap=kafka_bootstrap,
        redis_url=cluster.url,
        model=lstm,
        routes=[Route(topic, lstm.spec.name)],
        predictions=preds,
        dlq=dlq,
        group=unique("group"),
        prefix=unique("rebalance"),
        max_batch_records=32,
    )
    settings = replace(
        settings,
        kafka=replace(settings.kafka, session_timeout_ms=SESSION_TIMEOUT_MS),
        redis=replace(settings.redis, cluster=True),
    )
    a = Worker(settings, CollectorRegistry())
    b = Worker(
        replace(settings, kafka=replace(settings.kafka, client_id="statecast-b")),
        CollectorRegistry(),
    )
    feeder = asyncio.create_task(
        produce_live(kafka_bootstrap, topic, interleave(series, seed=6), chunk=48, pause_s=0.25)
    )
    task_a = asyncio.create_task(a.run(idle_timeout_s=3))
    task_b: asyncio.Task[Any] | None = None
    try:
        # A alone until it has applied an eighth of the records (part of every stream).
        await _wait_until(lambda: a.stats.records >= total // 8, 30, "worker A to start")
        a_before_join = a.stats.records
        task_b = asyncio.create_task(b.run(idle_timeout_s=3))
        t_join = time.monotonic()
        await _wait_until(lambda: b.stats.records > 0, 30, "worker B to get partitions and records")
        b_first_records_s = time.monotonic() - t_join
        assert not feeder.done(), "B joined after the stream ended: not a mid-stream rebalance"
        await asyncio.wait_for(feeder, 30)
        await asyncio.wait_for(asyncio.gather(task_a, task_b), 40)
    finally:
        for task in (feeder, task_a, task_b):
            if task is not None and not task.done():
                task.cancel()
        await asyncio.gather(
            *(task for task in (feeder, task_a, task_b) if task is not None), return_exceptions=True
        )

    # Both kept working after the rebalance, and between them handled every record (more
    # when a batch in flight at the revoke was redelivered; the fence skips those).
    assert a.stats.records > a_before_join
    assert b.stats.records > 0
    assert a.stats.records + b.stats.records >= total
    await check_outcome(
        bootstrap=kafka_bootstrap,
        redis_url=cluster.url,
        redis_cluster=True,
        model=lstm,
        series=series,
        topic=topic,
        predictions_topic=preds,
        prefix=settings.state_prefix,
    )
    print(
        f"\n[rebalance test] A {a.stats.records} records ({a_before_join} before B joined), "
        f"B {b.stats.records} (first records {b_first_records_s:.1f}s after it started); "
        f"replays skipped A {a.stats.replays} B {b.stats.replays}"
    )
