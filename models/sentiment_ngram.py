"""Fit the running n-gram term of the sentiment model: a logistic regression on hashed n-grams.

A review's features are the counts of its token unigrams, hashed bigrams and hashed
trigrams (the ids of ``statecast.models.sentiment``'s ``bigram_bucket``/``trigram_bucket``,
the same formula the step graph evaluates), divided by ``count ** alpha`` where ``count``
is the review's token count. A linear model over these features is exactly what the step
state can carry: the sum of per-token weights and the count. Raw counts, not the binary
or log-scaled ones NBSVM prefers, because a running sum cannot know whether an n-gram
has been seen before in the stream.

scikit-learn's liblinear solver fits it in a minute or two; ``C`` is chosen on validation.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp
from sklearn.linear_model import LogisticRegression

from statecast.models.sentiment import bigram_bucket, trigram_bucket

log = logging.getLogger(__name__)

IdList = Sequence[npt.NDArray[np.int64]]


@dataclass(frozen=True)
class NgramWeights:
    uni: npt.NDArray[np.float32]
    bi: npt.NDArray[np.float32]
    tri: npt.NDArray[np.float32]
    bias: float
    C: float
    val_accuracy: float
    seconds: float


def ngram_columns(
    ids: npt.NDArray[np.int64], vocab_size: int, buckets: int
) -> npt.NDArray[np.int64]:
    """Feature columns of one text read from a zero state: ``[unigrams | bigrams | trigrams]``.

    A bigram (trigram) counts only where its previous token (second previous) exists, i.e.
    is not id 0, the step graph's marker for "no token yet".
    """
    t = ids.astype(np.int64)
    p1 = np.concatenate([np.zeros(1, np.int64), t[:-1]])
    p2 = np.concatenate([np.zeros(2, np.int64), t[:-2]])[: len(t)]
    has1, has2 = p1 != 0, p2 != 0
    return np.concatenate(
        [
            t,
            vocab_size + bigram_bucket(p1[has1], t[has1], buckets),
            vocab_size + buckets + trigram_bucket(p2[has2], p1[has2], t[has2], buckets),
        ]
    )


def ngram_matrix(texts: IdList, vocab_size: int, buckets: int, alpha: float) -> sp.csr_matrix:
    """``[texts, vocab + 2*buckets]`` n-gram counts, each row divided by its length ** alpha."""
    cols = [ngram_columns(t, vocab_size, buckets) for t in texts]
    lengths = np.array([max(len(t), 1) for t in texts], dtype=np.float64)
    rows = np.repeat(np.arange(len(texts)), [len(c) for c in cols])
    scale = np.repeat(lengths**-alpha, [len(c) for c in cols]).astype(np.float32)
    m = sp.csr_matrix(
        (scale, (rows, np.concatenate(cols))), shape=(len(texts), vocab_size + 2 * buckets)
    )
    m.sum_duplicates()
    return m


def fit_ngram_weights(
    train: tuple[IdList, npt.NDArray[np.int64]],
    val: tuple[IdList, npt.NDArray[np.int64]],
    vocab_size: int,
    buckets: int,
    alpha: float,
    grid: Sequence[float],
) -> NgramWeights:
    """An L2 logistic regression per ``C`` in ``grid``; the best on validation accuracy wins."""
    started = time.monotonic()
    x_train = ngram_matrix(train[0], vocab_size, buckets, alpha)
    x_val = ngram_matrix(val[0], vocab_size, buckets, alpha)
    log.info("n-gram features: %d x %d, %d non-zeros", *x_train.shape, x_train.nnz)
    best: tuple[float, float, LogisticRegression] | None = None
    for c in grid:
        clf = LogisticRegression(C=c, solver="liblinear", max_iter=1000)
        clf.fit(x_train, train[1])
        acc = float((clf.predict(x_val) == val[1]).mean())
        log.info("n-gram term C=%g: val accuracy %.4f", c, acc)
        if best is None or acc > best[1]:
            best = (c, acc, clf)
    assert best is not None, "the grid of C values is empty"
    c, acc, clf = best
    w = clf.coef_[0].astype(np.float32)
    return NgramWeights(
        uni=w[:vocab_size],
        bi=w[vocab_size : vocab_size + buckets],
        tri=w[vocab_size + buckets :],
        bias=float(clf.intercept_[0]),
        C=c,
        val_accuracy=acc,
        seconds=round(time.monotonic() - started, 1),
    )
