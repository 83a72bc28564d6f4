"""The in-process state cache is bounded in bytes (LRU), sweeps expired entries, forgets a
stream when any partition it used is revoked, and its size estimate matches what Python
really allocates."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from statecast.contract.spec import StateSpec
from statecast.worker.state.cache import StateCache, entry_bytes
from statecast.worker.state.codec import StateCodec, StoredState

pytestmark = pytest.mark.unit


def st(
    partition: int = 0, updated_ms: int = 1_000, earlier: tuple[tuple[int, int], ...] = ()
) -> StoredState:
    tensors = {n: np.zeros((1, 48), np.float32) for n in ("h", "c")}
    return StoredState(tensors, partition, 1, updated_ms, earlier)


def test_the_byte_bound_evicts_least_recently_used_first() -> None:
    one = entry_bytes("k0", st())
    cache = StateCache(ttl_ms=10**9, max_bytes=3 * one)
    for k in ("k0", "k1", "k2"):
        cache.put(k, st())
    assert cache.get("k0") is not None  # k0 used: k1 is now the least recently used
    cache.put("k3", st())
    assert cache.get("k1") is None
    assert [k for k in ("k0", "k2", "k3") if cache.get(k) is not None] == ["k0", "k2", "k3"]
    assert cache.bytes <= cache.max_bytes
    assert cache.evicted == 1


def test_many_distinct_streams_never_exceed_the_bound() -> None:
    cache = StateCache(ttl_ms=10**9, max_bytes=1 << 20)
    for i in range(20_000):
        cache.put(f"statecast:sensor_lstm:v1:meter-{i}", st())
        assert cache.bytes <= cache.max_bytes
    one = entry_bytes("statecast:sensor_lstm:v1:meter-19999", st())
    assert len(cache) >= cache.max_bytes // one - 1  # full, not emptied
    assert cache.evicted == 20_000 - len(cache)


def test_expired_entries_are_swept_when_states_are_stored() -> None:
    cache = StateCache(ttl_ms=1_000)
    cache.put("old", st(updated_ms=0))
    cache.put("new", st(updated_ms=900), now_ms=900)
    assert len(cache) == 2
    cache.put("newer", st(updated_ms=1_500), now_ms=1_500)  # "old" is past its TTL
    assert cache.get("old") is None
    assert cache.get("new") is not None
    assert cache.expired == 1


def test_revoking_any_partition_a_stream_used_forgets_it() -> None:
    cache = StateCache(ttl_ms=10**9)
    cache.put("spread", st(partition=1, earlier=((0, 5),)))
    cache.put("single", st(partition=2))
    assert cache.drop_partitions({0}) == 1
    assert cache.get("spread") is None
    assert cache.get("single") is not None


def test_zero_bytes_disables_the_cache() -> None:
    cache = StateCache(ttl_ms=10**9, max_bytes=0)
    cache.put("k", st())
    assert cache.get("k") is None
    assert cache.bytes == 0


def test_size_estimate_matches_what_python_allocates() -> None:
    keys = [f"statecast:sensor_lstm:s0123abcd:meter-{i:07d}" for i in range(20_000)]
    cache = StateCache(ttl_ms=10**9, max_bytes=1 << 40)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for k in keys:
            cache.put(k, st())
        measured = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert 0.8 < cache.bytes / measured < 1.25, (cache.bytes, measured)


def test_entries_held_as_stored_bytes_round_trip_and_cost_less() -> None:
    codec = StateCodec((StateSpec("h", 1, 48), StateSpec("c", 1, 48)), "s0123abcd")
    compact = StateCache(ttl_ms=10**9, max_bytes=1 << 40, codec=codec)
    entry = st(partition=3, updated_ms=5, earlier=((1, 7),))
    entry.tensors["h"][0, 5] = 2.5
    compact.put("k", entry)
    back = compact.get("k")
    assert back is not None
    assert back.positions() == ((3, 1), (1, 7))
    assert back.updated_ms == 5
    assert float(back.tensors["h"][0, 5]) == 2.5
    assert compact.drop_partitions({1}) == 1
    keys = [f"statecast:sensor_lstm:s0123abcd:meter-{i:07d}" for i in range(20_000)]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for k in keys:
            compact.put(k, st())
        measured = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert 0.8 < compact.bytes / measured < 1.25, (compact.bytes, measured)
    assert compact.bytes < 0.75 * len(keys) * entry_bytes(keys[0], st())
