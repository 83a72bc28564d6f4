"""Training pieces on synthetic token data: bucketed batches, the bag-of-words warm start."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from statecast.models.sentiment import SentimentConfig, SentimentLSTM
from statecast.models.sentiment_train import (
    BucketedBatches,
    accuracy,
    bag_accuracy,
    bce_loss,
    fit_token_weights,
    warm_start,
)

pytestmark = pytest.mark.unit

VOCAB = 50
GOOD, BAD = (3, 4, 5), (6, 7, 8)  # token ids that carry the label; the rest is noise


def corpus(n: int, seed: int) -> tuple[list[np.ndarray], np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, size=n).astype(np.int64)
    ids = []
    for y in labels:
        length = int(rng.integers(5, 60))
        seq = rng.integers(9, VOCAB, size=length)
        cue = GOOD if y else BAD
        where = rng.choice(length, size=max(1, length // 8), replace=False)
        seq[where] = rng.choice(cue, size=len(where))
        ids.append(seq.astype(np.int64))
    return ids, labels


def test_bucketed_batches_truncate_to_the_last_tokens_and_pad() -> None:
    ids, labels = corpus(100, seed=0)
    ds = BucketedBatches(ids, labels, batch_size=16, max_len=20, seed=0)
    assert sum(len(b[2]) for b in ds.batches) == 100
    seen = 0
    for tokens, lengths, y in ds.batches:
        assert tokens.shape == (len(y), int(lengths.max()))
        assert int(lengths.max()) <= 20
        for row, n in zip(tokens, lengths, strict=True):
            assert (row[int(n) :] == 0).all()
        seen += len(y)
    assert seen == 100
    # Each text appears once, as its tail.
    tails = sorted(tuple(s[-20:].tolist()) for s in ids)
    got = sorted(
        tuple(row[: int(n)].tolist())
        for t, ln, _ in ds.batches
        for row, n in zip(t, ln, strict=True)
    )
    assert got == tails


def test_loss_for_the_shared_loop_takes_a_collated_batch() -> None:
    ids, labels = corpus(8, seed=1)
    tokens, lengths, y = BucketedBatches(ids, labels, 8, None, 0)[0]
    model = SentimentLSTM(SentimentConfig(vocab_size=VOCAB, embed_dim=4, hidden=6))
    loss = bce_loss(model, (tokens[None], lengths[None], y[None]))
    assert loss.ndim == 0
    assert float(loss.detach()) > 0


def test_warm_start_makes_an_untrained_lstm_a_bag_of_words_classifier() -> None:
    train_ids, train_y = corpus(600, seed=2)
    test_ids, test_y = corpus(300, seed=3)
    weights, bias = fit_token_weights(train_ids, train_y, VOCAB, None, epochs=20, lr=0.05)
    assert weights[list(GOOD)].min() > 0 > weights[list(BAD)].max()
    assert bag_accuracy(weights, bias, test_ids, test_y) > 0.95
    torch.manual_seed(0)
    model = SentimentLSTM(SentimentConfig(vocab_size=VOCAB, embed_dim=4, hidden=6))
    cold = accuracy(model, test_ids, test_y)
    warm_start(model, weights, bias)
    assert accuracy(model, test_ids, test_y) > 0.95
    assert cold < 0.8
