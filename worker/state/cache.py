"""The in-process cache of stream states for the partitions this worker owns.

Valid because a partition has one owner at a time: while we hold it, nobody else writes
its streams' states, so what we last wrote is what Redis holds. Entries are dropped when
any partition their stream used is revoked, and treated as expired when Redis would have
expired the key (the TTL counts from our last write), so the cache never outlives what
Redis remembers.

Bounded in bytes (``STATECAST_STATE_CACHE_BYTES``), least recently used first out: a worker
that has seen a million streams holds only the ones it used last, and a stream evicted
here is read back from Redis (one MGET for all of a batch's misses) the next time it comes.
Without a bound it only lost entries on revoke: ~1.2 KB per stream, 200,000 streams took a
worker from 127 to 354 MiB and a 1 GiB pod would have died near 750,000. Entries past
their TTL are swept from the old end whenever a state is stored.

Given the model's :class:`~statecast.worker.state.codec.StateCodec` (as the worker does),
an entry is held as its stored bytes (the Redis value: header, offsets, float32 tensors) and
decoded on a hit (read-only views, about 2 microseconds): one bytes object per stream
instead of a StoredState, its dict and one numpy array per tensor, so a stream costs about
half, its size is known exactly, and long-lived entries do not pin the allocator's small-
object pools between the transient objects of every batch (a live worker held about twice
the estimated bytes with object entries). Without a codec (tests, tools) entries are kept as
objects, sized from their tensors plus an overhead measured with tracemalloc.
"""

from __future__ import annotations

from collections import OrderedDict

from statecast.worker.state.codec import StateCodec, StoredState

DEFAULT_MAX_BYTES = 256 * 1024 * 1024
ENTRY_OVERHEAD_BYTES = 480
TENSOR_OVERHEAD_BYTES = 176
# The key, the bytes object's header, the LRU slot and tuple, the partition index slot.
STORED_OVERHEAD_BYTES = 300


def entry_bytes(key: str, entry: StoredState) -> int:
    tensors = entry.tensors
    return (
        ENTRY_OVERHEAD_BYTES
        + len(key)
        + sum(t.nbytes for t in tensors.values())
        + TENSOR_OVERHEAD_BYTES * len(tensors)
    )


class StateCache:
    def __init__(
        self, ttl_ms: int, max_bytes: int = DEFAULT_MAX_BYTES, codec: StateCodec | None = None
    ) -> None:
        if max_bytes < 0:
            raise ValueError("max_bytes must be >= 0 (0 disables the cache)")
        self._ttl_ms = ttl_ms
        self.max_bytes = max_bytes
        self._codec = codec
        # key -> (state or its stored bytes, its estimated bytes); oldest use first.
        self._entries: OrderedDict[str, tuple[StoredState | bytes, int]] = OrderedDict()
        self._by_partition: dict[int, set[str]] = {}
        self.bytes = 0
        self.evicted = 0  # entries pushed out by the byte bound (a counter)
        self.expired = 0  # entries swept past their TTL (a counter)

    def __len__(self) -> int:
        return len(self._entries)

    def _state(self, held: StoredState | bytes) -> StoredState:
        if isinstance(held, StoredState):
            return held
        assert self._codec is not None
        state = self._codec.decode(held).state
        assert state is not None  # we encoded it
        return state

    def get(self, key: str) -> StoredState | None:
        found = self._entries.get(key)
        if found is None:
            return None
        self._entries.move_to_end(key)
        return self._state(found[0])

    def is_expired(self, entry: StoredState, now_ms: int) -> bool:
        return now_ms - entry.updated_ms >= self._ttl_ms

    def put(self, key: str, entry: StoredState, now_ms: int | None = None) -> None:
        """Store ``entry`` as the most recently used; evict the least recently used beyond
        the byte bound; with ``now_ms``, sweep expired entries from the old end first."""
        self.discard(key)
        held: StoredState | bytes = entry
        if self._codec is not None:
            held = self._codec.encode(entry)
            size = STORED_OVERHEAD_BYTES + len(key) + len(held)
        else:
            size = entry_bytes(key, entry)
        if size > self.max_bytes:
            return  # a bound of 0 (or a huge state) caches nothing
        self._entries[key] = (held, size)
        self.bytes += size
        for p, _ in entry.positions():
            self._by_partition.setdefault(p, set()).add(key)
        if now_ms is not None:
            self.sweep(now_ms)
        while self.bytes > self.max_bytes:
            oldest = next(iter(self._entries))
            self.discard(oldest)
            self.evicted += 1

    def sweep(self, now_ms: int, limit: int = 64) -> int:
        """Drop up to ``limit`` expired entries from the least recently used end (a stream
        used since its write is newer at that end, so the scan stops at the first live
        entry); returns how many."""
        dropped = 0
        while dropped < limit and self._entries:
            key, (held, _) = next(iter(self._entries.items()))
            if not self.is_expired(self._state(held), now_ms):
                break
            self.discard(key)
            dropped += 1
        self.expired += dropped
        return dropped

    def discard(self, key: str) -> None:
        old = self._entries.pop(key, None)
        if old is None:
            return
        held, size = old
        self.bytes -= size
        for p, _ in self._state(held).positions():
            keys = self._by_partition.get(p)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._by_partition[p]

    def drop_partitions(self, partitions: set[int]) -> int:
        """Forget every stream that used any of ``partitions``; returns how many."""
        doomed: set[str] = set()
        for p in partitions:
            doomed |= self._by_partition.get(p, set())
        for key in doomed:
            self.discard(key)
        return len(doomed)
