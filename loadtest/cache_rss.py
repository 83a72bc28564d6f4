"""Resident memory of the worker's state cache after N distinct streams (a figure, printed).

``python -m statecast.loadtest.cache_rss --streams 1000000 [--cache-bytes N] [--model M]``
stores one state per stream, shaped like the model's (``sensor_lstm``: two [1, 48] tensors),
in a :class:`~statecast.worker.state.cache.StateCache` exactly as the worker does after each
batch, and prints the process's RSS before and after, its peak, and what the cache holds.
With ``--cache-bytes 0`` nothing is kept; a huge value shows the unbounded growth the bound
prevents. Reported in docs/hostile-input.md.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from statecast.contract.manifest import load_manifest
from statecast.contract.paths import PACKAGE_ROOT
from statecast.contract.spec import ModelSpec
from statecast.worker.inference import build_session
from statecast.worker.settings import Settings
from statecast.worker.state.cache import StateCache
from statecast.worker.state.codec import StateCodec, StoredState
from statecast.worker.state.store import state_key


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def measure(streams: int, cache_bytes: int, model: str) -> dict[str, object]:
    entry = load_manifest()[model]
    session = build_session(entry.onnx_path(PACKAGE_ROOT))
    spec = ModelSpec.from_metadata(dict(session.get_modelmeta().custom_metadata_map))
    del session
    codec = StateCodec(spec.states, spec.state_version)  # entries as stored bytes, as the worker
    cache = StateCache(ttl_ms=7 * 24 * 3600 * 1000, max_bytes=cache_bytes, codec=codec)
    rng = np.random.default_rng(0)
    base = {
        s.name: rng.standard_normal((s.layers, s.hidden)).astype(np.float32) for s in spec.states
    }
    rss0 = _status_kib("VmRSS")
    t0 = time.perf_counter()
    now = int(time.time() * 1000)
    for i in range(streams):
        # A fresh copy per stream, as the worker stores (each stream owns its arrays).
        tensors = {n: a.copy() for n, a in base.items()}
        key = state_key("statecast", spec.name, spec.state_version, f"stream-{i:07d}")
        cache.put(key, StoredState(tensors, i % 16, i, now), now)
    seconds = time.perf_counter() - t0
    return {
        "model": model,
        "streams": streams,
        "cache_bytes_bound": cache_bytes,
        "cached_streams": len(cache),
        "cache_bytes_estimated": cache.bytes,
        "evicted": cache.evicted,
        "rss_before_mib": round(rss0 / 1024, 1),
        "rss_after_mib": round(_status_kib("VmRSS") / 1024, 1),
        "rss_peak_mib": round(_status_kib("VmHWM") / 1024, 1),
        "seconds": round(seconds, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=1_000_000)
    parser.add_argument("--cache-bytes", type=int, default=Settings.state_cache_bytes)
    parser.add_argument("--model", default="sensor_lstm")
    args = parser.parse_args()
    print(json.dumps(measure(args.streams, args.cache_bytes, args.model)))


if __name__ == "__main__":
    main()
