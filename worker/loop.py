"""The worker loop: one bounded batch at a time through the six steps of a poll (DESIGN.md,
"Data flow for one poll"):

1. poll a bounded batch;
2. decode and validate every record, route it to its model, group by stream;
3. (routing and grouping happen with the decode, per topic);
4. resolve the starting states (cache, else one Redis read) and drop replays (offset fence);
5. run the waves and encode the predictions;
6. deliver: publish predictions and dead letters and await every ack, write the new states
   (each with its last applied partition/offset, one fenced call per model), commit.

A crash after publishing re-runs the batch on restart: its predictions are published again
with the same ids (at-least-once). A crash after the state write redelivers records whose
offset is at or below their stream's stored offset: the fence skips them, the state does
not advance again and nothing is republished. So state is exactly-once and predictions are
at-least-once with deterministic ids.

Each step that talks to a dependency is retried on its own with backoff: a Redis outage
during the state write does not republish, and no offset is committed before the batch is
done. CPU work (decode, waves, prediction encoding) runs in one dedicated thread so the
event loop keeps aiokafka's heartbeats going.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from prometheus_client import CollectorRegistry

from statecast.worker.backoff import DependencyWatch, Retrier
from statecast.worker.batching import StreamWork, WaveOutcome, group_by_stream, run_waves
from statecast.worker.codecs.base import REASON_NO_ROUTE, Array, Decoded, RawRecord, Rejected
from statecast.worker.consumer import (
    LagTracker,
    RebalanceListener,
    broker_reachable,
    build_consumer,
    commit,
)
from statecast.worker.messages import DeadLetter, dead_letter_message, prediction_messages
from statecast.worker.metrics import StageTimer, WorkerMetrics, observe_many
from statecast.worker.publisher import OutMessage, Publisher, build_producer
from statecast.worker.served import ServedModel, load_models
from statecast.worker.settings import Settings
from statecast.worker.state.cache import StateCache
from statecast.worker.state.redis_conn import RedisClient, connect_redis
from statecast.worker.state.store import StateStore
from statecast.worker.state.streams import StreamStates

log = logging.getLogger(__name__)


@dataclass
class RunStats:
    records: int = 0
    predictions: int = 0
    dead_letters: int = 0
    replays: int = 0
    batches: int = 0
    assigned_at: float | None = None  # monotonic time of the first assignment
    busy_s: float = 0.0  # time spent processing batches
    last_batch_wall: float | None = None  # wall clock at the end of the last batch


class _TimedSession:
    """The model's session with every wave's duration recorded (called in the thread)."""

    def __init__(self, served: ServedModel, metrics: WorkerMetrics, timer: StageTimer) -> None:
        self._session = served.session
        self._hist = metrics.step_seconds.labels(served.name)
        self._timer = timer

    def run(self, feeds: Any) -> dict[str, Array]:
        t0, c0 = time.perf_counter(), time.thread_time()
        out = self._session.run(feeds)
        dt = time.perf_counter() - t0
        self._hist.observe(dt)
        self._timer.add("inference", dt, time.thread_time() - c0)
        return out


@dataclass
class _Route:
    """One routed model with its stream states."""

    served: ServedModel
    states: StreamStates
    session: _TimedSession


@dataclass
class _Polled:
    """Step 1's output: the records of one poll by routed topic, plus what to commit."""

    raws: dict[str, list[RawRecord]] = field(default_factory=dict)
    dead: list[DeadLetter] = field(default_factory=list)
    offsets: dict[TopicPartition, int] = field(default_factory=dict)


@dataclass
class _Plan:
    """One model's part of a batch, from grouped streams to encoded predictions."""

    route: _Route
    works: list[StreamWork]
    outcome: WaveOutcome | None = None
    messages: list[OutMessage] = field(default_factory=list)


