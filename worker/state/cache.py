"""The in-process cache of stream states for the partitions this worker owns.

Valid because a partition has one owner at a time: while we hold it, nobody else writes
its streams' states, so what we last wrote is what Redis holds. Entries are dropped when
their partition is revoked, and treated as expired when Redis would have expired the key
(the TTL counts from our last write), so the cache never outlives what Redis remembers.
"""

from __future__ import annotations

from statecast.worker.state.codec import StoredState


class StateCache:
    def __init__(self, ttl_ms: int) -> None:
        self._ttl_ms = ttl_ms
        self._entries: dict[str, StoredState] = {}
        self._by_partition: dict[int, set[str]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> StoredState | None:
        return self._entries.get(key)

    def is_expired(self, entry: StoredState, now_ms: int) -> bool:
        return now_ms - entry.updated_ms >= self._ttl_ms

    def put(self, key: str, entry: StoredState) -> None:
        old = self._entries.get(key)
        if old is not None and old.partition != entry.partition:
            self._by_partition.get(old.partition, set()).discard(key)
        self._entries[key] = entry
        self._by_partition.setdefault(entry.partition, set()).add(key)

    def discard(self, key: str) -> None:
        old = self._entries.pop(key, None)
        if old is not None:
            self._by_partition.get(old.partition, set()).discard(key)

    def drop_partitions(self, partitions: set[int]) -> int:
        dropped = 0
        for p in partitions:
            for key in self._by_partition.pop(p, set()):
                if self._entries.pop(key, None) is not None:
                    dropped += 1
        return dropped
