"""Publishing many messages with aiokafka's batch API and waiting for every ack.

One ``create_batch``/``send_batch`` per target partition (more when a batch fills) instead
of one ``send`` per message. Messages carry the partition of the input record they answer;
the output partition is that number modulo the topic's partition count, so every stream's
predictions stay in one partition and in order without hashing keys per message.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, NamedTuple

from aiokafka import AIOKafkaProducer

from statecast.worker.settings import KafkaSettings

MAX_BATCH_BYTES = 1 << 20


class OutMessage(NamedTuple):
    # A NamedTuple, not a dataclass: one is built per prediction on the hot path.
    source_partition: int
    key: bytes | None
    value: bytes
    timestamp_ms: int | None = None
    headers: tuple[tuple[str, bytes], ...] = ()


def build_producer(kafka: KafkaSettings) -> AIOKafkaProducer:
    # No idempotence: Tansu has no InitProducerId. acks=all so an ack means durable.
    return AIOKafkaProducer(
        **kafka.client_kwargs(),
        acks="all",
        enable_idempotence=False,
        max_batch_size=MAX_BATCH_BYTES,
        max_request_size=4 * MAX_BATCH_BYTES,
        linger_ms=0,
        request_timeout_ms=15_000,
    )


class Publisher:
    def __init__(self, producer: AIOKafkaProducer) -> None:
        self._producer = producer
        self._partitions: dict[str, list[int]] = {}

    async def partitions(self, topic: str) -> list[int]:
        parts = self._partitions.get(topic)
        if parts is None:
            found = await self._producer.partitions_for(topic)
            if not found:
                raise RuntimeError(f"topic {topic!r} has no partitions (does it exist?)")
            parts = self._partitions[topic] = sorted(found)
        return parts

    async def publish(self, topic: str, messages: Sequence[OutMessage]) -> None:
        """Send ``messages`` to ``topic`` and return once the broker acked all of them."""
        if not messages:
            return
        parts = await self.partitions(topic)
        by_partition: dict[int, list[OutMessage]] = {}
        for m in messages:
            by_partition.setdefault(parts[m.source_partition % len(parts)], []).append(m)
        futures: list[asyncio.Future[Any]] = []
        producer = self._producer
        for partition, msgs in by_partition.items():
            batch = producer.create_batch()
            for m in msgs:
                if not _append(batch, m):
                    # The batch is full: send it and start the next one with this message.
                    futures.append(await producer.send_batch(batch, topic, partition=partition))
                    batch = producer.create_batch()
                    if not _append(batch, m):
                        raise ValueError(f"a message of {len(m.value)} bytes exceeds a batch")
            if batch.record_count():
                futures.append(await producer.send_batch(batch, topic, partition=partition))
        await asyncio.gather(*futures)


def _append(batch: Any, m: OutMessage) -> bool:
    """Add ``m`` to an aiokafka batch; False when the batch has no room left."""
    headers = list(m.headers) if m.headers else []
    return (
        batch.append(key=m.key, value=m.value, timestamp=m.timestamp_ms, headers=headers)
        is not None
    )
