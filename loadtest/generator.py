"""Replay real series into Kafka as many concurrent keyed streams.

Stream ``i`` of a plan replays series ``i mod k`` from its own start row (seeded, so a run
is repeatable), keyed by its stream id, so the default partitioner puts all of one
stream's events in one partition and they keep their order. Events go out round-robin
over the streams (step 0 of every stream, then step 1 of every stream, ...), which
interleaves every partition. Records are built with the producer's ``create_batch`` and
sent with ``send_batch`` (one batch per partition per chunk); acks are recorded in a
:class:`~loadtest.latency.SendLog` so predictions can be matched by input offset.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import murmur2

from statecast.loadtest.latency import SendLog
from statecast.loadtest.series import Series

# Large batches keep the per-record cost of the producer low; Tansu accepts 1 MiB requests.
MAX_BATCH_BYTES = 512 * 1024
CHUNK_EVENTS = 4096  # events built per loop iteration before yielding to the event loop
TICK_S = 0.05  # rate-limited mode: how often the generator tops up to its schedule


def partition_for(key: bytes, partitions: int) -> int:
    """The partition Kafka's (and aiokafka's) default partitioner gives ``key``."""
    return int(murmur2(key) & 0x7FFFFFFF) % partitions


@dataclass(frozen=True)
class StreamPlan:
    """``n_streams`` streams on ``topic`` replaying ``series`` (stream i -> series i mod k)."""

    topic: str
    series: tuple[Series, ...]
    n_streams: int
    partitions: int
    id_prefix: str = ""
    seed: int = 7

    def __post_init__(self) -> None:
        if self.n_streams < 1 or self.partitions < 1 or not self.series:
            raise ValueError("a plan needs >= 1 stream, >= 1 partition and >= 1 series")

    def stream_id(self, i: int) -> str:
        return f"{self.id_prefix or self.topic}-{i:06d}"

    def series_of(self, i: int) -> Series:
        return self.series[i % len(self.series)]

    def start_rows(self) -> list[int]:
        rng = np.random.default_rng(self.seed)
        lengths = np.array([len(s) for s in self.series], dtype=np.int64)
        per_stream = lengths[np.arange(self.n_streams) % len(self.series)]
        starts: list[int] = rng.integers(0, per_stream).tolist()
        return starts

    def stream_index(self, stream_id: str) -> int | None:
        head, _, num = stream_id.rpartition("-")
        if head != (self.id_prefix or self.topic) or not num.isdigit():
            return None
        return int(num)


@dataclass(frozen=True)
class GeneratorConfig:
    rate: float | None = None  # events/s over all plans; None: as fast as possible
    count: int | None = None  # stop after this many events
    duration_s: float | None = None  # stop after this long
    ts_now: bool = False  # event "ts" = send time instead of the series' own time


@dataclass
class GeneratorReport:
    events: int
    seconds: float
    batches: int

    @property
    def eps(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "events": self.events,
            "seconds": round(self.seconds, 3),
            "eps": round(self.eps, 1),
            "batches": self.batches,
        }


class _Streams:
    """All streams of all plans flattened into parallel lists for the hot loop."""

    def __init__(self, plans: Sequence[StreamPlan]) -> None:
        self.topic: list[str] = []
        self.key: list[bytes] = []
        self.prefix: list[bytes] = []
        self.partition: list[int] = []
        self.start: list[int] = []
        self.length: list[int] = []
        self.ts: list[list[int]] = []
        self.span: list[int] = []
        self.values: list[list[bytes]] = []
        self.raw: list[bool] = []
        rendered: dict[int, tuple[list[int], list[bytes], int]] = {}
        for plan in plans:
            starts = plan.start_rows()
            for i in range(plan.n_streams):
                series = plan.series_of(i)
                if id(series) not in rendered:
                    rendered[id(series)] = (
                        series.ts.tolist(),
                        series.render_values(),
                        series.span_ms,
                    )
                ts, values, span = rendered[id(series)]
                sid = plan.stream_id(i)
                key = sid.encode()
                self.topic.append(plan.topic)
                self.key.append(key)
                self.prefix.append(b'{"stream":"' + key + b'","ts":')
                self.partition.append(partition_for(key, plan.partitions))
                self.start.append(starts[i])
                self.length.append(len(series))
                self.ts.append(ts)
                self.span.append(span)
                self.values.append(values)
                self.raw.append(series.raw)

    def __len__(self) -> int:
        return len(self.key)


class Generator:
    """Produces events of ``plans`` with one producer; records acks in ``sends``."""

    def __init__(
        self,
        producer: AIOKafkaProducer,
        plans: Sequence[StreamPlan],
        config: GeneratorConfig,
        sends: SendLog | None = None,
    ) -> None:
        self._start(producer, config, sends)
        self._streams = _Streams(plans)

    def _start(
        self, producer: AIOKafkaProducer, config: GeneratorConfig, sends: SendLog | None
    ) -> None:
        """The cursor and ack bookkeeping, apart from the streams (a subclass that renders
        its events otherwise calls only this)."""
        self._producer = producer
        self._config = config
        self._ts_now = config.ts_now
        self.sends = sends
        self._step = 0  # the round (per-stream step) the cursor is in
        self._next = 0  # the next stream of that round
        self._pending: set[asyncio.Future[Any]] = set()
        self.events = 0
        self.batches = 0
        self._error: BaseException | None = None

    @property
    def streams(self) -> int:
        return len(self._streams)

    async def run(self, config: GeneratorConfig | None = None) -> GeneratorReport:
        """Produce until the count or duration is reached; wait for every ack.

        A later ``run`` (with another ``config``, say a rate) continues every stream where
        the previous one left it.
        """
        cfg = config or self._config
        if cfg.count is None and cfg.duration_s is None:
            raise ValueError("give the generator a count or a duration")
        start = time.monotonic()
        deadline = start + cfg.duration_s if cfg.duration_s is not None else None
        produced_at_start, batches_at_start = self.events, self.batches
        while True:
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                break
            left = None if cfg.count is None else cfg.count - (self.events - produced_at_start)
            if left is not None and left <= 0:
                break
            n = CHUNK_EVENTS if left is None else min(CHUNK_EVENTS, left)
            if cfg.rate is not None:
                due = int(cfg.rate * (now - start)) - (self.events - produced_at_start)
                if due <= 0:
                    await asyncio.sleep(TICK_S)
                    continue
                n = min(n, due)
            await self.produce(n)
            self._raise_if_failed()
        await self.flush()
        return GeneratorReport(
            self.events - produced_at_start,
            time.monotonic() - start,
            self.batches - batches_at_start,
        )

    async def produce(self, n: int) -> None:
        """Build and send the next ``n`` events of the round-robin order."""
        s = self._streams
        now = time.time()
        now_ms = int(now * 1000)
        builders: dict[tuple[str, int], Any] = {}
        counts: dict[tuple[str, int], int] = {}
        step, i, total = self._step, self._next, len(s)
        ts_now = self._ts_now
        for _ in range(n):
            pos = s.start[i] + step
            length = s.length[i]
            row = pos % length
            if s.raw[i]:
                value = s.values[i][row]
            else:
                ts = now_ms if ts_now else s.ts[i][row] + (pos // length) * s.span[i]
                value = s.prefix[i] + b"%d" % ts + s.values[i][row]
            tp = (s.topic[i], s.partition[i])
            builder = builders.get(tp)
            if builder is None:
                builder = builders[tp] = self._producer.create_batch()
                counts[tp] = 0
            if builder.append(timestamp=now_ms, key=s.key[i], value=value) is None:
                await self._send(builder, tp, counts[tp], now)
                builder = builders[tp] = self._producer.create_batch()
                counts[tp] = 0
                builder.append(timestamp=now_ms, key=s.key[i], value=value)
            counts[tp] += 1
            i += 1
            if i == total:
                i = 0
                step += 1
        self._step, self._next = step, i
        for tp, builder in builders.items():
            await self._send(builder, tp, counts[tp], now)
        self.events += n

    async def _send(self, builder: Any, tp: tuple[str, int], count: int, sent_at: float) -> None:
        builder.close()
        fut = await self._producer.send_batch(builder, tp[0], partition=tp[1])
        self.batches += 1
        self._pending.add(fut)

        def _done(f: asyncio.Future[Any]) -> None:
            self._pending.discard(f)
            if f.cancelled():
                return
            exc = f.exception()
            if exc is not None:
                self._error = exc
            elif self.sends is not None:
                self.sends.add(tp[0], tp[1], int(f.result().offset), count, sent_at)

        fut.add_done_callback(_done)

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error

    async def flush(self) -> None:
        """Wait until every batch sent so far is acknowledged."""
        if self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)
        self._raise_if_failed()


def make_producer(bootstrap: str, **kwargs: Any) -> AIOKafkaProducer:
    """A producer for load: no idempotence (Tansu has no InitProducerId), big batches."""
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        linger_ms=0,
        max_batch_size=MAX_BATCH_BYTES,
        max_request_size=4 * MAX_BATCH_BYTES,
        enable_idempotence=False,
        **kwargs,
    )
