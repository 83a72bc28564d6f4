"""statecast's own worker loop, run by the benchmark, reporting its stage timer.

``python -m statecast.loadtest.bench_worker`` builds the worker exactly as ``statecast worker``
does (``Settings.from_env``, ``statecast.worker.loop.Worker``) and reports what the worker's
own stage timer (:class:`statecast.worker.metrics.StageTimer`, also exported as
``statecast_stage_seconds``) measured: nothing is patched, so a renamed stage fails
loudly instead of vanishing from the report. It talks on stdout, one JSON line each:

- ``{"event": "assigned", "wall": ...}`` when partitions are first assigned;
- ``{"event": "snapshot", ...}`` on SIGUSR1, and ``{"event": "final", ...}`` after a
  SIGTERM-initiated stop: records, predictions, CPU seconds since assignment and the
  seconds spent in each stage.

Stages: :data:`statecast.worker.metrics.STAGES`; ``latency_buckets`` are the cumulative
buckets of ``statecast_event_latency_seconds`` (record timestamp to acked prediction), from
which the bench takes the worker's own p99 over one phase.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import signal
import sys
import time
from typing import Any

import orjson

log = logging.getLogger(__name__)


def _sum_samples(registry: Any, name: str) -> float:
    total = 0.0
    for metric in registry.collect():
        for sample in metric.samples:
            if sample.name == name:
                total += float(sample.value)
    return total


def histogram_buckets(
    registry: Any, name: str, labels: dict[str, str] | None = None
) -> dict[float, float]:
    """Cumulative bucket counts of a histogram: ``{le: count}``, over the label sets that
    match ``labels`` (all of them when None)."""
    want = labels or {}
    buckets: dict[float, float] = {}
    for metric in registry.collect():
        for sample in metric.samples:
            if sample.name == name + "_bucket" and all(
                sample.labels.get(k) == v for k, v in want.items()
            ):
                le = float(sample.labels["le"])
                buckets[le] = buckets.get(le, 0.0) + float(sample.value)
    return buckets


def histogram_quantile(buckets: dict[float, float], q: float) -> float | None:
    """The ``q`` quantile of cumulative ``{le: count}`` buckets, interpolated inside its
    bucket as Prometheus' ``histogram_quantile`` does; None when empty."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None
    total = buckets[bounds[-1]]
    rank = q * total
    lower, below = 0.0, 0.0
    for le in bounds:
        count = buckets[le]
        if count >= rank:
            if le == float("inf"):
                return lower
            inside = count - below
            return lower + (le - lower) * ((rank - below) / inside if inside > 0 else 1.0)
        lower, below = le, count
    return lower


def _emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(orjson.dumps(obj).decode() + "\n")
    sys.stdout.flush()


async def serve() -> int:
    from statecast.worker.loop import Worker
    from statecast.worker.settings import Settings

    worker = Worker(Settings.from_env())
    cpu_at_assign: list[float] = []
    on_assigned = worker.on_assigned

    def assigned(tps: Any) -> None:
        on_assigned(tps)
        if tps and not cpu_at_assign:
            cpu_at_assign.append(time.process_time())
            _emit({"event": "assigned", "wall": time.time()})

    worker.on_assigned = assigned  # type: ignore[method-assign,assignment]

    def report(event: str) -> None:
        registry = worker.metrics.registry
        timer = worker.stages
        cpu0 = cpu_at_assign[0] if cpu_at_assign else 0.0
        latency = histogram_buckets(registry, "statecast_event_latency_seconds")
        p99 = histogram_quantile(latency, 0.99)
        _emit(
            {
                "event": event,
                "wall": time.time(),
                "records": worker.stats.records,
                "predictions": worker.stats.predictions,
                "batches": worker.stats.batches,
                "waves": _sum_samples(registry, "statecast_waves_per_batch_sum"),
                "busy_s": worker.stats.busy_s,
                "cpu_s": time.process_time() - cpu0,
                # Peak resident memory (the state cache is bounded in bytes; this is all).
                "max_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                "last_batch_wall": worker.stats.last_batch_wall,
                "stages_s": dict(timer.wall_s),
                "stages_cpu_s": dict(timer.cpu_s),
                "record_to_ack_p99_ms": round(p99 * 1000, 2) if p99 is not None else None,
                # Cumulative (the bench takes the difference over one phase); bounds as text
                # because JSON has no infinity.
                "latency_buckets": [[str(le), n] for le, n in sorted(latency.items())],
                "latency_buckets_by_model": {
                    model: [
                        [str(le), n]
                        for le, n in sorted(
                            histogram_buckets(
                                registry, "statecast_event_latency_seconds", {"model": model}
                            ).items()
                        )
                    ]
                    for model in {r.model for r in worker.settings.routes}
                },
            }
        )

    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGUSR1, report, "snapshot")
    loop.add_signal_handler(signal.SIGTERM, worker.request_stop)
    loop.add_signal_handler(signal.SIGINT, worker.request_stop)
    await worker.run()
    report("final")
    return 0


def main() -> None:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    raise SystemExit(asyncio.run(serve()))


if __name__ == "__main__":
    main()
