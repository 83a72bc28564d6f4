"""The sentiment evaluation helpers: calibration, temperature, mix, McNemar, conversations.

Synthetic logits with a known answer, and a tiny random hybrid model whose running
conversation labels must equal its whole-text labels over each prefix.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from statecast.models import sentiment_eval as ev
from statecast.models.sentiment import HybridConfig, SentimentConfig, SentimentHybrid
from statecast.models.sentiment_baselines import mcnemar_z

pytestmark = pytest.mark.unit


def sampled(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels drawn so that sigmoid(logit) is the true P(label = 1)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, 2.0, size=n)
    labels = (rng.random(n) < 1 / (1 + np.exp(-z))).astype(np.int64)
    return z, labels


def test_calibrated_logits_have_small_ece_and_overconfident_ones_do_not() -> None:
    z, labels = sampled(20_000, seed=0)
    assert ev.expected_calibration_error(z, labels) < 0.02
    assert ev.expected_calibration_error(3.0 * z, labels) > 0.05


def test_temperature_undoes_a_known_scaling() -> None:
    z, labels = sampled(20_000, seed=1)
    assert ev.fit_temperature(2.5 * z, labels) == pytest.approx(2.5, rel=0.1)
    assert ev.fit_temperature(z, labels) == pytest.approx(1.0, rel=0.1)


def test_mix_prefers_the_informative_part() -> None:
    z, labels = sampled(5_000, seed=2)
    noise = np.random.default_rng(3).normal(0.0, 2.0, size=len(z))
    mix, _ = ev.fit_mix(z, noise, labels)
    assert mix >= 0.9
    mix, _ = ev.fit_mix(noise, z, labels)
    assert mix <= 0.1


def test_mcnemar_sign_and_ties() -> None:
    labels = np.array([1, 1, 1, 1, 0, 0, 0, 0] * 10)
    right = labels.copy()
    wrong_half = labels.copy()
    wrong_half[::2] = 1 - wrong_half[::2]
    assert mcnemar_z(labels, right, wrong_half) > 5
    assert mcnemar_z(labels, wrong_half, right) < -5
    assert mcnemar_z(labels, right, right) == 0.0


def test_terciles_split_by_length() -> None:
    lengths = np.arange(1, 31)
    labels = np.ones(30, dtype=np.int64)
    z = np.where(lengths > 20, -1.0, 1.0)  # wrong on the longest third only
    out = ev.tercile_accuracy(z, labels, lengths)
    assert out["accuracy"] == [1.0, 1.0, 0.0]


def test_running_conversation_labels_equal_whole_prefix_labels() -> None:
    torch.manual_seed(0)
    config = HybridConfig(SentimentConfig(vocab_size=50, embed_dim=4, hidden=6, dropout=0.0), 31)
    model = SentimentHybrid(config).eval()
    with torch.no_grad():
        for table in (model.ngrams.uni, model.ngrams.bi, model.ngrams.tri):
            table.normal_()
    rng = np.random.default_rng(4)
    convs = [
        [rng.integers(1, 50, size=int(rng.integers(1, 12))) for _ in range(int(k))]
        for k in rng.integers(1, 5, size=12)
    ]
    # Whole-text label after each message: the model over the concatenated prefix.
    expected = []
    with torch.no_grad():
        for msgs in convs:
            row = []
            for k in range(1, len(msgs) + 1):
                ids = torch.from_numpy(np.concatenate(msgs[:k])).unsqueeze(0)
                row.append(int(model(ids, torch.tensor([ids.shape[1]])).item() > 0))
            expected.append(row)
    labels = np.array([row[-1] for row in expected], dtype=np.int64)
    out = ev._run_batch(model, convs, labels, chunk=5)
    assert out == [[p == lab for p in row] for row, lab in zip(expected, labels, strict=True)]
    summary = ev.conversation_running(model, convs, labels, chunk=5)
    assert summary["accuracy_after_fraction"]["1.0"] == 1.0