class Worker:
    """One worker process's loop. ``run`` returns when stopped or when a bound is reached."""

    def __init__(
        self,
        settings: Settings,
        registry: CollectorRegistry | None = None,
        models: Sequence[ServedModel] | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = WorkerMetrics(registry or CollectorRegistry())
        self.stages = StageTimer(self.metrics)
        self._models = list(models) if models is not None else None
        self._routes: dict[str, _Route] = {}
        self._retrier = Retrier(self.metrics, settings.retry_initial_s, settings.retry_max_s)
        self.kafka = DependencyWatch("kafka", self.metrics, settings.dependency_timeout_s)
        self.redis = DependencyWatch("redis", self.metrics, settings.dependency_timeout_s)
        self._consumer: AIOKafkaConsumer | None = None
        self._lag = LagTracker(self.metrics)
        self._batch_lock = asyncio.Lock()
        self._stop = asyncio.Event()
        self._assigned: set[TopicPartition] = set()
        self._crash_hits = 0
        self.stats = RunStats()

    # -- status -------------------------------------------------------------------------

    @property
    def models_loaded(self) -> bool:
        return bool(self._routes)

    def readiness(self) -> tuple[bool, str]:
        checks = {
            "models_loaded": self.models_loaded,
            "assigned": bool(self._assigned),
            "kafka": self.kafka.up,
            "redis": self.redis.up,
        }
        ok = all(checks.values())
        self.metrics.ready.set(1 if ok else 0)
        return ok, " ".join(f"{k}={'ok' if v else 'no'}" for k, v in checks.items())

    def request_stop(self) -> None:
        self._stop.set()

    # -- lifecycle ----------------------------------------------------------------------

    async def run(
        self, max_records: int | None = None, idle_timeout_s: float | None = None
    ) -> RunStats:
        """Serve until stopped; with bounds, until ``max_records`` records were handled or
        no record came for ``idle_timeout_s`` (counted from the first assignment)."""
        s = self.settings
        loop = asyncio.get_running_loop()
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="statecast-infer")
        redis_client: RedisClient | None = None
        producer = build_producer(s.kafka)
        consumer: AIOKafkaConsumer | None = None
        try:
            served = self._models
            if served is None:
                served = await loop.run_in_executor(executor, load_models, s)
            self.metrics.preinitialise([m.route.topic for m in served], [m.name for m in served])
            redis_client = await self._retrier.call(
                self.redis, "redis_connect", lambda: connect_redis(s.redis)
            )
            self._build_routes(served, redis_client)
            await self._retrier.call(self.kafka, "kafka_connect", producer.start)
            publisher = Publisher(producer)
            consumer = build_consumer(s.kafka)
            await self._retrier.call(self.kafka, "kafka_connect", consumer.start)
            self._consumer = consumer
            consumer.subscribe(
                topics=sorted(self._routes),
                listener=RebalanceListener(self.on_assigned, self.on_revoked),
            )
            log.info(
                "worker started: %d route(s) %s, group %s",
                len(self._routes),
                ", ".join(f"{t}->{r.served.spec.ref}" for t, r in self._routes.items()),
                s.kafka.group_id,
            )
            await self._serve(consumer, publisher, executor, max_records, idle_timeout_s)
        finally:
            self.metrics.ready.set(0)
            self._consumer = None
            if consumer is not None:
                await _close("kafka consumer", consumer.stop)
            await _close("kafka producer", producer.stop)
            if redis_client is not None:
                await _close("redis client", redis_client.aclose)
            executor.shutdown(wait=True)
        return self.stats

    def _build_routes(self, served: Sequence[ServedModel], client: RedisClient) -> None:
        s = self.settings
        for m in served:
            spec = m.spec
            states = StreamStates(
                m.name,
                spec.state_version,
                s.state_prefix,
                StateStore(client, s.state_ttl_s, spec.states, spec.state_version),
                StateCache(s.state_ttl_s * 1000),
                m.route.on_state_mismatch == "dead_letter",
                self.metrics,
                self._retrier,
                self.redis,
            )
            self._routes[m.route.topic] = _Route(
                m, states, _TimedSession(m, self.metrics, self.stages)
            )

    async def _serve(
        self,
        consumer: AIOKafkaConsumer,
        publisher: Publisher,
        executor: ThreadPoolExecutor,
        max_records: int | None,
        idle_timeout_s: float | None,
    ) -> None:
        s = self.settings
        last_data = time.monotonic()
        last_probe = time.monotonic()
        probe_every_s = min(2.0, s.dependency_timeout_s / 4)
        while not self._stop.is_set():
            # getmany waits for a rebalance to finish, so it must run outside the batch
            # lock that the revoke callback takes.
            try:
                with self.stages.stage("poll"):
                    batch = await consumer.getmany(
                        timeout_ms=s.poll_timeout_ms, max_records=s.max_batch_records
                    )
            except KafkaError as exc:
                # Fetch errors surface here when the broker goes away; offsets stay put.
                self.metrics.errors.labels("fetch").inc()
                self.kafka.failed("fetch", exc)
                await asyncio.sleep(s.retry_max_s)
                continue
            if not any(batch.values()) and time.monotonic() - last_probe >= probe_every_s:
                last_probe = time.monotonic()
                await self._probe_broker()
            if batch:
                self.kafka.ok()  # records arrived: the broker answers
            self.readiness()
            async with self._batch_lock:
                # Records of partitions revoked while this batch was fetched belong to
                # their new owner now.
                batch = {tp: recs for tp, recs in batch.items() if recs and tp in self._assigned}
                if batch:
                    t0 = time.monotonic()
                    await self._process(batch, publisher, executor)
                    self.stats.busy_s += time.monotonic() - t0
                    self.stats.last_batch_wall = time.time()
                    last_data = time.monotonic()
            if max_records is not None and self.stats.records >= max_records:
                break
            if idle_timeout_s is not None and self.stats.assigned_at is not None:
                since = max(last_data, self.stats.assigned_at)
                if time.monotonic() - since >= idle_timeout_s:
                    break

    async def _probe_broker(self) -> None:
        """An empty poll says nothing about the broker: ask it directly (raises
        DependencyTimeout once it has been unreachable past the deadline)."""
        kafka = self.settings.kafka
        if await asyncio.to_thread(broker_reachable, kafka):
            self.kafka.ok()
        else:
            self.metrics.errors.labels("fetch").inc()
            self.kafka.failed(
                "fetch",
                ConnectionError(f"no bootstrap broker of {kafka.bootstrap_servers} answers"),
            )

    def on_assigned(self, assigned: set[TopicPartition]) -> None:
        self._assigned = set(assigned)
        if assigned:
            self.kafka.ok()
            if self.stats.assigned_at is None:
                self.stats.assigned_at = time.monotonic()
        log.info("assigned %s", sorted((tp.topic, tp.partition) for tp in assigned))

    async def on_revoked(self, revoked: set[TopicPartition]) -> None:
        # Waits for the batch in flight: it publishes, writes its states and commits
        # while we still own its partitions. Then the revoked streams leave the cache.
        async with self._batch_lock:
            self._lag.forget(revoked)
            for topic, route in self._routes.items():
                parts = {tp.partition for tp in revoked if tp.topic == topic}
                if parts:
                    dropped = route.states.drop_partitions(parts)
                    log.info(
                        "revoked %s partitions %s: %d cached streams dropped",
                        topic,
                        sorted(parts),
                        dropped,
                    )
            self._assigned -= revoked

    # -- one batch ----------------------------------------------------------------------

    async def _process(
        self,
        batch: dict[TopicPartition, list[Any]],
        publisher: Publisher,
        executor: ThreadPoolExecutor,
    ) -> None:
        loop = asyncio.get_running_loop()
        polled = self._take(batch)  # 1. the records of this poll
        # 2-3. decode and validate, route, group by stream (in the inference thread)
        grouped = await loop.run_in_executor(executor, self._decode, polled)
        now_ms = int(time.time() * 1000)
        plans = await self._resolve(grouped, polled.dead, now_ms)  # 4. starting states
        if plans:
            await loop.run_in_executor(executor, self._compute, plans)  # 5. waves
        await self._deliver(plans, polled, publisher, now_ms)  # 6. publish, write, commit

    def _take(self, batch: dict[TopicPartition, list[Any]]) -> _Polled:
        polled = _Polled()
        n = 0
        for tp, recs in batch.items():
            polled.offsets[tp] = recs[-1].offset + 1
            n += len(recs)
            self.metrics.records_consumed.labels(tp.topic).inc(len(recs))
            topic, part = tp.topic, tp.partition
            rows = [RawRecord(topic, part, r.offset, r.timestamp, r.key, r.value) for r in recs]
            if topic in self._routes:
                polled.raws.setdefault(topic, []).extend(rows)
            else:
                polled.dead.extend(
                    DeadLetter(r, REASON_NO_ROUTE, "no route for topic") for r in rows
                )
        self.metrics.batch_records.observe(n)
        self.stats.records += n
        self.stats.batches += 1
        return polled

    def _decode(self, polled: _Polled) -> dict[str, list[StreamWork]]:
        """Each routed topic's accepted records grouped by stream (rejects are dead
        letters). Runs in the inference thread."""
        with self.stages.stage("decode"):
            grouped: dict[str, list[StreamWork]] = {}
            for topic, raws in polled.raws.items():
                route = self._routes[topic]
                accepted: list[tuple[RawRecord, Decoded]] = []
                for raw, res in zip(raws, route.served.codec.decode(raws), strict=True):
                    if type(res) is Decoded:
                        accepted.append((raw, res))
                    else:
                        assert isinstance(res, Rejected)
                        polled.dead.append(DeadLetter(raw, res.reason, res.detail))
                groups = group_by_stream(accepted, route.states.key)
                grouped[topic] = list(groups.values())
            return grouped

    async def _resolve(
        self, grouped: dict[str, list[StreamWork]], dead: list[DeadLetter], now_ms: int
    ) -> list[_Plan]:
        plans: list[_Plan] = []
        with self.stages.stage("state_read"):
            for topic, works in grouped.items():
                route = self._routes[topic]
                resolved = await route.states.resolve(works, now_ms)
                dead.extend(resolved.dead)
                self.stats.replays += resolved.replays
                if resolved.works:
                    plans.append(_Plan(route, resolved.works))
        return plans

    def _compute(self, plans: list[_Plan]) -> None:
        """Run every model's waves and encode its predictions (in the inference thread)."""
        timer = self.stages
        for plan in plans:
            route = plan.route
            t0, c0 = time.perf_counter(), time.thread_time()
            inf_wall, inf_cpu = timer.wall_s["inference"], timer.cpu_s["inference"]
            outcome = run_waves(
                route.session, route.served.codec, route.served.spec.states, plan.works
            )
            # Waves without the session.run calls inside them (timed as "inference").
            timer.add(
                "waves",
                time.perf_counter() - t0 - (timer.wall_s["inference"] - inf_wall),
                time.thread_time() - c0 - (timer.cpu_s["inference"] - inf_cpu),
            )
            plan.outcome = outcome
            self.metrics.waves_per_batch.observe(outcome.waves)
            with timer.stage("encode"):
                plan.messages = prediction_messages(
                    route.served.spec.ref, outcome.predictions, int(time.time() * 1000)
                )

    async def _deliver(
        self, plans: list[_Plan], polled: _Polled, publisher: Publisher, now_ms: int
    ) -> None:
        s = self.settings
        pred_msgs = [m for p in plans for m in p.messages]
        dead_msgs = [dead_letter_message(d) for d in polled.dead]

        async def publish() -> None:
            await asyncio.gather(
                publisher.publish(s.predictions_topic, pred_msgs),
                publisher.publish(s.dlq_topic, dead_msgs),
            )

        with self.stages.stage("publish"):
            await self._retrier.call(self.kafka, "publish", publish)
        with self.stages.stage("metrics"):
            self._count_published(plans, polled.dead)
        self._maybe_crash("after_publish")

        with self.stages.stage("state_write"):
            for plan in plans:
                assert plan.outcome is not None
                await plan.route.states.save(plan.works, plan.outcome.final_states, now_ms)
        self._maybe_crash("after_state_write")

        with self.stages.stage("commit"):
            await self._commit(polled.offsets)
        self._maybe_crash("after_commit")

    def _count_published(self, plans: list[_Plan], dead: list[DeadLetter]) -> None:
        now_ms = time.time() * 1000.0
        for plan in plans:
            assert plan.outcome is not None
            model = plan.route.served.name
            self.metrics.predictions_published.labels(model).inc(len(plan.messages))
            stamps = np.fromiter(
                (raw.timestamp_ms for raw, _, _ in plan.outcome.predictions),
                dtype=np.float64,
                count=len(plan.outcome.predictions),
            )
            observe_many(
                self.metrics.event_latency.labels(model), np.maximum(0.0, now_ms - stamps) / 1000.0
            )
            self.stats.predictions += len(plan.messages)
        for d in dead:
            self.metrics.dead_letters.labels(d.reason).inc()
        self.stats.dead_letters += len(dead)

    async def _commit(self, offsets: dict[TopicPartition, int]) -> None:
        consumer = self._consumer
        assert consumer is not None
        await self._retrier.call(
            self.kafka, "commit", lambda: commit(consumer, offsets, self.metrics)
        )
        self._lag.update(consumer, self._assigned, offsets)

    def _maybe_crash(self, stage: str) -> None:
        point = self.settings.crash_at
        if point is None or point.stage != stage:
            return
        self._crash_hits += 1
        if self._crash_hits >= point.n:
            log.error("STATECAST_TEST_CRASH_AT=%s:%d reached: SIGKILL", stage, point.n)
            os.kill(os.getpid(), signal.SIGKILL)


async def _close(name: str, stop: Callable[[], Awaitable[object]]) -> None:
    """Close a client without letting its failure hide why the worker is stopping.

    With the broker gone, aiokafka's ``stop()`` can raise the ``CancelledError`` of its own
    fetcher task; only a cancellation of *this* task is passed on.
    """
    try:
        await stop()
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise
        log.warning("%s did not close cleanly (its connection was already gone)", name)
    except Exception as exc:  # closing is best effort: the stop reason matters more
        log.warning("%s did not close cleanly: %s: %s", name, type(exc).__name__, exc)
