"""The sentiment step model: contract, length masking, chunked parity with PyTorch.

A tiny random-weight model is exported the way the shipped one is, so these checks run in
seconds; the shipped model's own parity is checked when it is in the manifest.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from statecast.contract.manifest import DEFAULT_MANIFEST, load_manifest
from statecast.contract.spec import ModelSpec
from statecast.export import sentiment_export as se
from statecast.export.parity import PARITY_TOLERANCE, chunk_steps, step_parity
from statecast.export.step_export import export_step_model, read_spec
from statecast.models.sentiment import (
    NGRAM_STATE,
    HybridConfig,
    HybridStep,
    SentimentConfig,
    SentimentHybrid,
    SentimentLSTM,
    SentimentStep,
    zero_state,
)

pytestmark = pytest.mark.unit

CONFIG = SentimentConfig(vocab_size=300, embed_dim=8, hidden=12, dropout=0.0)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[SentimentHybrid, ModelSpec, Path]:
    torch.manual_seed(0)
    model = SentimentHybrid(HybridConfig(lstm=CONFIG, buckets=97)).eval()
    spec = se.build_spec(model)
    path = tmp_path_factory.mktemp("sentiment") / "tiny.onnx"
    example = (
        torch.ones(2, 8, dtype=torch.int64),
        torch.tensor([8, 3]),
        *zero_state(CONFIG, 2),
        torch.zeros(1, 2, NGRAM_STATE),
    )
    export_step_model(HybridStep(model), spec, path, inputs=example)
    return model, spec, path


def texts_of(lengths: list[int], seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(1, CONFIG.vocab_size, size=n).astype(np.int64) for n in lengths]


def test_export_follows_the_step_contract(tiny: tuple[SentimentHybrid, ModelSpec, Path]) -> None:
    _, spec, path = tiny
    graph = onnx.load(str(path)).graph
    assert [i.name for i in graph.input][:4] == ["x", "lengths", "state_in.h", "state_in.c"]
    assert [o.name for o in graph.output][:3] == ["positive", "state_out.h", "state_out.c"]
    assert "LSTM" in {n.op_type for n in graph.node}  # one recurrent op, not an unrolled loop
    assert read_spec(path) == spec
    assert spec.kind == "sentiment"
    assert spec.preprocess["tokenizer"] == "../tokenizer/sentiment_lstm.json"
    assert spec.preprocess["max_chunk_tokens"] == se.MAX_CHUNK_TOKENS


def test_any_batch_and_chunk_length_run(tiny: tuple[SentimentHybrid, ModelSpec, Path]) -> None:
    _, _, path = tiny
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch, t in ((1, 1), (5, 3), (33, 130)):
        h = np.zeros((1, batch, CONFIG.hidden), np.float32)
        out = sess.run(
            None,
            {
                "x": np.ones((batch, t), np.int64),
                "lengths": np.full(batch, t, np.int64),
                "state_in.h": h,
                "state_in.c": h,
                "state_in.ngram": np.zeros((1, batch, NGRAM_STATE), np.float32),
            },
        )
        assert out[0].shape == (batch, 1)
        assert out[1].shape == out[2].shape == (1, batch, CONFIG.hidden)


def test_padding_and_empty_rows_leave_state_alone(
    tiny: tuple[SentimentHybrid, ModelSpec, Path],
) -> None:
    _, _, path = tiny
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    h = rng.normal(size=(1, 3, CONFIG.hidden)).astype(np.float32)
    c = rng.normal(size=(1, 3, CONFIG.hidden)).astype(np.float32)
    tokens = rng.integers(1, CONFIG.vocab_size, size=(3, 6)).astype(np.int64)
    ng = np.zeros((1, 3, NGRAM_STATE), np.float32)
    feeds = {"x": tokens, "lengths": np.array([6, 2, 0], np.int64), "state_in.h": h}
    feeds["state_in.ngram"] = ng
    _, h1, c1, _ = sess.run(None, {**feeds, "state_in.c": c})
    # Row 2 had no tokens: its state comes back unchanged.
    assert np.array_equal(h1[:, 2], h[:, 2])
    assert np.array_equal(c1[:, 2], c[:, 2])
    # Row 1 read two tokens: what follows them in the padded row does not matter.
    noisy = tokens.copy()
    noisy[1, 2:] = rng.integers(1, CONFIG.vocab_size, size=4)
    _, h2, c2, _ = sess.run(None, {**feeds, "x": noisy, "state_in.c": c})
    assert np.allclose(h2[:, 1], h1[:, 1], atol=1e-6)
    assert np.allclose(c2[:, 1], c1[:, 1])
    assert not np.allclose(h1[:, 1], h[:, 1])


@pytest.mark.parametrize("chunk", [7, 64])
def test_chunked_parity_over_mixed_lengths(
    tiny: tuple[SentimentHybrid, ModelSpec, Path], chunk: int
) -> None:
    model, _, path = tiny
    texts = texts_of([140, 1, 64, 9, 65, 130, 2, 40], seed=chunk)
    steps = chunk_steps(texts, chunk, CONFIG.pad_id)
    assert len(steps) == -(-140 // chunk)
    expected = se.reference_outputs(model, texts, chunk)
    diff = step_parity(path, steps, expected)
    assert diff <= PARITY_TOLERANCE
    # The check has teeth: another model's reference does not pass.
    torch.manual_seed(99)
    other = SentimentHybrid(HybridConfig(lstm=CONFIG, buckets=97)).eval()
    wrong = se.reference_outputs(other, texts, chunk)
    assert step_parity(path, steps, wrong) > 1e-3


def test_eager_step_matches_the_model() -> None:
    torch.manual_seed(3)
    model = SentimentLSTM(CONFIG).eval()
    step = SentimentStep(model).eval()
    texts = texts_of([10, 4, 1])
    lengths = torch.tensor([len(t) for t in texts])
    x = torch.zeros(3, 10, dtype=torch.int64)
    for i, t in enumerate(texts):
        x[i, : len(t)] = torch.from_numpy(t)
    with torch.no_grad():
        positive, _, _ = step(x, lengths, *zero_state(CONFIG, 3))
        expected = torch.sigmoid(model(x, lengths))
    assert torch.allclose(positive[:, 0], expected, atol=1e-6)


def test_shipped_model_parity_and_manifest() -> None:
    entries = load_manifest() if DEFAULT_MANIFEST.is_file() else {}
    if se.NAME not in entries:
        pytest.skip("sentiment_lstm is not shipped yet")
    entry = entries[se.NAME]
    assert entry.version == se.VERSION
    # The bar (14): at least 0.92 and above TF-IDF + LR on the same test split.
    assert entry.metrics["test_accuracy"] >= 0.92
    assert entry.metrics["test_accuracy"] > entry.metrics["baseline_accuracy"]
    assert entry.artefacts["tokenizer"].path == "models/tokenizer/sentiment_lstm.json"
    # A smaller batch than `models verify` uses keeps this test fast; same graph, same check.
    assert se.parity_sentiment_lstm(batches=(1, 4)) <= PARITY_TOLERANCE
