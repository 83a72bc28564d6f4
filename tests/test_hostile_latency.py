"""A producer timestamp that cannot be a send time (0, negative, days old, in the future)
stays out of the latency histogram the SLO alert reads, and is counted apart."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from statecast.worker.codecs.base import Decoded, RawRecord
from statecast.worker.lanes import Lane, Polled, _Computed
from statecast.worker.metrics import StageTimer, WorkerMetrics
from statecast.worker.settings import Settings

pytestmark = pytest.mark.unit


def test_implausible_record_timestamps_are_not_latency() -> None:
    metrics = WorkerMetrics(CollectorRegistry())
    published: list[tuple[int, int]] = []
    ctx: Any = SimpleNamespace(
        settings=Settings(),
        metrics=metrics,
        stages=StageTimer(metrics),
        on_published=lambda p, d: published.append((p, d)),
    )
    route: Any = SimpleNamespace(served=SimpleNamespace(name="m"))
    lane = Lane("t", route, ctx)
    now = int(time.time() * 1000)
    stamps = [now - 20, 0, -1, now - 3 * 24 * 3600 * 1000, now + 3600 * 1000]
    preds = [
        (RawRecord("t", 0, i, ts, b"s", b""), Decoded("s", ts, ()), {"p": 1.0})
        for i, ts in enumerate(stamps)
    ]
    computed = _Computed(Polled(), [], [], preds, [], {})
    lane._count_published(computed)
    registry = metrics.registry
    count = registry.get_sample_value("statecast_event_latency_seconds_count", {"model": "m"})
    total = registry.get_sample_value("statecast_event_latency_seconds_sum", {"model": "m"})
    unmeasured = registry.get_sample_value(
        "statecast_event_latency_unmeasured_total", {"model": "m"}
    )
    assert count == 1  # only the plausible one
    assert total is not None
    assert total < 60  # seconds: not the 56 years since timestamp 0
    assert unmeasured == 4
