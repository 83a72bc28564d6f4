"""The running n-gram term and the hybrid sentiment step (LSTM + n-grams, version 2).

A tiny random-weight hybrid runs in milliseconds; the checks pin what serving relies on:
the graph hashes n-grams exactly as the training features do, bigrams and trigrams across
chunk borders count, padding and empty rows leave the state alone, and the exported ONNX
step equals the whole-text PyTorch model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

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
    bigram_bucket,
    trigram_bucket,
)
from statecast.models.sentiment_ngram import ngram_columns, ngram_matrix

pytestmark = pytest.mark.unit

LSTM = SentimentConfig(vocab_size=300, embed_dim=8, hidden=12, dropout=0.0)
CONFIG = HybridConfig(lstm=LSTM, buckets=101, alpha=0.5)


def random_hybrid(seed: int) -> SentimentHybrid:
    torch.manual_seed(seed)
    model = SentimentHybrid(CONFIG).eval()
    with torch.no_grad():
        for table in (model.ngrams.uni, model.ngrams.bi, model.ngrams.tri):
            table.normal_()
        model.ngrams.bias.fill_(0.3)
        model.mix.fill_(0.4)
        model.temperature.fill_(1.7)
    return model


def texts_of(lengths: list[int], seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(1, LSTM.vocab_size, size=n).astype(np.int64) for n in lengths]


def run_chunks(model: SentimentHybrid, text: np.ndarray, chunk: int) -> torch.Tensor:
    """The n-gram state after feeding ``text`` through the eager step, ``chunk`` at a time."""
    ng = model.ngrams.zero_state(1)
    for start in range(0, len(text), chunk):
        part = torch.from_numpy(text[start : start + chunk]).unsqueeze(0)
        ng = model.ngrams.advance(part, torch.tensor([part.shape[1]]), ng)
    return ng


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[SentimentHybrid, ModelSpec, Path]:
    model = random_hybrid(0)
    spec = se.build_spec(model)
    path = tmp_path_factory.mktemp("hybrid") / "tiny.onnx"
    example = (
        torch.ones(2, 8, dtype=torch.int64),
        torch.tensor([8, 3]),
        torch.zeros(1, 2, LSTM.hidden),
        torch.zeros(1, 2, LSTM.hidden),
        torch.zeros(1, 2, NGRAM_STATE),
    )
    export_step_model(HybridStep(model), spec, path, inputs=example)
    return model, spec, path


def test_graph_hashes_ngrams_as_the_training_features_do() -> None:
    model = random_hybrid(1)
    weights = torch.cat([model.ngrams.uni, model.ngrams.bi, model.ngrams.tri]).numpy()
    texts = texts_of([1, 2, 3, 57, 200], seed=1)
    features = ngram_matrix(texts, LSTM.vocab_size, CONFIG.buckets, CONFIG.alpha)
    expected = features @ weights + float(model.ngrams.bias)
    for i, text in enumerate(texts):
        got = model.ngrams.logit(run_chunks(model, text, chunk=len(text)))
        assert got.item() == pytest.approx(expected[i], abs=1e-4)
    # One text's columns: every token, then the bigrams and trigrams it completes.
    cols = ngram_columns(np.array([5, 7, 9]), LSTM.vocab_size, CONFIG.buckets)
    assert cols.tolist() == [
        5,
        7,
        9,
        LSTM.vocab_size + bigram_bucket(5, 7, CONFIG.buckets),
        LSTM.vocab_size + bigram_bucket(7, 9, CONFIG.buckets),
        LSTM.vocab_size + CONFIG.buckets + trigram_bucket(5, 7, 9, CONFIG.buckets),
    ]


def test_ngrams_across_chunk_borders_count_once() -> None:
    model = random_hybrid(2)
    text = texts_of([50], seed=2)[0]
    whole = run_chunks(model, text, chunk=50)
    for chunk in (1, 2, 7):
        assert torch.allclose(run_chunks(model, text, chunk), whole, atol=1e-4)
    # The state carries the last two token ids and the count exactly.
    assert whole[0, 0, 1:].tolist() == [50.0, float(text[-2]), float(text[-1])]
    # Without the carried tokens (a fresh state per chunk) the sums differ: the carry matters.
    first = run_chunks(model, text[:25], chunk=25)
    second = run_chunks(model, text[25:], chunk=25)
    assert abs(float(first[0, 0, 0] + second[0, 0, 0] - whole[0, 0, 0])) > 1e-3


def test_eager_step_in_chunks_matches_the_whole_text_model() -> None:
    model = random_hybrid(3)
    step = HybridStep(model).eval()
    texts = texts_of([30, 5, 1, 17], seed=3)
    expected = se.reference_outputs(model, texts, chunk=8)
    steps = chunk_steps(texts, 8, LSTM.pad_id)
    h = torch.zeros(1, 4, LSTM.hidden)
    c = torch.zeros(1, 4, LSTM.hidden)
    ng = torch.zeros(1, 4, NGRAM_STATE)
    with torch.no_grad():
        for k, s in enumerate(steps):
            x, lengths = torch.from_numpy(s["x"]), torch.from_numpy(s["lengths"])
            p, h, c, ng = step(x, lengths, h, c, ng)
            assert np.allclose(p.numpy(), expected[k]["positive"], atol=1e-5)


def test_export_carries_the_ngram_state(tiny: tuple[SentimentHybrid, ModelSpec, Path]) -> None:
    _, spec, path = tiny
    graph = onnx.load(str(path)).graph
    assert [i.name for i in graph.input] == [
        "x",
        "lengths",
        "state_in.h",
        "state_in.c",
        "state_in.ngram",
    ]
    assert [o.name for o in graph.output][-1] == "state_out.ngram"
    assert "LSTM" in {n.op_type for n in graph.node}
    assert read_spec(path) == spec
    assert spec.version == se.VERSION
    assert spec.kind == "sentiment"
    assert [(s.name, s.layers, s.hidden) for s in spec.states][-1] == ("ngram", 1, NGRAM_STATE)


def test_padding_and_empty_rows_leave_the_ngram_state_alone(
    tiny: tuple[SentimentHybrid, ModelSpec, Path],
) -> None:
    _, _, path = tiny
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(4)
    zeros = np.zeros((1, 3, LSTM.hidden), np.float32)
    ng = np.array([[[1.5, 4.0, 17.0, 23.0]] * 3], np.float32)
    tokens = rng.integers(1, LSTM.vocab_size, size=(3, 6)).astype(np.int64)
    feeds = {"lengths": np.array([6, 2, 0], np.int64), "state_in.h": zeros, "state_in.c": zeros}
    out = sess.run(None, {**feeds, "x": tokens, "state_in.ngram": ng})
    assert np.array_equal(out[3][:, 2], ng[:, 2])  # no tokens: unchanged
    assert out[3][0, 1, 1:].tolist() == [6.0, float(tokens[1, 0]), float(tokens[1, 1])]
    noisy = tokens.copy()
    noisy[1, 2:] = rng.integers(1, LSTM.vocab_size, size=4)
    again = sess.run(None, {**feeds, "x": noisy, "state_in.ngram": ng})
    assert np.allclose(again[3][:, 1], out[3][:, 1])


@pytest.mark.parametrize("chunk", [7, 64])
def test_onnx_chunked_parity_over_mixed_lengths(
    tiny: tuple[SentimentHybrid, ModelSpec, Path], chunk: int
) -> None:
    model, _, path = tiny
    texts = texts_of([140, 1, 64, 9, 65, 130, 2, 40], seed=chunk)
    steps = chunk_steps(texts, chunk, LSTM.pad_id)
    assert step_parity(path, steps, se.reference_outputs(model, texts, chunk)) <= PARITY_TOLERANCE
    # The check has teeth: the same LSTM with other n-gram weights does not pass.
    other = random_hybrid(0)
    with torch.no_grad():
        other.ngrams.bi.normal_()
    assert step_parity(path, steps, se.reference_outputs(other, texts, chunk)) > 1e-3
