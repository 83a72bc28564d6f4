"""The worker loop: poll, then hand each route's records to its lane (``worker/lanes.py``).

One poll follows DESIGN.md's six steps:

1. poll a bounded batch (here, on the event loop);
2. decode and validate every record; 3. group by stream (in the route's lane thread);
4. resolve the starting states (pending, cache, else one Redis read) and drop replays;
5. run the waves and encode the predictions;
6. deliver: publish predictions and dead letters and await every ack, write the new states
   (each with its last applied partition/offset, one fenced call per model), commit.

Steps 2-6 run per route in lanes, pipelined (batch N+1 computes while N delivers), so a
slow route holds neither another route's inference nor its delivery. Delivery order per
batch stays publish -> state write -> commit: a crash after publishing re-runs the batch
(same prediction ids: at-least-once); a crash after the state write redelivers records the
offset fence skips (state exactly-once). Each step that talks to a dependency is retried on
its own with backoff; no offset is committed before its batch is done.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from prometheus_client import CollectorRegistry

from statecast.worker.backoff import DependencyWatch, Retrier
from statecast.worker.codecs.base import REASON_NO_ROUTE, RawRecord
from statecast.worker.consumer import (
    LagTracker,
    RebalanceListener,
    broker_reachable,
    build_consumer,
    commit,
)
from statecast.worker.lanes import Lane, LaneContext, Polled, Route, TimedSession
from statecast.worker.messages import DeadLetter
from statecast.worker.metrics import StageTimer, WorkerMetrics
from statecast.worker.publisher import Publisher, build_producer
from statecast.worker.served import ServedModel, load_models
from statecast.worker.settings import Settings
from statecast.worker.state.cache import StateCache
from statecast.worker.state.redis_conn import RedisClient, connect_redis
from statecast.worker.state.store import StateStore
from statecast.worker.state.streams import StreamStates

log = logging.getLogger(__name__)

_new = object.__new__
_RAW_FIELDS = ("topic", "partition", "offset", "timestamp_ms", "key", "value")


def raw_records(topic: str, partition: int, recs: Sequence[Any]) -> list[RawRecord]:
    """One :class:`RawRecord` per fetched record of one partition.

    RawRecord is a frozen dataclass: its ``__init__`` sets every field through
    ``object.__setattr__``. One is built per event on the event loop, so they are built
    by filling ``__dict__`` instead: the same objects (equal, same hash) at ~40% of the
    cost. tests/test_worker_raw_records.py holds the fields to the dataclass's."""
    out: list[RawRecord] = []
    append = out.append
    for r in recs:
        raw = _new(RawRecord)
        d = raw.__dict__
        d["topic"] = topic
        d["partition"] = partition
        d["offset"] = r.offset
        d["timestamp_ms"] = r.timestamp
        d["key"] = r.key
        d["value"] = r.value
        append(raw)
    return out


