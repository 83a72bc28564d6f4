"""The states of one model's streams: where a batch's starting states come from and where
its final states go.

- :meth:`StreamStates.resolve` gives every stream of a batch its starting state: the
  worker's cache when it holds the stream, else one Redis read (MGET) for all misses. A
  stored value that is missing, corrupt, expired or of another state version resets the
  stream (or dead-letters its records, per route). The **offset fence** then drops the
  records at or below the stream's last applied offset: they were applied before a crash or
  a rebalance and must not advance the state again.
- :meth:`StreamStates.advance` records a batch's final states as **pending** as soon as
  they are computed: the next batch of the same streams starts from them even while this
  batch is still publishing (pipelining) or waiting for a checkpoint, never from a Redis
  value that is about to be overwritten. Pending states are not subject to the cache's
  eviction.
- :meth:`StreamStates.save` writes states, each with its last applied offset, in one fenced
  call, and moves them into the cache. A write the fence skipped (another owner already
  stored a later offset) leaves the cache: our copy is stale. The caller decides which
  states to save and when: only states whose predictions were acked (DESIGN.md, "Delivery").
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

from statecast.worker.backoff import DependencyWatch, Retrier
from statecast.worker.batching import State, StreamWork
from statecast.worker.messages import REASON_STATE_MISMATCH, DeadLetter
from statecast.worker.metrics import WorkerMetrics
from statecast.worker.state.cache import StateCache
from statecast.worker.state.codec import ReadStatus, StoredState, applied_after
from statecast.worker.state.store import StateStore, WriteResult, state_key

log = logging.getLogger(__name__)


@dataclass
class Resolved:
    """A batch of one model after :meth:`StreamStates.resolve`."""

    works: list[StreamWork]  # streams with records left to apply, starting states set
    dead: list[DeadLetter]  # records refused for their stored state (mismatch policy)
    replays: int  # records the offset fence dropped


Items = dict[str, StoredState]  # state key -> the state to write


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
        # Computed, not yet written: key -> latest state. Read before the cache.
        self.pending: Items = {}
        self._evictions_counted: dict[str, int] = {}  # cache counters already in metrics

    def key(self, stream: str) -> str:
        return self._key_prefix + stream

    async def resolve(self, works: list[StreamWork], now_ms: int) -> Resolved:
        resets = self._metrics.state_resets
        out = Resolved([], [], 0)
        misses: list[StreamWork] = []
        pending = self.pending
        for w in works:
            newer = pending.get(w.key)
            if newer is not None:
                w.initial = newer.tensors
                out.replays += _fence(w, newer)
                continue
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

    def advance(
        self, works: Sequence[StreamWork], final_states: Sequence[State], now_ms: int
    ) -> Items:
        """Record each stream's final state with its last applied offset as pending;
        returns them (what this batch will save once its predictions are acked)."""
        items: Items = {}
        for w, tensors in zip(works, final_states, strict=True):
            last = w.records[-1][0]
            lp = last.partition
            if w.applied or any(r.partition != lp for r, _ in w.records):
                partition, offset, earlier = applied_after(
                    w.applied, [(r.partition, r.offset) for r, _ in w.records]
                )
                items[w.key] = StoredState(tensors, partition, offset, now_ms, earlier)
            else:  # a new stream from one partition: its table is its last record
                items[w.key] = StoredState(tensors, last.partition, last.offset, now_ms)
        self.pending.update(items)
        return items

    async def save(self, items: Items) -> None:
        """Write ``items`` (one fenced call), then move them from pending to the cache."""
        if not items:
            return
        t0 = time.perf_counter()
        try:
            written = await self._retrier.call(
                self._redis,
                "redis_write",
                lambda: self.store.write_many_detailed(list(items.items())),
                isolate=True,
            )
            failed: set[str] = set()
        except Exception as exc:  # an answer about some value, not an outage
            written, failed = await self._save_one_by_one(items, exc)
        self._metrics.redis_seconds.labels("write").observe(time.perf_counter() - t0)
        if written.replaced:
            # A key of another Redis type (not written by us): replaced, the stream reset.
            log.warning("%d state keys held another Redis type; replaced", len(written.replaced))
            self._metrics.state_resets.labels(self.model, "wrong_type").inc(len(written.replaced))
        fenced = set(written.skipped)
        pending = self.pending
        for key, state in items.items():
            if pending.get(key) is state:
                # A later batch may have advanced the stream meanwhile: it stays pending.
                del pending[key]
            if key in fenced or key in failed:
                # Another owner stored a later offset, or Redis refused this value: what
                # we hold (and anything newer) is not what Redis holds. The next batch of
                # the stream reads Redis again.
                self.cache.discard(key)
                pending.pop(key, None)
            else:
                self.cache.put(key, state, state.updated_ms)  # what Redis holds now
        self._cache_metrics()

    async def _save_one_by_one(
        self, items: Items, exc: BaseException
    ) -> tuple[WriteResult, set[str]]:
        """The batch write failed with an error that is not an outage: write each state on
        its own so one refused value costs only its own stream (counted, logged)."""
        log.error("state write failed for a batch (%s: %s): one by one", type(exc).__name__, exc)
        out, failed = WriteResult([], []), set()
        for key, state in items.items():
            try:
                one = await self._retrier.call(
                    self._redis,
                    "redis_write",
                    partial(self.store.write_many_detailed, [(key, state)]),
                    isolate=True,
                )
            except Exception as one_exc:
                log.error("state of %r not written: %s: %s", key, type(one_exc).__name__, one_exc)
                self._metrics.state_resets.labels(self.model, "unwritable").inc()
                failed.add(key)
                continue
            out.skipped.extend(one.skipped)
            out.replaced.extend(one.replaced)
        return out, failed

    def _cache_metrics(self) -> None:
        cache, m, model = self.cache, self._metrics, self.model
        m.streams_cached.labels(model).set(len(cache))
        m.state_cache_bytes.labels(model).set(cache.bytes)
        for reason, total in (("size", cache.evicted), ("expired", cache.expired)):
            counted = self._evictions_counted.get(reason, 0)
            if total > counted:
                m.state_cache_evictions.labels(model, reason).inc(total - counted)
                self._evictions_counted[reason] = total

    def drop_partitions(self, partitions: set[int]) -> int:
        """Forget the cached streams of revoked partitions; returns how many. Called once
        everything computed for them is saved, so no pending state of theirs remains."""
        for key in [k for k, st in self.pending.items() if st.partition in partitions]:
            del self.pending[key]
        dropped = self.cache.drop_partitions(partitions)
        self._cache_metrics()
        return dropped


def _fence(w: StreamWork, stored: StoredState) -> int:
    """Drop ``w``'s records at or below the stored offset of their partition (every
    partition the stream used, not only its last); returns how many. ``w`` keeps the
    stored table: its next state extends it."""
    w.applied = stored.positions()
    if not stored.earlier:  # one partition, the common case: no dict
        p, o = stored.partition, stored.offset
        kept = [(r, d) for r, d in w.records if r.partition != p or r.offset > o]
    else:
        applied = stored.offsets()
        kept = [(r, d) for r, d in w.records if r.offset > applied.get(r.partition, -1)]
    skipped = len(w.records) - len(kept)
    if skipped:
        w.records = kept
    return skipped
