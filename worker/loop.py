"""The worker loop: consume -> decode -> route -> state read -> waves -> publish -> state write
-> commit, one bounded batch at a time.

Delivery order for every batch (DESIGN.md, "Delivery"):

1. publish the predictions and dead letters and wait for every ack;
2. write the new states, each with its last applied partition/offset, in one fenced call
   per model (the offset and the state are one value, so they change together);
3. commit the input offsets.

A crash after (1) re-runs the batch on restart: its predictions are published again with
the same ids (at-least-once). A crash after (2) redelivers records whose offset is at or
below their stream's stored offset: the fence skips them, the state does not advance again
and nothing is republished (their predictions were acked before the state was written).
So state is exactly-once and predictions are at-least-once with deterministic ids.

Each stage that talks to a dependency is retried on its own with backoff: a Redis outage
during the state write does not republish, and no offset is committed before the batch is
done. CPU work (decode, ONNX waves, prediction encoding) runs in one dedicated thread so the
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
import orjson
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError
from prometheus_client import CollectorRegistry

from statecast.worker.backoff import DependencyWatch, Retrier
from statecast.worker.batching import StreamWork, WaveOutcome, group_by_stream, run_waves
from statecast.worker.broker_probe import broker_reachable
from statecast.worker.codecs.base import REASON_NO_ROUTE, Array, Decoded, RawRecord, Rejected
from statecast.worker.dlq import REASON_STATE_MISMATCH, DeadLetter, dead_letter_message
from statecast.worker.metrics import WorkerMetrics, observe_many
from statecast.worker.models import ServedModel, load_models
from statecast.worker.publisher import OutMessage, Publisher, build_producer
from statecast.worker.redis_conn import RedisClient, RedisSettings, connect_redis
from statecast.worker.settings import Settings
from statecast.worker.state_cache import CachedState, StateCache
from statecast.worker.state_store import ReadStatus, StateStore, StoredState, state_key

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


class _TimedSession:
    """The model's session with every wave's duration recorded (called in the thread)."""

    def __init__(self, served: ServedModel, metrics: WorkerMetrics) -> None:
        self._session = served.session
        self._hist = metrics.step_seconds.labels(served.name)

    def run(self, feeds: Any) -> dict[str, Array]:
        t0 = time.perf_counter()
        out = self._session.run(feeds)
        self._hist.observe(time.perf_counter() - t0)
        return out


@dataclass
class _Runtime:
    """One routed model with its state store and cache."""

    served: ServedModel
    store: StateStore
    cache: StateCache
    session: _TimedSession
    prefix: str

    def key(self, stream: str) -> str:
        spec = self.served.spec
        return state_key(self.prefix, spec.name, spec.state_version, stream)


@dataclass
class _Plan:
    rt: _Runtime
    works: list[StreamWork] = field(default_factory=list)
    outcome: WaveOutcome | None = None
    messages: list[OutMessage] = field(default_factory=list)


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, worker: Worker) -> None:
        self._worker = worker

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._worker.on_revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self._worker.on_assigned(assigned)


def redis_settings(settings: Settings) -> RedisSettings:
    r = settings.redis
    return RedisSettings(
        url=r.url,
        cluster=r.cluster,
        username=r.username,
        password=r.password,
        tls=r.tls,
        tls_ca_file=r.tls_ca_file,
        tls_cert_file=r.tls_cert_file,
        tls_key_file=r.tls_key_file,
    )


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
        self._models = list(models) if models is not None else None
        self._runtimes: list[_Runtime] = []
        self._by_topic: dict[str, _Runtime] = {}
        self._retrier = Retrier(self.metrics, settings.retry_initial_s, settings.retry_max_s)
        self.kafka = DependencyWatch("kafka", self.metrics, settings.dependency_timeout_s)
        self.redis = DependencyWatch("redis", self.metrics, settings.dependency_timeout_s)
        self._consumer: AIOKafkaConsumer | None = None
        self._batch_lock = asyncio.Lock()
        self._stop = asyncio.Event()
        self._assigned: set[TopicPartition] = set()
        self._crash_hits = 0
        self._lag_labels: set[tuple[str, str]] = set()
        self._next_offsets: dict[TopicPartition, int] = {}
        self.stats = RunStats()

    # -- status -------------------------------------------------------------------------

    @property
    def models_loaded(self) -> bool:
        return bool(self._runtimes)

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
                self.redis, "redis_connect", lambda: connect_redis(redis_settings(s))
            )
            self._build_runtimes(served, redis_client)
            await self._retrier.call(self.kafka, "kafka_connect", producer.start)
            publisher = Publisher(producer)
            consumer = self._build_consumer()
            await self._retrier.call(self.kafka, "kafka_connect", consumer.start)
            self._consumer = consumer
            consumer.subscribe(topics=sorted(self._by_topic), listener=_Listener(self))
            log.info(
                "worker started: %d route(s) %s, group %s",
                len(self._runtimes),
                ", ".join(f"{t}->{rt.served.spec.ref}" for t, rt in self._by_topic.items()),
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

    def _build_consumer(self) -> AIOKafkaConsumer:
        k = self.settings.kafka
        return AIOKafkaConsumer(
            **k.client_kwargs(),
            group_id=k.group_id,
            enable_auto_commit=False,
            auto_offset_reset=k.auto_offset_reset,
            session_timeout_ms=k.session_timeout_ms,
            heartbeat_interval_ms=max(100, k.session_timeout_ms // 3),
            fetch_max_wait_ms=k.fetch_max_wait_ms,
            max_partition_fetch_bytes=4 << 20,
            fetch_max_bytes=32 << 20,
        )

    def _build_runtimes(self, served: Sequence[ServedModel], client: RedisClient) -> None:
        ttl_ms = self.settings.state_ttl_s * 1000
        for m in served:
            store = StateStore(
                client, self.settings.state_ttl_s, m.spec.states, m.spec.state_version
            )
            rt = _Runtime(
                m,
                store,
                StateCache(ttl_ms),
                _TimedSession(m, self.metrics),
                self.settings.state_prefix,
            )
            self._runtimes.append(rt)
            self._by_topic[m.route.topic] = rt

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
        servers = self.settings.kafka.bootstrap_servers
        if await asyncio.to_thread(broker_reachable, servers):
            self.kafka.ok()
        else:
            self.metrics.errors.labels("fetch").inc()
            self.kafka.failed("fetch", ConnectionError(f"no bootstrap broker of {servers} answers"))

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
            for tp in revoked:
                self._next_offsets.pop(tp, None)
                labels = (tp.topic, str(tp.partition))
                if labels in self._lag_labels:
                    self.metrics.consumer_lag.remove(*labels)
                    self._lag_labels.discard(labels)
            for rt in self._runtimes:
                parts = {tp.partition for tp in revoked if tp.topic == rt.served.route.topic}
                if parts:
                    dropped = rt.cache.drop_partitions(parts)
                    self.metrics.streams_cached.labels(rt.served.name).set(len(rt.cache))
                    log.info(
                        "revoked %s partitions %s: %d cached streams dropped",
                        rt.served.route.topic,
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
        s = self.settings
        raws: dict[str, list[RawRecord]] = {}
        dead: list[DeadLetter] = []
        offsets: dict[TopicPartition, int] = {}
        n = 0
        for tp, recs in batch.items():
            if not recs:
                continue
            offsets[tp] = recs[-1].offset + 1
            n += len(recs)
            self.metrics.records_consumed.labels(tp.topic).inc(len(recs))
            topic, part = tp.topic, tp.partition
            rows = [RawRecord(topic, part, r.offset, r.timestamp, r.key, r.value) for r in recs]
            if topic in self._by_topic:
                raws.setdefault(topic, []).extend(rows)
            else:
                dead.extend(DeadLetter(r, REASON_NO_ROUTE, "no route for topic") for r in rows)
        self.metrics.batch_records.observe(n)
        self.stats.records += n
        self.stats.batches += 1

        decoded = await loop.run_in_executor(executor, self._decode, raws)
        now_ms = int(time.time() * 1000)
        plans: list[_Plan] = []
        for topic, results in decoded.items():
            rt = self._by_topic[topic]
            accepted: list[tuple[RawRecord, Decoded]] = []
            for raw, res in zip(raws[topic], results, strict=True):
                if type(res) is Decoded:
                    accepted.append((raw, res))
                else:
                    assert isinstance(res, Rejected)
                    dead.append(DeadLetter(raw, res.reason, res.detail))
            groups = group_by_stream(accepted, rt.key)
            works = await self._resolve_states(rt, list(groups.values()), now_ms, dead)
            if works:
                plans.append(_Plan(rt, works))

        dead_msgs = [dead_letter_message(d) for d in dead]
        if plans:
            await loop.run_in_executor(executor, self._compute, plans)
        pred_msgs = [m for p in plans for m in p.messages]

        async def publish() -> None:
            await asyncio.gather(
                publisher.publish(s.predictions_topic, pred_msgs),
                publisher.publish(s.dlq_topic, dead_msgs),
            )

        await self._retrier.call(self.kafka, "publish", publish)
        self._count_published(plans, dead)
        self._maybe_crash("after_publish")

        for plan in plans:
            await self._write_states(plan, now_ms)
        self._maybe_crash("after_state_write")

        await self._commit(offsets)
        self._update_lag(offsets)
        self._maybe_crash("after_commit")

    def _decode(self, raws: dict[str, list[RawRecord]]) -> dict[str, list[Decoded | Rejected]]:
        return {t: self._by_topic[t].served.codec.decode(rs) for t, rs in raws.items()}

    async def _resolve_states(
        self, rt: _Runtime, works: list[StreamWork], now_ms: int, dead: list[DeadLetter]
    ) -> list[StreamWork]:
        """Give each stream its starting state (cache, else one Redis read for all misses)
        and drop the records the offset fence marks as replays."""
        model = rt.served.name
        resets = self.metrics.state_resets
        misses: list[StreamWork] = []
        for w in works:
            cached = rt.cache.get(w.key)
            if cached is None:
                misses.append(w)
            elif rt.cache.is_expired(cached, now_ms):
                rt.cache.discard(w.key)
                resets.labels(model, "expired").inc()
            else:
                w.initial = cached.tensors
                self._fence(rt, w, cached.partition, cached.offset)
        if misses:
            keys = [w.key for w in misses]
            t0 = time.perf_counter()
            results = await self._retrier.call(
                self.redis, "redis_read", lambda: rt.store.read_many(keys)
            )
            self.metrics.redis_seconds.labels("read").observe(time.perf_counter() - t0)
            for w, res in zip(misses, results, strict=True):
                if res.status is ReadStatus.OK and res.state is not None:
                    w.initial = res.state.tensors
                    self._fence(rt, w, res.state.partition, res.state.offset)
                elif res.status is ReadStatus.MISSING:
                    resets.labels(model, "missing").inc()
                elif res.status is ReadStatus.MISMATCH:
                    self.metrics.state_version_mismatches.labels(model).inc()
                    if rt.served.route.on_state_mismatch == "dead_letter":
                        dead.extend(
                            DeadLetter(raw, REASON_STATE_MISMATCH, res.detail)
                            for raw, _ in w.records
                        )
                        w.records = []
                    else:
                        resets.labels(model, "mismatch").inc()
                else:
                    log.warning(
                        "stream %r: stored state unreadable (%s); reset", w.stream, res.detail
                    )
                    resets.labels(model, "corrupt").inc()
        return [w for w in works if w.records]

    def _fence(self, rt: _Runtime, w: StreamWork, partition: int, offset: int) -> None:
        kept = [(r, d) for r, d in w.records if r.partition != partition or r.offset > offset]
        skipped = len(w.records) - len(kept)
        if skipped:
            self.metrics.replays_skipped.labels(rt.served.name).inc(skipped)
            self.stats.replays += skipped
            w.records = kept

    def _compute(self, plans: list[_Plan]) -> None:
        """Run every model's waves and encode its predictions (in the inference thread)."""
        dumps = orjson.dumps
        for plan in plans:
            rt = plan.rt
            outcome = run_waves(rt.session, rt.served.codec, rt.served.spec.states, plan.works)
            plan.outcome = outcome
            self.metrics.waves_per_batch.observe(outcome.waves)
            ref = rt.served.spec.ref
            now_ms = int(time.time() * 1000)
            plan.messages = [
                OutMessage(
                    raw.partition,
                    dec.stream.encode(),
                    dumps(
                        {
                            "id": f"{raw.topic}/{raw.partition}/{raw.offset}",
                            "stream": dec.stream,
                            "model": ref,
                            "ts": dec.ts_ms,
                            "prediction": pred,
                            "latency_ms": now_ms - raw.timestamp_ms,
                        }
                    ),
                )
                for raw, dec, pred in outcome.predictions
            ]

    def _count_published(self, plans: list[_Plan], dead: list[DeadLetter]) -> None:
        now_ms = time.time() * 1000.0
        for plan in plans:
            assert plan.outcome is not None
            model = plan.rt.served.name
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

    async def _write_states(self, plan: _Plan, now_ms: int) -> None:
        rt = plan.rt
        assert plan.outcome is not None
        items: list[tuple[str, StoredState]] = []
        for w, tensors in zip(plan.works, plan.outcome.final_states, strict=True):
            last = w.records[-1][0]
            items.append((w.key, StoredState(tensors, last.partition, last.offset, now_ms)))
        t0 = time.perf_counter()
        skipped = await self._retrier.call(
            self.redis, "redis_write", lambda: rt.store.write_many_checked(items)
        )
        self.metrics.redis_seconds.labels("write").observe(time.perf_counter() - t0)
        fenced = set(skipped)
        for key, st in items:
            if key in fenced:
                # Another owner already stored a later offset: our copy is stale.
                rt.cache.discard(key)
            else:
                rt.cache.put(key, CachedState(st.tensors, st.partition, st.offset, now_ms))
        self.metrics.streams_cached.labels(rt.served.name).set(len(rt.cache))

    async def _commit(self, offsets: dict[TopicPartition, int]) -> None:
        consumer = self._consumer
        assert consumer is not None

        async def commit() -> bool:
            try:
                await consumer.commit(offsets)
            except (CommitFailedError, IllegalStateError) as exc:
                # The group rebalanced: the new owner resumes from the last commit and the
                # offset fence turns what we already applied into replays.
                log.warning("offset commit refused after a rebalance: %s", exc)
                self.metrics.errors.labels("commit").inc()
                return False
            return True

        await self._retrier.call(self.kafka, "commit", commit)

    def _update_lag(self, offsets: dict[TopicPartition, int]) -> None:
        """Lag of every owned partition we have processed, not only this batch's: the
        high watermarks of quiet partitions still move with each fetch response."""
        consumer = self._consumer
        assert consumer is not None
        self._next_offsets.update(offsets)
        for tp in self._assigned:
            next_offset = self._next_offsets.get(tp)
            hw = consumer.highwater(tp)
            if next_offset is not None and hw is not None:
                labels = (tp.topic, str(tp.partition))
                self.metrics.consumer_lag.labels(*labels).set(max(0, hw - next_offset))
                self._lag_labels.add(labels)

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
