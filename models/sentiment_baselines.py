"""The simple sentiment baselines the step model must beat, on the same IMDB splits.

- TF-IDF over word unigrams and bigrams (terms in at least 3 training reviews) and a
  logistic regression, its inverse regularisation ``C`` chosen on validation accuracy.
- Multinomial naive Bayes on the same n-gram counts (Laplace smoothing).

Both read the *cleaned text* of the splits in ``sentiment_data`` (not our BPE tokens): they
are what a practitioner would try first, with scikit-learn's own word tokenizer. Every
figure is accuracy on the 4,958 test reviews, fitted on the train split only.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson
from sklearn.feature_extraction.text import CountVectorizer, TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.naive_bayes import MultinomialNB

from statecast.models import sentiment_data as data

log = logging.getLogger(__name__)

NGRAM_RANGE = (1, 2)
MIN_DF = 3
LR_GRID = (1.0, 4.0, 16.0, 64.0)


@dataclass(frozen=True)
class BaselineResult:
    name: str
    test_accuracy: float
    val_accuracy: float
    params: dict[str, Any]
    test_predictions: tuple[int, ...]
    seconds: float

    def summary(self) -> dict[str, Any]:
        """The result without its per-review predictions (for manifests and logs)."""
        d = asdict(self)
        d.pop("test_predictions")
        return d


def _accuracy(pred: npt.NDArray[np.int64], labels: npt.NDArray[np.int64]) -> float:
    return float((pred == labels).mean())


def tfidf_logistic_regression(
    splits: data.Splits, grid: Sequence[float] = LR_GRID
) -> BaselineResult:
    """TF-IDF (uni+bigrams, min count 3) + logistic regression, ``C`` chosen on validation."""
    started = time.monotonic()
    vec = TfidfVectorizer(ngram_range=NGRAM_RANGE, min_df=MIN_DF, dtype=np.float32)
    x_train = vec.fit_transform(splits.train["text"])
    x_val, x_test = vec.transform(splits.val["text"]), vec.transform(splits.test["text"])
    y_train = splits.train["label"].to_numpy()
    best: tuple[float, float, LogisticRegression] | None = None
    for c in grid:
        clf = LogisticRegression(C=c, solver="liblinear", max_iter=1000)
        clf.fit(x_train, y_train)
        val_acc = _accuracy(clf.predict(x_val), splits.val["label"].to_numpy())
        log.info("tfidf+lr C=%g: val accuracy %.4f", c, val_acc)
        if best is None or val_acc > best[1]:
            best = (c, val_acc, clf)
    assert best is not None, "the grid of C values is empty"
    c, val_acc, clf = best
    pred = clf.predict(x_test).astype(np.int64)
    return BaselineResult(
        name="tfidf-lr",
        test_accuracy=_accuracy(pred, splits.test["label"].to_numpy()),
        val_accuracy=val_acc,
        params={
            "ngram_range": list(NGRAM_RANGE),
            "min_df": MIN_DF,
            "C": c,
            "terms": len(vec.vocabulary_),
        },
        test_predictions=tuple(pred.tolist()),
        seconds=round(time.monotonic() - started, 1),
    )


def naive_bayes(splits: data.Splits) -> BaselineResult:
    """Multinomial naive Bayes on uni+bigram counts (min count 3), Laplace smoothing."""
    started = time.monotonic()
    vec = CountVectorizer(ngram_range=NGRAM_RANGE, min_df=MIN_DF)
    x_train = vec.fit_transform(splits.train["text"])
    clf = MultinomialNB(alpha=1.0).fit(x_train, splits.train["label"].to_numpy())
    val_pred = clf.predict(vec.transform(splits.val["text"]))
    pred = clf.predict(vec.transform(splits.test["text"])).astype(np.int64)
    return BaselineResult(
        name="naive-bayes",
        test_accuracy=_accuracy(pred, splits.test["label"].to_numpy()),
        val_accuracy=_accuracy(val_pred, splits.val["label"].to_numpy()),
        params={"ngram_range": list(NGRAM_RANGE), "min_df": MIN_DF, "alpha": 1.0},
        test_predictions=tuple(pred.tolist()),
        seconds=round(time.monotonic() - started, 1),
    )


def cached_baselines(cache_dir: Path = data.CACHE_DIR) -> list[BaselineResult]:
    """Both baselines on the prepared splits, computed once per split version and grid.

    They take minutes on a shared CPU and do not depend on the step model, so a retrain
    of the model reads them from ``.cache/sentiment`` instead of fitting them again.
    """
    key = f"v{data.PREP_VERSION}-seed{data.SPLIT_SEED}-C{'-'.join(f'{c:g}' for c in LR_GRID)}"
    path = cache_dir / f"baselines-{key}.json"
    if path.is_file():
        return [
            BaselineResult(**{**d, "test_predictions": tuple(d["test_predictions"])})
            for d in orjson.loads(path.read_bytes())
        ]
    splits = data.load_splits(cache_dir)
    results = [tfidf_logistic_regression(splits), naive_bayes(splits)]
    for r in results:
        log.info(
            "baseline %s: test accuracy %.4f (val %.4f)", r.name, r.test_accuracy, r.val_accuracy
        )
    cache_dir.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps([asdict(r) for r in results]))
    return results


def mcnemar_z(
    labels: npt.NDArray[np.int64], pred_a: npt.NDArray[np.int64], pred_b: npt.NDArray[np.int64]
) -> float:
    """McNemar's z (continuity-corrected) for A vs B on the same reviews; > 0: A is better.

    Only the reviews exactly one model gets right count: ``b`` (A right, B wrong) and ``c``
    (B right, A wrong); ``|z| > 1.96`` is a difference at the 5% level.
    """
    a_right, b_right = pred_a == labels, pred_b == labels
    b = int((a_right & ~b_right).sum())
    c = int((~a_right & b_right).sum())
    if b + c == 0:
        return 0.0
    return float(np.sign(b - c) * max(abs(b - c) - 1, 0) / np.sqrt(b + c))
