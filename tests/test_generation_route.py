"""The generate route end to end: Kafka -> worker (GenerateCodec) -> Redis -> predictions.

A tiny random-weight char model (the shipped graph's shape, 16 hidden units) serves a
``generate`` route. Checked against an offline run of the same ONNX step:

- the top-k next bytes of every record are those after the stream's real text so far;
- the stored state in Redis is the state after the real text only (the continuation ran
  on a copy);
- a second worker (new group, new state prefix) replaying the same records publishes the
  very same continuations for the same record ids (sampling is seeded by the record id);
- bad records go to the dead-letter topic with their reasons.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import orjson
import pytest
import redis.asyncio as aioredis
import torch
from prometheus_client import CollectorRegistry

from statecast.contract.manifest import upsert_entry
from statecast.export import charrnn_export as ce
from statecast.export.step_export import export_step_model, manifest_entry
from statecast.models.charrnn import CharConfig, CharLSTM, CharStep, zero_state
from statecast.worker.generation import decode, probabilities, rng_for, sample, seed_for
from statecast.worker.loop import Worker
from statecast.worker.routing import Route
from statecast.worker.state.codec import StateCodec
from statecast.worker.state.store import state_key
from tests.fixtures.kafka import consume_all, create_topic, produce
from tests.fixtures.tiny_models import TinyModel, worker_settings

pytestmark = pytest.mark.integration

HIDDEN = 16
OPTIONS = {"top_k": "3", "max_new_chars": "24", "temperature": "1.0"}
MESSAGES = ["The movie was ", "not what I expected", ", but the ending ", "é!", "I liked it"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    root = tmp_path_factory.mktemp("generate-e2e")
    torch.manual_seed(11)
    model = CharLSTM(CharConfig(embed_dim=8, hidden=HIDDEN, ngram_buckets=97, ngram_dim=4)).eval()
    spec = ce.build_spec(model)
    path = root / "models" / "onnx" / "char_lstm.onnx"
    example = (
        torch.ones(2, 8, dtype=torch.int64),
        torch.tensor([8, 3]),
        *zero_state(model.config, 2),
    )
    export_step_model(CharStep(model), spec, path, inputs=example)
    manifest = root / "models" / "manifest.json"
    upsert_entry(manifest_entry(spec, path, {}, root=root), manifest)
    return TinyModel(spec, manifest, root, path)


State = dict[str, Any]


class Offline:
    """The step model run by hand over one stream's texts."""

    def __init__(self, path: Path) -> None:
        self.sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self.names = [o.name for o in self.sess.get_outputs()]

    @staticmethod
    def zero() -> State:
        return {
            n: np.zeros((1, 1, d), np.float32)
            for n, d in (("h", HIDDEN), ("c", HIDDEN), ("ctx", 4))
        }

    def run(self, x: Any, st: State) -> tuple[Any, State]:
        feeds = {"x": x, "lengths": np.full(x.shape[0], x.shape[1], np.int64)}
        feeds.update({f"state_in.{n}": v for n, v in st.items()})
        out = dict(zip(self.names, self.sess.run(self.names, feeds), strict=True))
        return out["logits"], {n: out[f"state_out.{n}"] for n in st}

    def advance(self, text: str, st: State) -> tuple[Any, State]:
        data = np.frombuffer(text.encode(), np.uint8).astype(np.int64)
        logits = None
        for i in range(0, len(data), 256):
            logits, st = self.run(data[None, i : i + 256], st)
        return logits, st

    def continuation(self, record_id: str, logits: Any, st: State) -> str:
        """What the codec must publish, computed with one row alone."""
        rng = rng_for(seed_for(record_id))
        first = sample(probabilities(logits, 1.0, 3), np.array([rng.random()]))

        def step(tokens: Any, cur: Any) -> tuple[Any, State]:
            return self.run(tokens.reshape(-1, 1), dict(cur))

        rest = decode(step, first, st, 23, temperature=1.0, top_k=3, seeds=[rng], stop_token=10)
        row = [int(first[0]), *rest[0].tolist()]
        if 10 in row:
            row = row[: row.index(10)]
        return bytes(row).decode("utf-8", "ignore")


