"""The worker's Prometheus metrics, held on an injected registry (never the global one).

Names are fixed: dashboards and alert rules in ``deploy/`` are built on them.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Step and Redis latencies live well below the default buckets' 5 ms floor.
FAST_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
)
# Per-batch stage times: from tens of microseconds (a cache-hit state read) to seconds.
STAGE_BUCKETS = (
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)
# The stages of one poll (DESIGN.md, "Data flow for one poll"), as timed by StageTimer.
STAGES = (
    "poll",  # getmany
    "decode",  # decode and validate, route, group by stream
    "state_read",  # cache lookups, one MGET for the misses, state decode, offset fence
    "waves",  # stacking inputs and states around session.run
    "inference",  # session.run only
    "encode",  # prediction JSON
    "publish",  # send and await every ack
    "metrics",  # per-prediction metric updates
    "state_write",  # one fenced Lua call per model
    "commit",
)
LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 8, 32, 128, 512, 1024, 2048, 4096, 8192, 16384)
WAVE_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 32, 64, 128)
RESET_REASONS = ("missing", "mismatch", "corrupt", "expired", "wrong_type", "unwritable")


class WorkerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        r = registry
        self.records_consumed = Counter(
            "statecast_records_consumed", "Records read from input topics", ["topic"], registry=r
        )
        self.predictions_published = Counter(
            "statecast_predictions_published",
            "Predictions acknowledged by the broker",
            ["model"],
            registry=r,
        )
        self.dead_letters = Counter(
            "statecast_dead_letters",
            "Records sent to the dead-letter topic",
            ["reason"],
            registry=r,
        )
        self.batch_records = Histogram(
            "statecast_batch_records", "Records per polled batch", buckets=BATCH_BUCKETS, registry=r
        )
        self.waves_per_batch = Histogram(
            "statecast_waves_per_batch",
            "Step-model runs per model per batch",
            buckets=WAVE_BUCKETS,
            registry=r,
        )
        self.step_seconds = Histogram(
            "statecast_step_seconds",
            "Time of one batched session.run (one wave)",
            ["model"],
            buckets=FAST_BUCKETS,
            registry=r,
        )
        self.redis_seconds = Histogram(
            "statecast_redis_seconds",
            "Redis round trip per batch",
            ["op"],
            buckets=FAST_BUCKETS,
            registry=r,
        )
        self.event_latency = Histogram(
            "statecast_event_latency_seconds",
            "Record timestamp to prediction acknowledged",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.consumer_lag = Gauge(
            "statecast_consumer_lag",
            "High watermark minus next offset to process",
            ["topic", "partition"],
            registry=r,
        )
        self.streams_cached = Gauge(
            "statecast_streams_cached", "Stream states held in process", ["model"], registry=r
        )
        self.state_resets = Counter(
            "statecast_state_resets",
            "Streams started from a zero state",
            ["model", "reason"],
            registry=r,
        )
        self.state_version_mismatches = Counter(
            "statecast_state_version_mismatches",
            "Stored states of another state version",
            ["model"],
            registry=r,
        )
        self.replays_skipped = Counter(
            "statecast_replays_skipped",
            "Records at or below their stream's applied offset (not applied again)",
            ["model"],
            registry=r,
        )
        self.state_cache_bytes = Gauge(
            "statecast_state_cache_bytes",
            "Estimated bytes of the stream states held in process (bounded)",
            ["model"],
            registry=r,
        )
        self.state_cache_evictions = Counter(
            "statecast_state_cache_evictions",
            "Cached stream states dropped: size (the byte bound, LRU) or expired (TTL)",
            ["model", "reason"],
            registry=r,
        )
        self.latency_unmeasured = Counter(
            "statecast_event_latency_unmeasured",
            "Predictions whose record timestamp is not a plausible send time (<= 0, over a "
            "day old or in the future): left out of the latency histogram",
            ["model"],
            registry=r,
        )
        self.dependency_up = Gauge(
            "statecast_dependency_up", "1 when the dependency answers", ["dependency"], registry=r
        )
        self.stage_seconds = Histogram(
            "statecast_stage_seconds",
            "Time of one stage of one batch (wall clock)",
            ["stage"],
            buckets=STAGE_BUCKETS,
            registry=r,
        )
        self.errors = Counter("statecast_errors", "Errors by stage", ["stage"], registry=r)
        self.ready = Gauge("statecast_ready", "1 when /readyz answers 200", registry=r)

    def preinitialise(self, topics: Iterable[str], models: Iterable[str]) -> None:
        """Create every known label set so dashboards see zeros rather than gaps."""
        for topic in topics:
            self.records_consumed.labels(topic)
        for model in models:
            self.predictions_published.labels(model)
            self.streams_cached.labels(model)
            self.state_version_mismatches.labels(model)
            self.replays_skipped.labels(model)
            self.state_cache_bytes.labels(model)
            self.latency_unmeasured.labels(model)
            for reason in ("size", "expired"):
                self.state_cache_evictions.labels(model, reason)
            for reason in RESET_REASONS:
                self.state_resets.labels(model, reason)
        for dep in ("kafka", "redis"):
            self.dependency_up.labels(dep)
        for stage in ("fetch", "redis_read", "publish", "redis_write", "commit"):
            self.errors.labels(stage)
        for stage in STAGES:
            self.stage_seconds.labels(stage)


class StageTimer:
    """Where each batch's time goes: ``statecast_stage_seconds{stage}`` per batch, plus
    running wall and thread-CPU totals per stage (read by the benchmark).

    Thread CPU is robust to other processes sharing the core (wall time is not); for a
    stage awaited on the event loop it also counts what other tasks ran meanwhile (aiokafka's
    fetcher, the health server). Safe to call from the inference thread.
    """

    def __init__(self, metrics: WorkerMetrics) -> None:
        self._hist = {stage: metrics.stage_seconds.labels(stage) for stage in STAGES}
        self.wall_s = dict.fromkeys(STAGES, 0.0)
        self.cpu_s = dict.fromkeys(STAGES, 0.0)

    def add(self, stage: str, wall_s: float, cpu_s: float) -> None:
        self._hist[stage].observe(wall_s)
        self.wall_s[stage] += wall_s
        self.cpu_s[stage] += cpu_s

    @contextmanager
    def stage(self, stage: str) -> Iterator[None]:
        t0, c0 = time.perf_counter(), time.thread_time()
        try:
            yield
        finally:
            self.add(stage, time.perf_counter() - t0, time.thread_time() - c0)


def observe_many(hist: Any, values: Sequence[float] | np.ndarray[Any, Any]) -> None:
    """``hist.observe(v)`` for every value, in one numpy pass instead of one call each.

    Uses the buckets of a prometheus-client Histogram child (``_upper_bounds``,
    ``_buckets``, ``_sum``); falls back to per-value calls if that layout ever changes.
    """
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0:
        return
    bounds = getattr(hist, "_upper_bounds", None)
    buckets = getattr(hist, "_buckets", None)
    total = getattr(hist, "_sum", None)
    if bounds is None or buckets is None or total is None or len(bounds) != len(buckets):
        for v in arr.tolist():
            hist.observe(v)
        return
    # Prometheus buckets are "le": a value equal to a bound belongs to that bucket.
    counts = np.bincount(
        np.searchsorted(np.asarray(bounds), arr, side="left"), minlength=len(bounds)
    )
    for bucket, n in zip(buckets, counts.tolist(), strict=False):
        if n:
            bucket.inc(n)
    total.inc(float(arr.sum()))
