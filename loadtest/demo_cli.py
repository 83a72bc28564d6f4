"""``statecast demo``: prove the embedded stack end to end.

Placeholder until the worker lands: create a topic, produce, consume through a consumer
group with manual commits, and round-trip a value through Redis, printing each step.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid

import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from worker.stack import StackConfig
from worker.stack_cli import DEFAULT_DIR


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--events", type=int, default=1000)


async def _smoke(config: StackConfig, events: int) -> None:
    topic = f"demo-smoke-{uuid.uuid4().hex[:6]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=config.bootstrap_servers)
    await admin.start()
    await admin.create_topics([NewTopic(topic, num_partitions=4, replication_factor=1)])
    await admin.close()
    print(f"created topic {topic} (4 partitions) on {config.bootstrap_servers}")

    producer = AIOKafkaProducer(bootstrap_servers=config.bootstrap_servers, linger_ms=5)
    await producer.start()
    futures = [
        await producer.send(topic, f'{{"n": {i}}}'.encode(), key=f"s{i % 16}".encode())
        for i in range(events)
    ]
    await asyncio.gather(*futures)
    await producer.stop()
    print(f"produced {events} events over 16 stream keys")

    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=config.bootstrap_servers,
        group_id=f"{topic}-group",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=6000,
    )
    start = time.monotonic()
    await consumer.start()
    seen = 0
    async with asyncio.timeout(60):
        while seen < events:
            batch = await consumer.getmany(timeout_ms=500, max_records=500)
            seen += sum(len(r) for r in batch.values())
    await consumer.commit()
    await consumer.stop()
    print(f"consumed {seen} events through a consumer group in {time.monotonic() - start:.1f}s")

    client = aioredis.from_url(config.redis_url)
    await client.set(f"{topic}:probe", b"ok", ex=60)
    value = await client.get(f"{topic}:probe")
    await client.aclose()
    print(f"redis {config.redis_url}: wrote and read back {value!r}")


def run(args: argparse.Namespace) -> int:
    config = StackConfig.from_env(DEFAULT_DIR)
    asyncio.run(_smoke(config, args.events))
    print("stack works end to end")
    return 0
