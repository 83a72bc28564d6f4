"""One lane per route: steps 2-6 of a poll for that route's records, pipelined.

Why lanes and not one shared scheduler: a route's records are its own partitions, so each
route can decode, compute, publish, write and commit on its own. A slow route (long texts,
frames) then holds neither another route's inference nor its delivery: each lane has its
own inference thread, onnxruntime releases the GIL inside ``session.run``, and the OS
interleaves the threads at a fine grain, so a forecast batch waits for a text wave only for
a time slice, not for the whole text batch. A scheduler inside one thread would have to cut
every route's work into bounded slices and would still deliver all routes together.

Each lane has two stages joined by a hand-off of one batch:

- **compute** (steps 2-5): decode and validate, group by stream, resolve the starting
  states (pending states first, then the cache, then one Redis read), run the waves, encode
  the predictions, and record the final states as pending (``StreamStates.advance``);
- **deliver** (step 6): publish and await every ack; then, at a checkpoint, write the states
  of every acked batch and commit their offsets.

With ``STATECAST_PIPELINE`` on (the default) batch N+1 computes while batch N delivers; its
streams start from batch N's pending states, never from a stale Redis read. Deliveries run
in order, so commits stay in order, and a state is written only after its batch's
predictions were acked: the delivery contract of DESIGN.md holds at every kill point.

``STATECAST_CHECKPOINT_INTERVAL_MS`` (0: every batch) keeps acked states in memory between
checkpoints; a checkpoint writes each touched stream once with its offset, then commits the
offsets of every batch since the last one. A crash between checkpoints redelivers those
batches: the same states are recomputed from the last checkpoint and the same predictions
are published again with the same ids (at-least-once, as after any crash).

Polls that arrive while a lane is busy queue up and are merged into one bigger batch, so a
lane under load computes larger waves; the worker pauses a lane's partitions while two
polls are queued (backpressure without blocking the other lanes).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from aiokafka import TopicPartition

from statecast.worker.backoff import DependencyWatch, Retrier
from statecast.worker.batching import StreamWork, group_by_stream
from statecast.worker.codecs.base import Array, Decoded, RawRecord, Rejected
from statecast.worker.isolation import (
    compute_isolating,
    decode_isolating,
    publish_dead_letters,
    publish_isolating,
    unpublishable,
)
from statecast.worker.messages import DeadLetter
from statecast.worker.metrics import StageTimer, WorkerMetrics, observe_many
from statecast.worker.publisher import OutMessage, Publisher
from statecast.worker.served import ServedModel
from statecast.worker.settings import Settings
from statecast.worker.state.streams import Items, StreamStates

log = logging.getLogger(__name__)

QUEUED_POLLS_BEFORE_PAUSE = 2
DECODE_SLICE = 256  # records decoded between two looks at the batch budget
MAX_AGE_MS = 24 * 3600 * 1000  # older record timestamps are not send times
PLAUSIBLE_SKEW_MS = 1000  # a producer clock this far ahead still counts (as 0 s)


class TimedSession:
    """The model's session with every wave's duration recorded (called in the lane thread)."""

    def __init__(self, served: ServedModel, metrics: WorkerMetrics, timer: StageTimer) -> None:
        self._session = served.session
        self._hist = metrics.step_seconds.labels(served.name)
        self._timer = timer
        # This lane's own totals: the waves stage is the waves' time minus these.
        self.wall_s = 0.0
        self.cpu_s = 0.0

    def run(self, feeds: Any) -> dict[str, Array]:
        t0, c0 = time.perf_counter(), time.thread_time()
        out = self._session.run(feeds)
        dt, dc = time.perf_counter() - t0, time.thread_time() - c0
        self._hist.observe(dt)
        self._timer.add("inference", dt, dc)
        self.wall_s += dt
        self.cpu_s += dc
        return out


@dataclass
class Route:
    """One routed model with its stream states."""

    served: ServedModel
    states: StreamStates
    session: TimedSession


@dataclass
class Polled:
    """Step 1's output for one route: its records of one or more polls, in offset order per
    partition, and the offsets to commit once they are done."""

    raws: list[RawRecord] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)
    offsets: dict[TopicPartition, int] = field(default_factory=dict)
    polls: int = 1

    def merge(self, later: Polled) -> None:
        self.raws.extend(later.raws)
        self.dead.extend(later.dead)
        self.offsets.update(later.offsets)
        self.polls += later.polls


def split_polled(polled: Polled, k: int) -> Polled:
    """Keep the first ``k`` records in ``polled`` and return the rest as a batch of its own.

    Per partition the records are in offset order, so the rest of a partition starts at its
    first record left: that is where ``polled`` now commits to; the rest commits to the
    original offset. A partition with no record left keeps its offset in ``polled``; one
    with no record kept moves to the rest."""
    kept, left = polled.raws[:k], polled.raws[k:]
    first_left: dict[TopicPartition, int] = {}
    for r in left:
        first_left.setdefault(TopicPartition(r.topic, r.partition), r.offset)
    kept_tps = {TopicPartition(r.topic, r.partition) for r in kept}
    rest = Polled(raws=left, offsets={tp: polled.offsets[tp] for tp in first_left}, polls=1)
    polled.raws = kept
    polled.offsets = {
        tp: first_left.get(tp, offset)
        for tp, offset in polled.offsets.items()
        if tp in kept_tps or tp not in first_left
    }
    return rest


@dataclass
class _Computed:
    polled: Polled
    works: list[StreamWork]
    messages: list[OutMessage]
    predictions: list[tuple[RawRecord, Decoded, dict[str, Any]]]
    final_states: list[dict[str, Array]]
    items: Items  # the final states, saved once the predictions are acked


@dataclass
class LaneContext:
    """What a lane shares with the worker."""

    settings: Settings
    metrics: WorkerMetrics
    stages: StageTimer
    retrier: Retrier
    kafka: DependencyWatch
    publisher: Publisher
    commit: Callable[[dict[TopicPartition, int]], Awaitable[None]]
    crash_point: Callable[[str], None]
    on_published: Callable[[int, int], None]  # predictions, dead letters
    on_busy: Callable[[float], None]  # seconds a stage spent on a batch


class Lane:
    def __init__(self, topic: str, route: Route, ctx: LaneContext) -> None:
        self.topic = topic
        self.route = route
        self._ctx = ctx
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"infer-{topic}")
        self._inbox: list[Polled] = []
        self._inbox_ready = asyncio.Event()
        self._handoff: asyncio.Queue[_Computed] = asyncio.Queue(maxsize=1)
        self._unfinished = 0  # polls submitted and not yet delivered
        self._idle = asyncio.Event()
        self._idle.set()
        self._delivering = asyncio.Lock()
        self._acked: Items = {}
        self._acked_offsets: dict[TopicPartition, int] = {}
        self._last_checkpoint = time.monotonic()
        self._tasks: list[asyncio.Task[None]] = []
        self._replays = 0  # records the offset fence dropped, for the worker's stats
        self._epoch = 0  # bumped by discard_queued: a batch split before it is not requeued

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._compute_loop(), name=f"lane-{self.topic}-compute"),
            asyncio.create_task(self._deliver_loop(), name=f"lane-{self.topic}-deliver"),
        ]

    def failure(self) -> BaseException | None:
        for task in self._tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                return task.exception()
        return None

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._executor.shutdown(wait=True)

    # -- input --------------------------------------------------------------------------

    def submit(self, polled: Polled) -> None:
        self._inbox.append(polled)
        self._unfinished += polled.polls
        self._idle.clear()
        self._inbox_ready.set()

    @property
    def queued_polls(self) -> int:
        return len(self._inbox)

    @property
    def polls_in_flight(self) -> int:
        """Polls handed to this lane and not yet delivered (queued, computing, computed,
        delivering)."""
        return self._unfinished

    @property
    def wants_pause(self) -> bool:
        return len(self._inbox) >= QUEUED_POLLS_BEFORE_PAUSE

    async def drain(self) -> None:
        """Until every submitted poll is delivered, then a checkpoint: everything computed
        is published, written and committed. Raises the lane's failure, if it failed."""
        idle = asyncio.create_task(self._idle.wait())
        try:
            await asyncio.wait({idle, *self._tasks}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            idle.cancel()
        failed = self.failure()
        if failed is not None:
            raise failed
        async with self._delivering:
            await self._checkpoint()

    # -- compute: steps 2-5 -------------------------------------------------------------

    async def _compute_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._inbox_ready.wait()
            self._inbox_ready.clear()
            polls, self._inbox = self._inbox, []
            if not polls:
                continue
            t0 = time.monotonic()
            polled = polls[0]
            for later in polls[1:]:
                polled.merge(later)
            epoch = self._epoch
            grouped, rest = await loop.run_in_executor(self._executor, self._decode, polled)
            if rest is not None and epoch == self._epoch:  # else revoked meanwhile: dropped
                self._requeue(rest)
            now_ms = int(time.time() * 1000)
            works = await self._resolve(grouped, polled, now_ms)
            computed = _Computed(polled, works, [], [], [], {})
            if works:
                await loop.run_in_executor(self._executor, self._compute, computed)
                # Only the streams that completed cleanly advance (hostile-input isolation).
                computed.items = self.route.states.advance(
                    computed.works, computed.final_states, now_ms
                )
            self._ctx.on_busy(time.monotonic() - t0)
            await self._handoff.put(computed)
            if not self._ctx.settings.pipeline:
                await self._handoff.join()  # one batch at a time

    def _decode(self, polled: Polled) -> tuple[list[StreamWork], Polled | None]:
        """The accepted records grouped by stream (rejects become dead letters).

        Decoding is where a hostile batch costs most (frames, long texts), so it runs in
        slices against ``STATECAST_BATCH_BUDGET_MS``: once a slice ends past the budget, the
        records left are cut off into a batch of their own (returned, queued first) and this
        one commits only what it covers. Every record's own cost is bounded by the codec
        budgets; this bounds a batch's, so a revoke never waits long for the lane."""
        with self._ctx.stages.stage("decode"):
            route = self.route
            budget_s = self._ctx.settings.batch_budget_ms / 1000
            t0 = time.perf_counter()
            raws = polled.raws
            decoded: list[Decoded | Rejected] = []
            rest: Polled | None = None
            for start in range(0, len(raws), DECODE_SLICE):
                if decoded and time.perf_counter() - t0 > budget_s:
                    rest = split_polled(polled, len(decoded))
                    raws = polled.raws
                    break
                decoded += decode_isolating(route.served.codec, raws[start : start + DECODE_SLICE])
            accepted: list[tuple[RawRecord, Decoded]] = []
            for raw, res in zip(raws, decoded, strict=True):
                if type(res) is Decoded:
                    accepted.append((raw, res))
                else:
                    assert isinstance(res, Rejected)
                    polled.dead.append(DeadLetter(raw, res.reason, res.detail))
            return list(group_by_stream(accepted, route.states.key).values()), rest

    def _requeue(self, rest: Polled) -> None:
        """A batch's records left after its decode budget: first in line, one more poll."""
        self._inbox.insert(0, rest)
        self._unfinished += rest.polls
        self._idle.clear()
        self._inbox_ready.set()

    def discard_queued(self) -> int:
        """Drop the polls not yet started (on revoke): they are not committed, and after
        the rebalance every assigned partition is fetched again from its committed offset
        (aiokafka's eager rebalance starts a fresh assignment), so nothing is lost and the
        revoke does not wait for them. Returns how many records were dropped."""
        self._epoch += 1
        polls, self._inbox = self._inbox, []
        self._unfinished -= sum(p.polls for p in polls)
        if self._unfinished == 0:
            self._idle.set()
        return sum(len(p.raws) for p in polls)

    async def _resolve(
        self, works: list[StreamWork], polled: Polled, now_ms: int
    ) -> list[StreamWork]:
        with self._ctx.stages.stage("state_read"):
            resolved = await self.route.states.resolve(works, now_ms)
        polled.dead.extend(resolved.dead)
        self._replays += resolved.replays
        return resolved.works

    def _compute(self, computed: _Computed) -> None:
        """Run the waves and encode the predictions (in the lane thread)."""
        timer, route = self._ctx.stages, self.route
        session = route.session
        t0, c0 = time.perf_counter(), time.thread_time()
        inf_wall, inf_cpu = session.wall_s, session.cpu_s
        # Waves, output screening and encoding, with a failure isolated to its stream
        # (worker/isolation.py); the encoding time is inside "waves" here.
        outcome = compute_isolating(
            session,
            route.served.codec,
            route.served.spec.states,
            computed.works,
            route.served.spec.ref,
            lambda: int(time.time() * 1000),
        )
        timer.add(
            "waves",
            time.perf_counter() - t0 - (session.wall_s - inf_wall),
            time.thread_time() - c0 - (session.cpu_s - inf_cpu),
        )
        self._ctx.metrics.waves_per_batch.observe(outcome.waves)
        computed.works = outcome.works
        computed.final_states = outcome.final_states
        computed.predictions = outcome.predictions
        computed.messages = outcome.messages
        computed.polled.dead.extend(outcome.dead)

    # -- deliver: step 6 ----------------------------------------------------------------

    async def _deliver_loop(self) -> None:
        interval_s = self._ctx.settings.checkpoint_interval_ms / 1000
        while True:
            timeout = None
            if interval_s > 0 and (self._acked or self._acked_offsets):
                timeout = max(0.0, self._last_checkpoint + interval_s - time.monotonic())
            try:
                computed = await asyncio.wait_for(self._handoff.get(), timeout)
            except TimeoutError:
                async with self._delivering:
                    await self._checkpoint()
                continue
            t0 = time.monotonic()
            async with self._delivering:
                await self._deliver(computed)
                if interval_s <= 0 or time.monotonic() - self._last_checkpoint >= interval_s:
                    await self._checkpoint()
            self._ctx.on_busy(time.monotonic() - t0)
            self._handoff.task_done()
            self._unfinished -= computed.polled.polls
            if self._unfinished == 0:
                self._idle.set()

    async def _deliver(self, computed: _Computed) -> None:
        ctx = self._ctx
        s = ctx.settings

        async def publish() -> list[tuple[int, BaseException]]:
            refused, _ = await asyncio.gather(
                publish_isolating(ctx.publisher, s.predictions_topic, computed.messages),
                publish_dead_letters(ctx.publisher, s.dlq_topic, computed.polled.dead),
            )
            return refused

        with ctx.stages.stage("publish"):
            refused = await ctx.retrier.call(ctx.kafka, "publish", publish, isolate=True)
            if refused:
                # Predictions the broker refused for themselves (too large): dead letters.
                extra = unpublishable(computed.predictions, refused)
                await ctx.retrier.call(
                    ctx.kafka,
                    "publish",
                    lambda: publish_dead_letters(ctx.publisher, s.dlq_topic, extra),
                    isolate=True,
                )
                gone = {i for i, _ in refused}
                computed.messages = [m for i, m in enumerate(computed.messages) if i not in gone]
                computed.predictions = [
                    p for i, p in enumerate(computed.predictions) if i not in gone
                ]
                computed.polled.dead.extend(extra)
        with ctx.stages.stage("metrics"):
            self._count_published(computed)
        ctx.crash_point("after_publish")
        self._acked.update(computed.items)
        self._acked_offsets.update(computed.polled.offsets)

    async def _checkpoint(self) -> None:
        """Write every acked state (each stream once), then commit the acked offsets."""
        if not self._acked and not self._acked_offsets:
            return
        ctx = self._ctx
        items, offsets = self._acked, self._acked_offsets
        self._acked, self._acked_offsets = {}, {}
        with ctx.stages.stage("state_write"):
            await self.route.states.save(items)
        ctx.crash_point("after_state_write")
        with ctx.stages.stage("commit"):
            await ctx.commit(offsets)
        ctx.crash_point("after_commit")
        self._last_checkpoint = time.monotonic()

    def _count_published(self, computed: _Computed) -> None:
        metrics = self._ctx.metrics
        model = self.route.served.name
        preds = computed.predictions
        metrics.predictions_published.labels(model).inc(len(computed.messages))
        if preds:
            now_ms = time.time() * 1000.0
            stamps = np.fromiter(
                (raw.timestamp_ms for raw, _, _ in preds), dtype=np.float64, count=len(preds)
            )
            # A producer's timestamp that cannot be a send time (unset, over a day old, in
            # the future) would poison the histogram: counted apart instead.
            ages = now_ms - stamps
            plausible = (stamps > 0) & (ages >= -PLAUSIBLE_SKEW_MS) & (ages <= MAX_AGE_MS)
            observe_many(
                metrics.event_latency.labels(model), np.maximum(0.0, ages[plausible]) / 1000.0
            )
            unmeasured = len(preds) - int(plausible.sum())
            if unmeasured:
                metrics.latency_unmeasured.labels(model).inc(unmeasured)
        for d in computed.polled.dead:
            metrics.dead_letters.labels(d.reason).inc()
        self._ctx.on_published(len(computed.messages), len(computed.polled.dead))

    def take_replays(self) -> int:
        n, self._replays = self._replays, 0
        return n
