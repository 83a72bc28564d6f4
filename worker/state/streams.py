"""The states of one model's streams: where a batch's starting states come from and where
its final states go.

- :meth:`StreamStates.resolve` gives every stream of a batch its starting state: the
  worker's cache when it holds the stream, else one Redis read (MGET) for all misses. A
  stored value that is missing, corrupt, expired or of another state version resets the
  stream (or dead-letters its records, per route). The **offset fence** then drops the
  records at or below the stream's last applied offset: they were applied before a crash or
  a rebalance and must not advance the state again.
- :meth:`StreamStates.save` writes the final states, each with its last applied offset, in
  one fenced call, and writes them back into the cache. A write the fence skipped (another
  owner already stored a later offset) leaves the cache: our copy is stale.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

from statecast.worker.backoff import DependencyWatch, Retrier
from statecast.worker.batching import State, StreamWork
from statecast.worker.messages import REASON_STATE_MISMATCH, DeadLetter
from statecast.worker.metrics import WorkerMetrics
from statecast.worker.state.cache import StateCache
from statecast.worker.state.codec import ReadStatus, StoredState
from statecast.worker.state.store import StateStore, state_key

log = logging.getLogger(__name__)


@dataclass
class Resolved:
    """A batch of one model after :meth:`StreamStates.resolve`."""

    works: list[StreamWork]  # streams with records left to apply, starting states set
    dead: list[DeadLetter]  # records refused for their stored state (mismatch policy)
    replays: int  # records the offset fence dropped


class StreamStates:
    def __init__(
        self,
        model: str,
        state_version: str,
        prefix: str,
        store: StateStore,
        cache: StateCache,
        dead_letter_mismatch: bool,
        metrics: WorkerMetrics,
        retrier: Retrier,
        redis: DependencyWatch,
    ) -> None:
        self.model = model
        self._key_prefix = state_key(prefix, model, state_version, "")
        self.store = store
        self.cache = cache
        self._dead_letter_mismatch = dead_letter_mismatch
        self._metrics = metrics
        self._retrier = retrier
        self._redis = redis

    def key(self, stream: str) -> str:
        return self._key_prefix + stream

    async def resolve(self, works: list[StreamWork], now_ms: int) -> Resolved:
        resets = self._metrics.state_resets
        out = Resolved([], [], 0)
        misses: list[StreamWork] = []
        for w in works:
            cached = self.cache.get(w.key)
            if cached is None:
                misses.append(w)
            elif self.cache.is_expired(cached, now_ms):
                self.cache.discard(w.key)
                resets.labels(self.model, "expired").inc()
            else:
                w.initial = cached.tensors
                out.replays += _fence(w, cached)
        if misses:
            keys = [w.key for w in misses]
            t0 = time.perf_counter()
            results = await self._retrier.call(
                self._redis, "redis_read", lambda: self.store.read_many(keys)
            )
            self._metrics.redis_seconds.labels("read").observe(time.perf_counter() - t0)
            for w, res in zip(misses, results, strict=True):
                if res.status is ReadStatus.OK and res.state is not None:
                    w.initial = res.state.tensors
                    out.replays += _fence(w, res.state)
                elif res.status is ReadStatus.MISSING:
                    resets.labels(self.model, "missing").inc()
                elif res.status is ReadStatus.MISMATCH:
                    self._metrics.state_version_mismatches.labels(self.model).inc()
                    if self._dead_letter_mismatch:
                        out.dead.extend(
                            DeadLetter(raw, REASON_STATE_MISMATCH, res.detail)
                            for raw, _ in w.records
                        )
                        w.records = []
                    else:
                        resets.labels(self.model, "mismatch").inc()
                else:
                    log.warning(
                        "stream %r: stored state unreadable (%s); reset", w.stream, res.detail
                    )
                    resets.labels(self.model, "corrupt").inc()
        if out.replays:
            self._metrics.replays_skipped.labels(self.model).inc(out.replays)
        out.works = [w for w in works if w.records]
        return out

    async def save(
        self, works: Sequence[StreamWork], final_states: Sequence[State], now_ms: int
    ) -> None:
        """Write each stream's final state with its last applied offset (one fenced call),
        then keep it in the cache for the stream's next batch."""
        items: list[tuple[str, StoredState]] = []
        for w, tensors in zip(works, final_states, strict=True):
            last = w.records[-1][0]
            items.append((w.key, StoredState(tensors, last.partition, last.offset, now_ms)))
        t0 = time.perf_counter()
        skipped = await self._retrier.call(
            self._redis, "redis_write", lambda: self.store.write_many(items)
        )
        self._metrics.redis_seconds.labels("write").observe(time.perf_counter() - t0)
        fenced = set(skipped)
        for key, state in items:
            if key in fenced:
                self.cache.discard(key)
            else:
                self.cache.put(key, state)
        self._metrics.streams_cached.labels(self.model).set(len(self.cache))

    def drop_partitions(self, partitions: set[int]) -> int:
        """Forget the cached streams of revoked partitions; returns how many."""
        dropped = self.cache.drop_partitions(partitions)
        self._metrics.streams_cached.labels(self.model).set(len(self.cache))
        return dropped


def _fence(w: StreamWork, stored: StoredState) -> int:
    """Drop ``w``'s records at or below the stored offset of their partition; returns how
    many (records of another partition are kept: the stream moved partitions)."""
    kept = [
        (r, d) for r, d in w.records if r.partition != stored.partition or r.offset > stored.offset
    ]
    skipped = len(w.records) - len(kept)
    if skipped:
        w.records = kept
    return skipped
