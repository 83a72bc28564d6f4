"""The machine a benchmark ran on, and pinning processes to cores."""

from __future__ import annotations

import contextlib
import os
import platform
from pathlib import Path
from typing import Any


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def describe() -> dict[str, Any]:
    import onnxruntime

    info: dict[str, Any] = {
        "cpu_model": cpu_model(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "kernel": platform.release(),
    }
    with contextlib.suppress(OSError):
        # Shared machines: the load when the run started says how much of a core we had.
        info["load_average_at_start"] = [round(v, 2) for v in os.getloadavg()]
    return info


def split_cores(workers: int) -> tuple[list[set[int]], set[int]]:
    """Cores for each worker process and for everything else (broker, Redis, generator).

    With two cores and one worker: the worker gets one, everything else the other. With
    more workers than spare cores, the last workers share the infrastructure core(s).
    """
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        return [set(cores) for _ in range(workers)], set(cores)
    infra = {cores[-1]}
    free = cores[:-1]
    per_worker = [{free[i]} if i < len(free) else infra for i in range(workers)]
    return per_worker, infra


def pin(pid: int, cores: set[int]) -> set[int] | None:
    """Pin ``pid`` (all its threads created later) to ``cores``; the old set, or None."""
    try:
        old = set(os.sched_getaffinity(pid))
        os.sched_setaffinity(pid, cores)
        for tid in _threads(pid):
            with contextlib.suppress(OSError):
                os.sched_setaffinity(tid, cores)
    except OSError:
        return None
    return old


def _threads(pid: int) -> list[int]:
    try:
        return [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return []
