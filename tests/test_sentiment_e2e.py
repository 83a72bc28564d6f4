"""Text routes end to end: Kafka -> worker (TextCodec) -> Redis state -> predictions.

One worker serves two routes of the same sentiment step model (the version-2 layout: LSTM
plus running n-gram term, tiny random weights, the shipped tokenizer, 8-token chunks so most
messages take several steps): one topic per
message, one per conversation. The reference is the same ONNX step run offline over each
conversation, chunk by chunk: from a zero state per message, or carrying the state
across the conversation's messages.
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Callable
from typing import Any

import numpy as np
import onnxruntime as ort
import orjson
import pytest
import redis.asyncio as aioredis
import torch
from prometheus_client import CollectorRegistry

from statecast.contract.manifest import Artefact, sha256_file, upsert_entry
from statecast.export import sentiment_export as se
from statecast.export.step_export import export_step_model, manifest_entry
from statecast.loadtest.text_streams import Conversation, event_bytes, round_robin
from statecast.models.sentiment import (
    NGRAM_STATE,
    HybridConfig,
    HybridStep,
    SentimentConfig,
    SentimentHybrid,
    zero_state,
)
from statecast.models.sentiment_data import TOKENIZER_PATH, load_tokenizer
from statecast.worker.loop import Worker
from statecast.worker.routing import Route
from statecast.worker.state.codec import StateCodec
from statecast.worker.state.store import state_key
from tests.fixtures.kafka import consume_all, create_topic, produce
from tests.fixtures.tiny_models import TinyModel, worker_settings

pytestmark = pytest.mark.integration

CHUNK = 8
SENTENCES = [
    "What a wonderful film.",
    "The acting was wooden and the plot made no sense whatsoever, sadly.",
    "I laughed.",
    "Two hours of my life I will never get back, and the popcorn was stale too.",
    "A masterpiece of quiet, patient storytelling with a score to match.",
    "Meh!",
    "The second half drags, but the ending redeems almost everything before it.",
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    """A random-weight sentiment step model registered in a manifest of its own."""
    root = tmp_path_factory.mktemp("sentiment-e2e")
    (root / "models" / "tokenizer").mkdir(parents=True)
    shutil.copy(TOKENIZER_PATH, root / "models" / "tokenizer" / "sentiment_lstm.json")
    torch.manual_seed(0)
    config = SentimentConfig(vocab_size=load_tokenizer().get_vocab_size(), embed_dim=8, hidden=12)
    model = SentimentHybrid(HybridConfig(lstm=config, buckets=1009)).eval()
    with torch.no_grad():  # n-gram weights that move the prediction, so the test sees them
        for table in (model.ngrams.uni, model.ngrams.bi, model.ngrams.tri):
            table.normal_()
    spec = se.build_spec(model)
    spec = dataclasses.replace(spec, preprocess={**spec.preprocess, "max_chunk_tokens": CHUNK})
    path = root / "models" / "onnx" / "sentiment_lstm.onnx"
    example = (
        torch.ones(2, 8, dtype=torch.int64),
        torch.tensor([8, 3]),
        *zero_state(config, 2),
        torch.zeros(1, 2, NGRAM_STATE),
    )
    export_step_model(HybridStep(model), spec, path, inputs=example)
    tok = root / "models" / "tokenizer" / "sentiment_lstm.json"
    entry = manifest_entry(spec, path, {}, root=root)
    entry = dataclasses.replace(
        entry,
        artefacts={"tokenizer": Artefact("models/tokenizer/sentiment_lstm.json", sha256_file(tok))},
    )
    manifest = root / "models" / "manifest.json"
    upsert_entry(entry, manifest)
    return TinyModel(spec, manifest, root, path)


def conversations(prefix: str, n: int) -> list[Conversation]:
    rng = np.random.default_rng(len(prefix) + n)
    return [
        Conversation(
            stream=f"{prefix}-{i}",
            label=0,
            messages=tuple(str(s) for s in rng.choice(SENTENCES, size=int(rng.integers(1, 5)))),
        )
        for i in range(n)
    ]


def offline(
    model: TinyModel, conv: Conversation, carry: bool
) -> tuple[list[float], dict[str, Any]]:
    """Predictions after each message, and the final states, running the step per chunk."""
    sess = ort.InferenceSession(str(model.onnx_path), providers=["CPUExecutionProvider"])
    tok = load_tokenizer()
    states = model.spec.states
    names = ["positive"] + [s.output_name for s in states]

    def zeros() -> dict[str, Any]:
        return {s.input_name: np.zeros((s.layers, 1, s.hidden), np.float32) for s in states}

    state = zeros()
    preds: list[float] = []
    for text in conv.messages:
        if not carry:
            state = zeros()
        ids = np.asarray(tok.encode(text).ids, np.int64)
        for start in range(0, len(ids), CHUNK):
            chunk = ids[start : start + CHUNK][None, :]
            feeds = {"x": chunk, "lengths": np.array([chunk.shape[1]], np.int64)}
            p, *new = sess.run(names, {**feeds, **state})
            state = {s.input_name: v for s, v in zip(states, new, strict=True)}
        preds.append(float(p[0, 0]))
    return preds, {s.name: state[s.input_name][:, 0, :] for s in states}


def records_of(convs: list[Conversation]) -> list[tuple[bytes, bytes]]:
    return [
        (conv.stream.encode(), event_bytes(conv.stream, 1_700_000_000_000 + k, conv.messages[k]))
        for conv, k in round_robin(convs)
    ]


async def test_message_and_conversation_modes_through_kafka_and_redis(
    tiny: TinyModel, kafka_bootstrap: str, redis_url: str, unique: Callable[[str], str]
) -> None:
    msg_topic, conv_topic = unique("text-msg"), unique("text-conv")
    preds_topic, dlq_topic = unique("predictions"), unique("dlq")
    for t in (msg_topic, conv_topic, preds_topic, dlq_topic):
        await create_topic(kafka_bootstrap, t, partitions=3)
    per_message, per_conversation = conversations("m", 12), conversations("c", 12)
    bad = [
        (b"m-bad", b"this is not json"),
        (b"m-bad", event_bytes("m-bad", 1, "")),
        (b"m-bad", orjson.dumps({"stream": "m-bad", "ts": 1, "text": 5})),
    ]
    msg_records = records_of(per_message)
    await produce(kafka_bootstrap, msg_topic, msg_records[:5] + bad + msg_records[5:])
    conv_records = records_of(per_conversation)
    await produce(kafka_bootstrap, conv_topic, conv_records)
    total = len(msg_records) + len(bad) + len(conv_records)
    good = len(msg_records) + len(conv_records)

    settings = worker_settings(
        bootstrap=kafka_bootstrap,
        redis_url=redis_url,
        model=tiny,
        routes=[
            Route(msg_topic, "sentiment_lstm", {"mode": "message"}),
            Route(conv_topic, "sentiment_lstm", {"mode": "conversation"}),
        ],
        predictions=preds_topic,
        dlq=dlq_topic,
        group=unique("group"),
        prefix=unique("state"),
        max_batch_records=7,  # many batches: conversations carry state through cache/Redis
    )
    stats = await Worker(settings, CollectorRegistry()).run(max_records=total, idle_timeout_s=20)
    assert stats.records == total
    assert stats.predictions == good

    got = await consume_all(kafka_bootstrap, preds_topic, expected=good)
    assert len(got) == good
    by_stream: dict[str, list[dict[str, Any]]] = {}
    for r in got:
        p = orjson.loads(r.value)
        by_stream.setdefault(p["stream"], []).append(p)
    for rows in by_stream.values():
        rows.sort(key=lambda p: int(p["id"].rsplit("/", 1)[1]))
    assert set(by_stream) == {c.stream for c in per_message + per_conversation}

    codec = StateCodec(tiny.spec.states, tiny.spec.state_version)
    client = aioredis.Redis.from_url(redis_url)
    try:
        for conv, carry in [(c, False) for c in per_message] + [
            (c, True) for c in per_conversation
        ]:
            want, want_states = offline(tiny, conv, carry)
            rows = by_stream[conv.stream]
            assert [p["ts"] for p in rows] == [1_700_000_000_000 + k for k in range(len(want))]
            np.testing.assert_allclose([p["prediction"]["positive"] for p in rows], want, atol=1e-5)
            if carry:
                key = state_key(
                    settings.state_prefix, "sentiment_lstm", tiny.spec.state_version, conv.stream
                )
                raw = await client.get(key)
                assert isinstance(raw, bytes)
                stored = codec.decode(raw).state
                assert stored is not None
                for name in ("h", "ngram"):
                    np.testing.assert_allclose(
                        stored.tensors[name], want_states[name], rtol=1e-6, atol=1e-5
                    )
    finally:
        await client.aclose()
    # The modes really differ: a conversation's later messages depend on its earlier ones.
    multi = next(c for c in per_conversation if len(c.messages) > 1)
    assert offline(tiny, multi, True)[0][1:] != offline(tiny, multi, False)[0][1:]

    dead = await consume_all(kafka_bootstrap, dlq_topic, expected=len(bad))
    reasons = sorted(dict(r.headers)["statecast.reason"].decode() for r in dead)
    assert reasons == ["empty", "not_json", "wrong_type"]
    assert sorted(r.value for r in dead) == sorted(v for _, v in bad)