async def run_worker(
    tiny: TinyModel,
    bootstrap: str,
    redis_url: str,
    topic: str,
    preds: str,
    dlq: str,
    group: str,
    prefix: str,
    total: int,
) -> None:
    settings = worker_settings(
        bootstrap=bootstrap,
        redis_url=redis_url,
        model=tiny,
        routes=[Route(topic, "char_lstm", OPTIONS)],
        predictions=preds,
        dlq=dlq,
        group=group,
        prefix=prefix,
        max_batch_records=9,  # several batches: state goes through the cache and Redis
    )
    stats = await Worker(settings, CollectorRegistry()).run(max_records=total, idle_timeout_s=20)
    assert stats.records == total


async def test_generate_route_through_kafka_and_redis(
    tiny: TinyModel, kafka_bootstrap: str, redis_url: str, unique: Callable[[str], str]
) -> None:
    topic, dlq = unique("gen"), unique("dlq")
    preds1, preds2 = unique("predictions1"), unique("predictions2")
    for t in (topic, dlq, preds1, preds2, unique("dlq2")):
        await create_topic(kafka_bootstrap, t, partitions=3)
    rng = np.random.default_rng(5)
    streams = {
        f"doc-{i}": [str(m) for m in rng.choice(MESSAGES, size=int(rng.integers(1, 4)))]
        for i in range(10)
    }
    records: list[tuple[bytes | None, bytes]] = []
    for k in range(3):
        for stream, msgs in streams.items():
            if k < len(msgs):
                records.append(
                    (
                        stream.encode(),
                        orjson.dumps({"stream": stream, "ts": 1000 + k, "text": msgs[k]}),
                    )
                )
    bad = [
        (b"doc-x", b"not json"),
        (b"doc-x", orjson.dumps({"stream": "doc-x", "ts": 1, "text": ""})),
        (b"doc-y", orjson.dumps({"stream": "doc-x", "ts": 1, "text": "hi"})),
    ]
    await produce(kafka_bootstrap, topic, records[:4] + bad + records[4:])
    total, good = len(records) + len(bad), len(records)

    prefix = unique("state1")
    await run_worker(
        tiny, kafka_bootstrap, redis_url, topic, preds1, dlq, unique("g1"), prefix, total
    )
    first = [
        orjson.loads(r.value) for r in await consume_all(kafka_bootstrap, preds1, expected=good)
    ]
    assert len(first) == good

    offline = Offline(tiny.onnx_path)
    by_stream: dict[str, list[dict[str, Any]]] = {}
    for p in first:
        by_stream.setdefault(p["stream"], []).append(p)
    codec = StateCodec(tiny.spec.states, tiny.spec.state_version)
    client = aioredis.Redis.from_url(redis_url)
    try:
        for stream, msgs in streams.items():
            rows = sorted(by_stream[stream], key=lambda p: p["ts"])
            assert len(rows) == len(msgs)
            st = offline.zero()
            for msg, p in zip(msgs, rows, strict=True):
                logits, st = offline.advance(msg, st)
                probs = probabilities(logits, 1.0, 0)[0]
                want = np.argsort(-probs, kind="stable")[:3]
                assert [n["byte"] for n in p["prediction"]["next"]] == want.tolist()
                np.testing.assert_allclose(
                    [n["p"] for n in p["prediction"]["next"]], probs[want], atol=1e-4
                )
                assert p["prediction"]["continuation"] == offline.continuation(p["id"], logits, st)
            raw = await client.get(state_key(prefix, "char_lstm", tiny.spec.state_version, stream))
            assert isinstance(raw, bytes)
            stored = codec.decode(raw).state
            assert stored is not None
            # The state after the real text only: the continuation did not move it.
            for name, value in st.items():
                np.testing.assert_allclose(stored.tensors[name], value[:, 0, :], atol=1e-5)
    finally:
        await client.aclose()
    # Sampling is not trivially greedy: continuations differ across records.
    assert len({p["prediction"]["continuation"] for p in first}) > 5

    # A replay (new group and state prefix) publishes the same continuations per record id.
    await run_worker(
        tiny,
        kafka_bootstrap,
        redis_url,
        topic,
        preds2,
        unique("dlq2"),
        unique("g2"),
        unique("state2"),
        total,
    )
    second = [
        orjson.loads(r.value) for r in await consume_all(kafka_bootstrap, preds2, expected=good)
    ]
    assert {p["id"]: p["prediction"] for p in second} == {p["id"]: p["prediction"] for p in first}

    dead = await consume_all(kafka_bootstrap, dlq, expected=len(bad))
    reasons = sorted(dict(r.headers)["statecast.reason"].decode() for r in dead)
    assert reasons == ["empty", "key_mismatch", "not_json"]
