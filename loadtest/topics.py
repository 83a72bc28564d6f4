"""Create the topics a replay needs and learn how many partitions each one has."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping

from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError


async def ensure_topics(bootstrap: str, wanted: Mapping[str, int]) -> dict[str, int]:
    """Create each missing topic with the given partition count; return the actual counts
    (an existing topic keeps the count it has)."""
    existing = await partition_counts(bootstrap, list(wanted), wait_s=0.0)
    missing = [name for name in wanted if name not in existing]
    if missing:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(
                    [NewTopic(n, num_partitions=wanted[n], replication_factor=1) for n in missing]
                )
        finally:
            await admin.close()
    counts = await partition_counts(bootstrap, list(wanted), wait_s=10.0)
    absent = [n for n in wanted if n not in counts]
    if absent:
        raise RuntimeError(f"topics {absent} did not appear on {bootstrap}")
    return counts


async def partition_counts(bootstrap: str, topics: list[str], wait_s: float) -> dict[str, int]:
    """Partitions per topic for those of ``topics`` that exist (waiting up to ``wait_s``)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await consumer.start()
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        while True:
            await consumer.topics()
            counts = {}
            for t in topics:
                parts = consumer.partitions_for_topic(t)
                if parts:
                    counts[t] = len(parts)
            if len(counts) == len(topics) or loop.time() >= deadline:
                return counts
            await asyncio.sleep(0.2)
    finally:
        await consumer.stop()
