"""Create the topics a replay needs and learn how many partitions each one has.

Partition counts come from a metadata request that names the topics: by the Kafka
protocol a metadata request naming none lists no topics (Tansu lists them all anyway, so
reading a consumer's first metadata response worked here and nowhere stricter).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence

from aiokafka.admin import AIOKafkaAdminClient, NewTopic

# Kafka error codes a by-name metadata or create request may answer per topic.
_NONE = 0
_UNKNOWN_TOPIC = 3
_LEADER_NOT_AVAILABLE = 5  # a topic just created, its partitions not yet led
_TOPIC_ALREADY_EXISTS = 36


async def ensure_topics(bootstrap: str, wanted: Mapping[str, int]) -> dict[str, int]:
    """Create each missing topic with the given partition count; return the actual counts
    (an existing topic keeps the count it has)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        # Create first, then describe: describing a missing topic by name could have a
        # broker with auto-creation make it with its default partition count.
        response = await admin.create_topics(
            [NewTopic(n, num_partitions=p, replication_factor=1) for n, p in wanted.items()]
        )
        for topic_error in response.to_object().get("topic_errors", []):
            code = topic_error.get("error_code", _NONE)
            if code not in (_NONE, _TOPIC_ALREADY_EXISTS):
                raise RuntimeError(f"creating topic {topic_error.get('topic')!r}: error {code}")
        counts = await _counts_by_name(admin, list(wanted), wait_s=10.0)
    finally:
        await admin.close()
    absent = [n for n in wanted if n not in counts]
    if absent:
        raise RuntimeError(f"topics {absent} did not appear on {bootstrap}")
    return counts


async def partition_counts(bootstrap: str, topics: Sequence[str], wait_s: float) -> dict[str, int]:
    """Partitions per topic for those of ``topics`` that exist (waiting up to ``wait_s``)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return await _counts_by_name(admin, topics, wait_s)
    finally:
        await admin.close()


async def _counts_by_name(
    admin: AIOKafkaAdminClient, topics: Sequence[str], wait_s: float
) -> dict[str, int]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    while True:
        counts = {}
        for meta in await admin.describe_topics(list(topics)):
            if meta.get("error_code", _NONE) == _NONE and meta.get("partitions"):
                counts[str(meta["topic"])] = len(meta["partitions"])
        if len(counts) == len(set(topics)) or loop.time() >= deadline:
            return counts
        await asyncio.sleep(0.2)
