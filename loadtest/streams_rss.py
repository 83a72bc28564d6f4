"""A live worker's peak RSS while it serves N distinct streams (a figure, printed as JSON).

``python -m statecast.loadtest.streams_rss --start-stack --streams 1000000`` produces one
sensor event for each of N distinct streams (keyed, so spread over the topic's 4 partitions;
4 events for a tenth of them, so cached streams are read again), runs one
``statecast worker`` on the ``sensor_lstm`` route until it is idle, and prints its peak RSS
(VmHWM, sampled every 0.2 s), the records it handled and the time it took. The in-process
state cache is bounded by ``STATECAST_STATE_CACHE_BYTES`` (``--cache-bytes``), so the peak
stays flat however many streams pass; docs/hostile-input.md has the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from pathlib import Path

import orjson
from aiokafka import AIOKafkaProducer

from statecast.loadtest.soak import _run_worker, _stop_line
from statecast.loadtest.topics import ensure_topics
from statecast.worker.devstack import Service, free_port
from statecast.worker.routing import parse_routes
from statecast.worker.settings import KafkaSettings, Settings
from statecast.worker.state.redis_conn import RedisSettings


async def _produce(bootstrap: str, topic: str, streams: int, features: list[str]) -> int:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks=1, linger_ms=20)
    await producer.start()
    sent = 0
    try:
        values = orjson.dumps({f: 1.0 for f in features})
        pending = []
        for rnd in range(4):
            # Every stream once, then a tenth of them three more times (cache hits, misses).
            for i in range(streams if rnd == 0 else streams // 10):
                sid = f"meter-{i:07d}"
                ts = 1_700_000_000_000 + rnd * 1_800_000
                body = b'{"stream":"%b","ts":%d,"values":%b}' % (sid.encode(), ts, values)
                pending.append(await producer.send(topic, body, key=sid.encode()))
                sent += 1
                if len(pending) >= 20_000:
                    await asyncio.gather(*pending)
                    pending = []
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return sent


async def measure(
    bootstrap: str,
    redis_url: str,
    streams: int,
    cache_bytes: int,
    workdir: Path,
    max_batch: int = Settings.max_batch_records,
) -> dict[str, object]:
    run_id = f"{os.getpid()}-{int(time.time())}"
    topic, preds, dlq = f"rss-sensor-{run_id}", f"rss-preds-{run_id}", f"rss-dlq-{run_id}"
    await ensure_topics(bootstrap, {topic: 4, preds: 4, dlq: 1})
    settings = Settings(
        kafka=KafkaSettings(
            bootstrap_servers=bootstrap, group_id=f"rss-{run_id}", session_timeout_ms=3000
        ),
        redis=RedisSettings(url=redis_url),
        routes=parse_routes(f"{topic}=sensor_lstm"),
        predictions_topic=preds,
        dlq_topic=dlq,
        state_prefix=f"rss-{run_id}",
        state_cache_bytes=cache_bytes,
        max_batch_records=max_batch,
        http_port=0,
        device="cpu",
    )
    t0 = time.monotonic()
    sent = await _produce(bootstrap, topic, streams, ["demand", "temperature", "workday"])
    produce_s = time.monotonic() - t0
    env = {k: v for k, v in os.environ.items() if not k.startswith("STATECAST_")}
    env.update(settings.to_env())
    run = await _run_worker(env, workdir / "worker.log", "rss", None, 20.0)
    return {
        "streams": streams,
        "records": sent,
        "cache_bytes_bound": cache_bytes,
        "max_batch": max_batch,
        "worker_rc": run.returncode,
        "worker_peak_rss_mib": run.peak_rss_mib,
        "worker_seconds": round(run.seconds, 1),
        "produce_seconds": round(produce_s, 1),
        "stopped": _stop_line(run.log),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap")
    parser.add_argument("--redis-url")
    parser.add_argument("--start-stack", action="store_true")
    parser.add_argument("--streams", type=int, default=1_000_000)
    parser.add_argument("--cache-bytes", type=int, default=Settings.state_cache_bytes)
    parser.add_argument("--max-batch", type=int, default=Settings.max_batch_records)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="streams-rss-"))
    services: list[Service] = []
    try:
        if args.start_stack:
            for name in ("kafka", "redis"):
                (workdir / name).mkdir()
                svc = Service(name, free_port(), workdir / name)
                svc.start(timeout=30, detach=False)
                services.append(svc)
            bootstrap = f"{services[0].host}:{services[0].port}"
            redis_url = f"redis://{services[1].host}:{services[1].port}/0"
        elif args.bootstrap and args.redis_url:
            bootstrap, redis_url = args.bootstrap, args.redis_url
        else:
            parser.error("give --bootstrap and --redis-url, or --start-stack")
        report = asyncio.run(
            measure(bootstrap, redis_url, args.streams, args.cache_bytes, workdir, args.max_batch)
        )
    finally:
        for svc in services:
            svc.stop()
    print(json.dumps(report))
    return 0 if report["worker_rc"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
