"""statecast's own worker loop, run by the benchmark with a stopwatch on every stage.

``python -m statecast.loadtest.bench_worker`` builds the worker exactly as ``statecast worker`` does
(``Settings.from_env``, ``statecast.worker.loop.Worker``) and wraps the loop's stage methods with
timers before it starts, so the benchmark sees where the time of each batch goes without
the worker carrying benchmark code. A stage the installed worker does not have is left
out of the report (the timers attach by name). It talks on stdout, one JSON line each:

- ``{"event": "assigned", "wall": ...}`` when partitions are first assigned;
- ``{"event": "snapshot", ...}`` on SIGUSR1, and ``{"event": "final", ...}`` after a
  SIGTERM-initiated stop: records, predictions, CPU seconds since assignment and the
  seconds spent in each stage.

Stages: poll (``getmany``), decode, state_read (cache + one MGET + state decode),
waves (stacking inputs, gathering and scattering states), inference (``session.run``
only, from ``statecast_step_seconds``), encode (prediction JSON), produce (publish and
await acks), metrics (per-prediction metric updates), state_write (one Lua call per
batch), commit, and other (the rest of the batch handling).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import signal
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import orjson

log = logging.getLogger(__name__)


class StageClock:
    """Wall and thread-CPU seconds per stage, summed over the run.

    Thread CPU is robust to other processes sharing the core (wall time is not); for an
    awaited stage it also counts what other tasks of the loop ran meanwhile.
    """

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.cpu: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.last_end: dict[str, float] = {}

    def _add(self, stage: str, t0: float, c0: float) -> None:
        self.seconds[stage] += time.perf_counter() - t0
        self.cpu[stage] += time.thread_time() - c0
        self.calls[stage] += 1
        self.last_end[stage] = time.time()

    def wrap(self, stage: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def timed_async(*args: Any, **kwargs: Any) -> Any:
                t0, c0 = time.perf_counter(), time.thread_time()
                try:
                    return await fn(*args, **kwargs)
                finally:
                    self._add(stage, t0, c0)

            return timed_async

        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            t0, c0 = time.perf_counter(), time.thread_time()
            try:
                return fn(*args, **kwargs)
            finally:
                self._add(stage, t0, c0)

        return timed


def instrument(worker: Any, clock: StageClock) -> None:
    """Attach the stage timers to a ``statecast.worker.loop.Worker`` before it runs."""
    import worker.loop as loop_mod
    import worker.publisher as pub_mod

    for attr, stage in (
        ("_decode", "decode"),
        ("_resolve_states", "state_read"),
        ("_compute", "compute"),
        ("_count_published", "metrics"),
        ("_write_states", "state_write"),
        ("_commit", "commit"),
        ("_process", "process"),
    ):
        if hasattr(worker, attr):
            setattr(worker, attr, clock.wrap(stage, getattr(worker, attr)))
    if hasattr(loop_mod, "run_waves"):
        loop_mod.run_waves = clock.wrap("run_waves", loop_mod.run_waves)
    if hasattr(pub_mod, "Publisher"):
        pub_mod.Publisher.publish = clock.wrap("produce", pub_mod.Publisher.publish)  # type: ignore[method-assign]
    if hasattr(worker, "_build_consumer"):
        build = worker._build_consumer

        def build_timed() -> Any:
            consumer = build()
            consumer.getmany = clock.wrap("poll", consumer.getmany)
            return consumer

        worker._build_consumer = build_timed


def stage_breakdown(seconds: dict[str, float], inference_s: float) -> dict[str, float]:
    """Per-stage seconds with the composite timers split into their parts."""
    s = seconds
    out: dict[str, float] = {}
    out["poll"] = s.get("poll", 0.0)
    out["decode"] = s.get("decode", 0.0)
    out["state_read"] = s.get("state_read", 0.0)
    waves = s.get("run_waves", 0.0)
    out["inference"] = min(inference_s, waves) if waves else inference_s
    out["waves"] = max(waves - inference_s, 0.0)
    out["encode"] = max(s.get("compute", 0.0) - waves, 0.0)
    out["produce"] = s.get("produce", 0.0)
    out["metrics"] = s.get("metrics", 0.0)
    out["state_write"] = s.get("state_write", 0.0)
    out["commit"] = s.get("commit", 0.0)
    inside = sum(
        s.get(k, 0.0)
        for k in ("decode", "state_read", "compute", "produce", "metrics", "state_write", "commit")
    )
    out["other"] = max(s.get("process", 0.0) - inside, 0.0)
    return out


def _sum_samples(registry: Any, name: str) -> float:
    total = 0.0
    for metric in registry.collect():
        for sample in metric.samples:
            if sample.name == name:
                total += float(sample.value)
    return total


def _emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(orjson.dumps(obj).decode() + "\n")
    sys.stdout.flush()


async def serve() -> int:
    from statecast.worker.loop import Worker
    from statecast.worker.settings import Settings

    settings = Settings.from_env()
    worker = Worker(settings)
    clock = StageClock()
    instrument(worker, clock)
    cpu_at_assign: list[float] = []
    wall_at_assign: list[float] = []
    on_assigned = worker.on_assigned

    def assigned(tps: Any) -> None:
        on_assigned(tps)
        if tps and not cpu_at_assign:
            cpu_at_assign.append(time.process_time())
            wall_at_assign.append(time.time())
            _emit({"event": "assigned", "wall": wall_at_assign[0]})

    worker.on_assigned = assigned  # type: ignore[method-assign,assignment]

    def report(event: str) -> None:
        registry = worker.metrics.registry
        step_s = _sum_samples(registry, "statecast_step_seconds_sum")
        cpu0 = cpu_at_assign[0] if cpu_at_assign else 0.0
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
                "last_batch_wall": clock.last_end.get("process"),
                "stages_s": stage_breakdown(clock.seconds, step_s),
                # session.run is CPU-bound in the inference thread: its wall time is its CPU.
                "stages_cpu_s": stage_breakdown(clock.cpu, step_s),
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