@dataclass
class RunStats:
    records: int = 0
    predictions: int = 0
    dead_letters: int = 0
    replays: int = 0
    batches: int = 0
    assigned_at: float | None = None  # monotonic time of the first assignment
    busy_s: float = 0.0  # lanes' compute + deliver time (lanes overlap: may exceed wall)
    last_batch_wall: float | None = None  # wall clock at the end of the last batch


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
        self._routes: dict[str, Route] = {}
        self._lanes: dict[str, Lane] = {}
        self._retrier = Retrier(self.metrics, settings.retry_initial_s, settings.retry_max_s)
        self.kafka = DependencyWatch("kafka", self.metrics, settings.dependency_timeout_s)
        self.redis = DependencyWatch("redis", self.metrics, settings.dependency_timeout_s)
        self._consumer: AIOKafkaConsumer | None = None
        self._lag = LagTracker(self.metrics)
        self._stop = asyncio.Event()
        self._assigned: set[TopicPartition] = set()
        self._paused: set[TopicPartition] = set()
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
        redis_client: RedisClient | None = None
        producer = build_producer(s.kafka)
        consumer: AIOKafkaConsumer | None = None
        try:
            served = self._models
            if served is None:
                with ThreadPoolExecutor(max_workers=1) as loader:
                    served = await loop.run_in_executor(loader, load_models, s)
            self.metrics.preinitialise([m.route.topic for m in served], [m.name for m in served])
            redis_client = await self._retrier.call(
                self.redis, "redis_connect", lambda: connect_redis(s.redis)
            )
            self._build_routes(served, redis_client)
            await self._retrier.call(self.kafka, "kafka_connect", producer.start)
            self._start_lanes(Publisher(producer))
            consumer = build_consumer(s.kafka)
            await self._retrier.call(self.kafka, "kafka_connect", consumer.start)
            self._consumer = consumer
            consumer.subscribe(
                topics=sorted(self._routes),
                listener=RebalanceListener(self.on_assigned, self.on_revoked),
            )
            log.info(
                "worker started: %d route(s) %s, group %s, pipeline %s, checkpoint every %s",
                len(self._routes),
                ", ".join(f"{t}->{r.served.spec.ref}" for t, r in self._routes.items()),
                s.kafka.group_id,
                "on" if s.pipeline else "off",
                f"{s.checkpoint_interval_ms} ms" if s.checkpoint_interval_ms else "batch",
            )
            await self._serve(consumer, max_records, idle_timeout_s)
            # Stopped or bounded: finish what is in flight (publish, write, commit).
            await self._drain_lanes()
        finally:
            self.metrics.ready.set(0)
            for lane in self._lanes.values():
                await lane.close()
            self._consumer = None
            if consumer is not None:
                await _close("kafka consumer", consumer.stop)
            await _close("kafka producer", producer.stop)
            if redis_client is not None:
                await _close("redis client", redis_client.aclose)
        return self.stats

    def _build_routes(self, served: Sequence[ServedModel], client: RedisClient) -> None:
        s = self.settings
        for m in served:
            spec = m.spec
            store = StateStore(client, s.state_ttl_s, spec.states, spec.state_version)
            states = StreamStates(
                m.name,
                spec.state_version,
                s.state_prefix,
                store,
                # Entries held as their stored bytes: about half the memory per stream.
                StateCache(s.state_ttl_s * 1000, s.state_cache_bytes, store.codec),
                m.route.on_state_mismatch == "dead_letter",
                self.metrics,
                self._retrier,
                self.redis,
            )
            self._routes[m.route.topic] = Route(
                m, states, TimedSession(m, self.metrics, self.stages)
            )

    def _start_lanes(self, publisher: Publisher) -> None:
        ctx = LaneContext(
            settings=self.settings,
            metrics=self.metrics,
            stages=self.stages,
            retrier=self._retrier,
            kafka=self.kafka,
            publisher=publisher,
            commit=self._commit,
            crash_point=self._maybe_crash,
            on_published=self._on_published,
            on_busy=self._on_busy,
        )
        for topic, route in self._routes.items():
            lane = Lane(topic, route, ctx)
            lane.start()
            self._lanes[topic] = lane

    async def _serve(
        self,
        consumer: AIOKafkaConsumer,
        max_records: int | None,
        idle_timeout_s: float | None,
    ) -> None:
        s = self.settings
        last_data = time.monotonic()
        last_probe = time.monotonic()
        probe_every_s = min(2.0, s.dependency_timeout_s / 4)
        while not self._stop.is_set():
            self._raise_lane_failure()
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
            # Records of partitions revoked while this batch was fetched belong to their
            # new owner now.
            batch = {tp: recs for tp, recs in batch.items() if recs and tp in self._assigned}
            if batch:
                self._dispatch(batch)
                last_data = time.monotonic()
            self._apply_backpressure(consumer)
            if max_records is not None and self.stats.records >= max_records:
                break
            if idle_timeout_s is not None and self.stats.assigned_at is not None:
                since = max(last_data, self.stats.assigned_at)
                if time.monotonic() - since >= idle_timeout_s:
                    break

    def _raise_lane_failure(self) -> None:
        for lane in self._lanes.values():
            failed = lane.failure()
            if failed is not None:
                raise failed

    async def _drain_lanes(self) -> None:
        for lane in self._lanes.values():
            await lane.drain()
        self.stats.replays += sum(lane.take_replays() for lane in self._lanes.values())

    def _apply_backpressure(self, consumer: AIOKafkaConsumer) -> None:
        """Pause the partitions of a lane with polls queued, resume them once it caught up
        (the other lanes keep being fetched)."""
        pause: set[TopicPartition] = set()
        for topic, lane in self._lanes.items():
            if lane.wants_pause or (lane.queued_polls and self._paused_topic(topic)):
                pause |= {tp for tp in self._assigned if tp.topic == topic}
        pause &= self._assigned
        if pause - self._paused:
            consumer.pause(*(pause - self._paused))
        if self._paused - pause:
            consumer.resume(*((self._paused - pause) & self._assigned))
        self._paused = pause

    def _paused_topic(self, topic: str) -> bool:
        return any(tp.topic == topic for tp in self._paused)

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
        self._paused = set()  # a new assignment starts unpaused
        if assigned:
            self.kafka.ok()
            if self.stats.assigned_at is None:
                self.stats.assigned_at = time.monotonic()
        log.info("assigned %s", sorted((tp.topic, tp.partition) for tp in assigned))

    async def on_revoked(self, revoked: set[TopicPartition]) -> None:
        # Every lane finishes what it holds (publish, write, commit) while we still own its
        # partitions; then the revoked streams leave the cache. Polls a lane has not
        # started are dropped, not drained: uncommitted, they are fetched again after the
        # rebalance, and a lane deep in a hostile backlog must not hold up the group.
        dropped = sum(lane.discard_queued() for lane in self._lanes.values())
        if dropped:
            log.info("revoke: %d queued records dropped (fetched again after it)", dropped)
        await self._drain_lanes()
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
        self._paused -= revoked

    # -- step 1 -------------------------------------------------------------------------

    def _dispatch(self, batch: dict[TopicPartition, list[Any]]) -> None:
        """Split one poll by route and hand each part to its lane (steps 2-6)."""
        polled: dict[str, Polled] = {}
        unrouted: list[DeadLetter] = []
        n = 0
        for tp, recs in batch.items():
            n += len(recs)
            self.metrics.records_consumed.labels(tp.topic).inc(len(recs))
            topic, part = tp.topic, tp.partition
            rows = raw_records(topic, part, recs)
            if topic in self._lanes:
                mine = polled.setdefault(topic, Polled())
                mine.raws.extend(rows)
                mine.offsets[tp] = recs[-1].offset + 1
            else:
                # Only subscribed topics are fetched; kept for safety (never committed).
                unrouted.extend(DeadLetter(r, REASON_NO_ROUTE, "no route for topic") for r in rows)
        self.metrics.batch_records.observe(n)
        self.stats.records += n
        self.stats.batches += 1
        if unrouted:
            log.warning("%d records of unrouted topics dropped", len(unrouted))
        for topic, part_of_poll in polled.items():
            self._lanes[topic].submit(part_of_poll)
        self.stats.replays += sum(lane.take_replays() for lane in self._lanes.values())

    def _on_published(self, predictions: int, dead_letters: int) -> None:
        self.stats.predictions += predictions
        self.stats.dead_letters += dead_letters
        self.stats.last_batch_wall = time.time()

    def _on_busy(self, seconds: float) -> None:
        self.stats.busy_s += seconds

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
            in_flight = sum(lane.polls_in_flight for lane in self._lanes.values())
            log.error(
                "STATECAST_TEST_CRASH_AT=%s:%d reached: SIGKILL with %d poll(s) in flight",
                stage,
                point.n,
                in_flight,
            )
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
