"""GenerateCodec without a broker: budgets, chunking, top-k, and generation through the waves
(run_waves with a real ONNX step of a tiny random char model)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import orjson
import pytest
import torch

from statecast.export import charrnn_export as ce
from statecast.export.step_export import export_step_model
from statecast.models.charrnn import CharConfig, CharLSTM, CharStep, zero_state
from statecast.worker.batching import StreamWork, run_waves
from statecast.worker.codecs.base import Decoded, RawRecord, Rejected, generates
from statecast.worker.codecs.generate import GenerateCodec, GenerateCodecError


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    torch.manual_seed(3)
    model = CharLSTM(CharConfig(embed_dim=8, hidden=16, ngram_buckets=97, ngram_dim=4)).eval()
    spec = ce.build_spec(model)
    path = tmp_path_factory.mktemp("char") / "char_lstm.onnx"
    example = (
        torch.ones(2, 8, dtype=torch.int64),
        torch.tensor([8, 3]),
        *zero_state(model.config, 2),
    )
    export_step_model(CharStep(model), spec, path, inputs=example)
    return spec, path


class Session:
    def __init__(self, path: Path) -> None:
        self.sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self.names = [o.name for o in self.sess.get_outputs()]
        self.calls: list[int] = []

    def run(self, feeds: Any) -> dict[str, Any]:
        self.calls.append(int(np.asarray(feeds["x"]).shape[0]))
        return dict(zip(self.names, self.sess.run(self.names, dict(feeds)), strict=True))


def rec(offset: int, value: bytes | None, key: bytes | None = b"doc-1") -> RawRecord:
    return RawRecord("gen", 0, offset, 1_700_000_000_000, key, value)


def ev(stream: str, text: Any, **extra: Any) -> bytes:
    return orjson.dumps({"stream": stream, "ts": 5, "text": text, **extra})


def test_decode_budgets_and_chunks(tiny: tuple[Any, Path]) -> None:
    spec, path = tiny
    codec = GenerateCodec(spec, {"max_text_bytes": "300", "max_bytes": "2000"}, path.parent)
    out = codec.decode(
        [
            rec(0, ev("doc-1", "é" * 200)),  # 400 UTF-8 bytes > 300
            rec(1, ev("doc-1", "x" * 299 + "\n")),  # 300 bytes: two chunks of 256 + 44
            rec(2, b"{"),
            rec(3, ev("doc-1", "")),
            rec(4, ev("doc-1", ["a"])),
            rec(5, ev("doc-2", "hi")),  # the key names doc-1
            rec(6, b"x" * 2001),
            rec(7, ev("doc-1", "ok", ts=1e30)),
        ]
    )
    reasons = [o.reason if isinstance(o, Rejected) else "ok" for o in out]
    assert reasons == [
        "too_large",
        "ok",
        "not_json",
        "empty",
        "wrong_type",
        "key_mismatch",
        "too_large",
        "ts_out_of_range",
    ]
    dec = out[1]
    assert isinstance(dec, Decoded)
    assert [int(s["lengths"]) for s in dec.steps] == [256, 44]
    assert bytes(np.concatenate([s["x"] for s in dec.steps]).astype(np.uint8)) == b"x" * 299 + b"\n"


@pytest.mark.parametrize(
    "options",
    [{"top_k": "300"}, {"max_new_chars": "5000"}, {"temperature": "-1"}, {"colour": "red"}],
)
def test_bad_route_options_are_refused(tiny: tuple[Any, Path], options: dict[str, str]) -> None:
    spec, path = tiny
    with pytest.raises(GenerateCodecError):
        GenerateCodec(spec, options, path.parent)


def test_top_k_are_the_most_likely_bytes(tiny: tuple[Any, Path]) -> None:
    spec, path = tiny
    codec = GenerateCodec(spec, {"top_k": "4"}, path.parent)
    logits = np.log(np.array([[0.1, 0.5, 0.05, 0.3, 0.05] + [0.0] * 251]) + 1e-12)
    (pred,) = codec.predictions({"logits": logits})
    assert [n["byte"] for n in pred["next"]] == [1, 3, 0, 2]
    assert pred["next"][0]["p"] == pytest.approx(0.5, abs=1e-4)


def test_generation_runs_batched_from_state_copies(tiny: tuple[Any, Path]) -> None:
    """Through run_waves: every record gets a continuation; generation calls the step once
    per byte for all records together; the final (stored) states equal the states after
    the real text only; the same record alone gives the same continuation."""
    spec, path = tiny
    codec = GenerateCodec(spec, {"max_new_chars": "12", "temperature": "1.0"}, path.parent)
    assert generates(codec)
    texts = {"a": ["the movie ", "was"], "b": ["great fun"], "c": ["x" * 300]}
    works, offset = [], 0
    for stream, msgs in texts.items():
        w = StreamWork(f"k:{stream}", stream, 0)
        for m in msgs:
            raw = rec(offset, ev(stream, m), key=stream.encode())
            (d,) = codec.decode([raw])
            assert isinstance(d, Decoded)
            w.records.append((raw, d))
            offset += 1
        works.append(w)
    session = Session(path)
    outcome = run_waves(session, codec, spec.states, works)
    preds = {raw.offset: p for raw, _, p in outcome.predictions}
    assert len(preds) == 4
    for p in preds.values():
        assert len(p["next"]) == 5
        assert 1 <= p["continuation_bytes"] <= 12
        assert "\n" not in p["continuation"]
    waves = outcome.waves
    # Generation: one call per generated byte beyond the first, with all 4 records at
    # first (rows leave only when they emit a newline).
    gen_calls = session.calls[waves:]
    assert 1 <= len(gen_calls) <= 11
    assert gen_calls[0] == 4

    # Stored states: after the real text only (an offline run of the step over it).
    sess = Session(path)
    for w, final in zip(works, outcome.final_states, strict=True):
        st = {n: np.zeros((1, 1, d), np.float32) for n, d in (("h", 16), ("c", 16), ("ctx", 4))}
        data = "".join(texts[w.stream]).encode()
        for i in range(0, len(data), 256):
            chunk = np.frombuffer(data[i : i + 256], np.uint8).astype(np.int64)[None]
            feeds = {"x": chunk, "lengths": np.array([chunk.shape[1]])}
            out = sess.run({**feeds, **{f"state_in.{n}": v for n, v in st.items()}})
            st = {n: out[f"state_out.{n}"] for n in st}
        for n, v in st.items():
            np.testing.assert_allclose(final[n], v[:, 0, :], atol=1e-6)
        assert final["ctx"][0].tolist() == [b + 1.0 for b in data[-4:]]

    # The last record of stream "a" alone (state carried from its first message) samples
    # the same continuation as in the batch.
    first_a = StreamWork("k:a", "a", 0, records=[works[0].records[0]])
    state_a = run_waves(Session(path), codec, spec.states, [first_a]).final_states[0]
    alone = StreamWork("k:a", "a", 0, records=[works[0].records[1]], initial=state_a)
    ((_, _, p_alone),) = run_waves(Session(path), codec, spec.states, [alone]).predictions
    assert p_alone["continuation"] == preds[1]["continuation"]
