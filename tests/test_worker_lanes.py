"""Routes do not block each other: a route whose decoding is stuck holds neither another
route's inference nor its delivery (each route has its own lane, worker/lanes.py).

The stuck route's codec waits on an event that the test sets only after the other route's
predictions were all read back, so the test fails (by a bounded wait) if the free route's
predictions depend on the stuck route in any way. No timing is asserted.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry

from statecast.worker.codecs.base import Codec, Decoded, RawRecord, Rejected
from statecast.worker.loop import Worker
from statecast.worker.routing import Route
from statecast.worker.served import load_models
from tests.fixtures.kafka import consume_all, create_topic, produce
from tests.fixtures.streams import interleave, make_series
from tests.fixtures.tiny_models import TinyModel, worker_settings

pytestmark = pytest.mark.integration


class StuckCodec:
    """Delegates to a real codec once ``release`` is set; until then decode blocks."""

    def __init__(self, inner: Codec, release: threading.Event) -> None:
        self._inner = inner
        self._release = release
        self.entered = threading.Event()

    def decode(self, records: Sequence[RawRecord]) -> list[Decoded | Rejected]:
        self.entered.set()
        if not self._release.wait(timeout=120):
            raise RuntimeError("the test never released the stuck route")
        return self._inner.decode(records)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


async def test_a_stuck_route_does_not_hold_another_routes_predictions(
    lstm: TinyModel, kafka_bootstrap: str, redis_url: str, unique: Callable[[str], str]
) -> None:
    slow_topic, free_topic = unique("slow"), unique("free")
    preds, dlq = unique("predictions"), unique("dlq")
    for t in (slow_topic, free_topic, preds, dlq):
        await create_topic(kafka_bootstrap, t, partitions=2)
    settings = worker_settings(
        bootstrap=kafka_bootstrap,
        redis_url=redis_url,
        model=lstm,
        routes=[Route(slow_topic, lstm.spec.name), Route(free_topic, lstm.spec.name)],
        predictions=preds,
        dlq=dlq,
        group=unique("group"),
        prefix=unique("state"),
    )
    release = threading.Event()
    served = load_models(settings)
    stuck = StuckCodec(served[0].codec, release)
    served[0] = replace(served[0], codec=stuck)

    # Streams of their own (both routes serve the same model, hence the same state keys).
    slow_series = {f"slow-{k}": v for k, v in make_series(3, 5, seed=11).items()}
    free_series = make_series(n_streams=4, n_events=6, seed=12)
    await produce(kafka_bootstrap, slow_topic, interleave(slow_series, seed=1))
    free_records = interleave(free_series, seed=2)
    await produce(kafka_bootstrap, free_topic, free_records)
    total = sum(len(v) for v in slow_series.values()) + len(free_records)

    worker = Worker(settings, CollectorRegistry(), models=served)
    task = asyncio.create_task(worker.run(max_records=total, idle_timeout_s=30))
    try:
        got = await consume_all(kafka_bootstrap, preds, expected=len(free_records), within_s=60)
        assert stuck.entered.is_set(), "the slow route never started decoding"
        assert not release.is_set()
        ids = [orjson.loads(r.value)["id"] for r in got]
        # Every free-route prediction arrived while the slow route was still stuck.
        assert len(ids) == len(free_records)
        assert all(i.startswith(free_topic + "/") for i in ids), ids
    finally:
        release.set()
    stats = await asyncio.wait_for(task, 120)
    assert stats.predictions == total
    everything = await consume_all(kafka_bootstrap, preds, expected=total, within_s=60)
    assert len({orjson.loads(r.value)["id"] for r in everything}) == total
