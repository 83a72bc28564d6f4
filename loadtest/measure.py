"""Consume the predictions topic and feed a :class:`~loadtest.latency.LatencyBook`.

The measurer reads every partition of the predictions topic without a consumer group,
from the end as it was when it started, so only predictions of this run count. Latency is
the measurer's receive time minus the time the generator handed the input to its
producer: what a consumer of ``predictions`` would observe, produce and fetch included.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

import orjson
from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition

from statecast.loadtest.latency import LatencyBook
from statecast.loadtest.topics import partition_counts

ProgressFn = Callable[[], str]
FETCH_MAX_WAIT_MS = 10


class Measurer:
    """Reads ``topic`` from its current end; every prediction goes to ``book``."""

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        book: LatencyBook,
        on_prediction: Callable[[dict[str, Any], float], None] | None = None,
    ) -> None:
        self._topic = topic
        self._bootstrap = bootstrap
        self._book = book
        self._on_prediction = on_prediction
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap,
            enable_auto_commit=False,
            group_id=None,
            fetch_max_bytes=16 * 1024 * 1024,
            # Against Tansu, aiokafka's default 500 ms fetch wait put the median
            # produce-to-consume delay at 133 ms (13 ms with 10 ms) at 2,000 events/s.
            fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
            max_partition_fetch_bytes=4 * 1024 * 1024,
        )
        self.received = 0

    async def start(self) -> None:
        await self._consumer.start()
        partitions = await self._partitions()
        tps = [TopicPartition(self._topic, p) for p in sorted(partitions)]
        self._consumer.assign(tps)
        await self._consumer.seek_to_end(*tps)
        for tp in tps:
            await self._consumer.position(tp)  # resolve now, before any input is produced

    async def _partitions(self) -> set[int]:
        # Asked by name: a metadata request naming no topic lists none on a strict broker.
        counts = await partition_counts(self._bootstrap, [self._topic], wait_s=5.0)
        if self._topic not in counts:
            raise RuntimeError(f"topic {self._topic!r} has no partitions (does it exist?)")
        return set(range(counts[self._topic]))

    async def stop(self) -> None:
        await self._consumer.stop()

    async def poll_once(self, timeout_ms: int = 200) -> int:
        batch = await self._consumer.getmany(timeout_ms=timeout_ms, max_records=20_000)
        now = time.time()
        n = 0
        loads = orjson.loads
        observe = self._book.observe
        for records in batch.values():
            for rec in records:
                try:
                    pred = loads(rec.value)
                    pred_id = pred["id"]
                except (orjson.JSONDecodeError, KeyError, TypeError):
                    self._book.malformed += 1
                    continue
                observe(str(pred_id), now)
                if self._on_prediction is not None:
                    self._on_prediction(pred, now)
                n += 1
        self.received += n
        return n

    async def run(
        self,
        until: Callable[[], bool],
        idle_timeout_s: float,
        progress: ProgressFn | None = None,
        out: TextIO | None = None,
    ) -> None:
        """Consume until ``until()`` holds or nothing arrived for ``idle_timeout_s``
        (progress to ``out``, by default the stderr of the moment of the call)."""
        out = sys.stderr if out is None else out
        last_data = time.monotonic()
        last_print = 0.0
        # On a terminal the line rewrites itself; in a log, one line every few seconds.
        live = out.isatty()
        while not until():
            if await self.poll_once():
                last_data = time.monotonic()
            else:
                self._book.retry_pending()
            now = time.monotonic()
            if now - last_data > idle_timeout_s:
                break
            if progress is not None and now - last_print >= (1.0 if live else 5.0):
                last_print = now
                out.write(("\r" if live else "") + progress() + ("   " if live else "\n"))
                out.flush()
        self._book.retry_pending()
        if progress is not None and live:
            out.write("\n")
            out.flush()
