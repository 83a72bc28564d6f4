"""The broker goes away under a running worker: it must give up within its dependency
deadline (so an orchestrator restarts the pod) and keep what it had applied."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from statecast.worker.backoff import DependencyTimeout
from statecast.worker.devstack import Service, free_port
from statecast.worker.loop import Worker
from tests.fixtures.e2e import settings_for, setup_topics, stored_state
from tests.fixtures.kafka import produce
from tests.fixtures.streams import interleave, make_series
from tests.fixtures.tiny_models import TinyModel

pytestmark = pytest.mark.integration


@pytest.fixture
def private_kafka(tmp_path: Path) -> Iterator[Service]:
    svc = Service("kafka", free_port(), tmp_path)
    svc.start(timeout=30, detach=False)
    yield svc
    svc.stop()


async def test_worker_gives_up_when_the_broker_goes_away(
    lstm: TinyModel,
    private_kafka: Service,
    redis_url: str,
    unique: Callable[[str], str],
) -> None:
    bootstrap = f"{private_kafka.host}:{private_kafka.port}"
    topics = await setup_topics(bootstrap, unique, partitions=2)
    series = make_series(n_streams=6, n_events=20, seed=5)
    records = interleave(series, seed=6)
    await produce(bootstrap, topics[0], records)
    settings = replace(
        settings_for(lstm, bootstrap, redis_url, unique, topics), dependency_timeout_s=4.0
    )
    registry = CollectorRegistry()
    worker = Worker(settings, registry)
    task = asyncio.create_task(worker.run())
    try:
        async with asyncio.timeout(60):
            while worker.stats.predictions < len(records):
                assert not task.done(), task
                await asyncio.sleep(0.1)
        private_kafka.kill()
        killed_at = time.monotonic()
        with pytest.raises(DependencyTimeout, match="kafka"):
            await asyncio.wait_for(task, timeout=90)
        gave_up_after = time.monotonic() - killed_at
    finally:
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    # It gave up (rather than idling on an empty poll forever), and not before its deadline.
    assert gave_up_after >= settings.dependency_timeout_s
    assert registry.get_sample_value("statecast_dependency_up", {"dependency": "kafka"}) == 0
    # Everything applied before the outage is in Redis, at each stream's last offset.
    prefix = settings.state_prefix
    for stream in series:
        stored = await stored_state(redis_url, lstm, prefix, stream)
        assert stored is not None, stream
        tensors, _offset = stored
        assert all(np.isfinite(t).all() for t in tensors.values())
