"""The naive reference worker of the benchmark: everything once per event.

Per record: parse the JSON, one Redis GET of the stream's state, one ONNX Runtime step at
batch 1, one Redis SET, one producer ``send``; offsets are committed after each polled
batch once its sends are acknowledged. This is how a stateful model is usually first put
on a stream, and the yardstick statecast's batched design is compared against.

Run by the benchmark as its own process (``python -m statecast.loadtest.naive ...``) so it can be
pinned to one core; prints one JSON line: events, seconds since partition assignment, CPU
seconds of the process over the same window.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.structs import TopicPartition

from statecast.contract.calendar import derive
from statecast.contract.spec import ModelSpec
from statecast.worker.devstack import TANSU_SESSION_TIMEOUT_MS
from statecast.worker.inference import build_session


class _Assigned(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self) -> None:
        self.at: float | None = None
        self.cpu_at: float | None = None

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        return None

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        if assigned and self.at is None:
            self.at = time.monotonic()
            self.cpu_at = time.process_time()


class NaiveWorker:
    def __init__(self, onnx_path: Path, redis_url: str, key_prefix: str) -> None:
        self._session = build_session(onnx_path)
        meta: Any = self._session.get_modelmeta()
        self.spec = ModelSpec.from_metadata(dict(meta.custom_metadata_map))
        self._features = self.spec.features
        # Calendar columns the codec derives from ts (day-ahead sensor models).
        self._derived = tuple(self.spec.preprocess.get("derived_features", ()))
        self._outputs = [o.name for o in self.spec.outputs]
        self._state_out = [s.output_name for s in self.spec.states]
        self._redis = aioredis.from_url(redis_url)
        self._prefix = key_prefix

    async def close(self) -> None:
        await self._redis.aclose()

    def _zero_state(self) -> dict[str, np.ndarray[Any, Any]]:
        return {
            s.input_name: np.zeros((s.layers, 1, s.hidden), dtype=np.float32)
            for s in self.spec.states
        }

    async def handle(self, value: bytes, pred_id: str) -> bytes:
        event = orjson.loads(value)
        stream = event["stream"]
        vals = event["values"]
        key = f"{self._prefix}:{stream}"
        raw: Any = await self._redis.get(key)
        feeds = self._zero_state()
        if raw is not None:
            flat = np.frombuffer(raw, dtype=np.float32)
            pos = 0
            for s in self.spec.states:
                n = s.layers * s.hidden
                feeds[s.input_name] = flat[pos : pos + n].reshape(s.layers, 1, s.hidden)
                pos += n
        row = [float(vals[f]) for f in self._features]
        if self._derived:
            row += derive(self._derived, [event["ts"]])[0].tolist()
        feeds["x"] = np.array([row], dtype=np.float32)
        results = self._session.run(None, feeds)
        named = dict(zip([o.name for o in self._session.get_outputs()], results, strict=True))
        state = b"".join(named[name].tobytes() for name in self._state_out)
        await self._redis.set(key, state, ex=3600)
        prediction = {name: named[name].reshape(-1).tolist() for name in self._outputs}
        return orjson.dumps(
            {
                "id": pred_id,
                "stream": stream,
                "model": self.spec.ref,
                "ts": event["ts"],
                "prediction": prediction,
            }
        )


async def run_naive(args: argparse.Namespace) -> dict[str, Any]:
    worker = NaiveWorker(Path(args.onnx), args.redis_url, args.key_prefix)
    listener = _Assigned()
    consumer = AIOKafkaConsumer(
        bootstrap_servers=args.bootstrap,
        group_id=args.group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=TANSU_SESSION_TIMEOUT_MS,
    )
    consumer.subscribe([args.topic], listener=listener)
    producer = AIOKafkaProducer(
        bootstrap_servers=args.bootstrap, acks="all", enable_idempotence=False
    )
    await producer.start()
    await consumer.start()
    events = 0
    last_at = time.monotonic()
    try:
        while events < args.max_events:
            if listener.at is not None and time.monotonic() - listener.at > args.max_seconds:
                break
            batch = await consumer.getmany(timeout_ms=200, max_records=500)
            if not batch:
                if listener.at is not None and time.monotonic() - last_at > args.idle_s:
                    break
                continue
            futures = []
            for tp, records in batch.items():
                for rec in records:
                    out = await worker.handle(rec.value, f"{tp.topic}/{tp.partition}/{rec.offset}")
                    futures.append(await producer.send(args.predictions_topic, out, key=rec.key))
                    events += 1
            await asyncio.gather(*futures)
            await consumer.commit({tp: recs[-1].offset + 1 for tp, recs in batch.items()})
            last_at = time.monotonic()
    finally:
        cpu_end = time.process_time()
        await consumer.stop()
        await producer.stop()
        await worker.close()
    start = listener.at if listener.at is not None else last_at
    seconds = max(last_at - start, 1e-9)
    return {
        "events": events,
        "seconds": round(seconds, 3),
        "eps": round(events / seconds, 1),
        "cpu_s": round(cpu_end - (listener.cpu_at or 0.0), 3),
    }


def main() -> None:
    p = argparse.ArgumentParser(description="naive per-event reference worker")
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--redis-url", required=True)
    p.add_argument("--topic", required=True)
    p.add_argument("--group", required=True)
    p.add_argument("--predictions-topic", required=True)
    p.add_argument("--onnx", required=True)
    p.add_argument("--key-prefix", default="naive")
    p.add_argument("--max-events", type=int, default=10_000)
    p.add_argument("--max-seconds", type=float, default=10.0)
    p.add_argument("--idle-s", type=float, default=3.0)
    args = p.parse_args()
    print(orjson.dumps(asyncio.run(run_naive(args))).decode(), flush=True)


if __name__ == "__main__":
    main()
