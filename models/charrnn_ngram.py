"""The character-model baseline: an interpolated Kneser-Ney byte n-gram, in numpy.

Every k-gram of bytes is one integer (base 256, the last byte least significant; order 5
fits in 40 bits), so counting is ``np.unique`` and lookup is ``np.searchsorted`` over whole
streams at once, fast enough for millions of bytes without a Python loop per byte.

Probability of byte ``c`` after history ``h`` (Chen & Goodman's interpolated Kneser-Ney,
one absolute discount ``D_k = n1 / (n1 + 2 n2)`` per order)::

    P_k(c | h) = (max(N_k(h c) - D_k, 0) + D_k * T_k(h) * P_{k-1}(c | h')) / N_k(h)

where ``N_k`` is the raw count at the highest order and the continuation count (how many
distinct bytes precede the k-gram) below it, ``T_k(h)`` the number of distinct bytes seen
after ``h``, ``h'`` the history without its oldest byte, and ``P_0`` uniform over 256.
A history never seen falls back to ``P_{k-1}`` entirely.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

Int64s = npt.NDArray[np.int64]
PAD_BYTE = 10  # "\n", the corpus's review separator: the stream starts "after a review"


def gram_codes(stream: npt.NDArray[Any], k: int) -> Int64s:
    """Code of the k-gram ending at each position ``i >= k - 1`` of ``stream``."""
    s = np.asarray(stream, dtype=np.int64)
    code = s.copy()
    for _ in range(1, k):
        code = code[:-1] * 256 + s[len(s) - len(code) + 1 :]
    return code


@dataclass(frozen=True)
class _Level:
    grams: Int64s  # sorted k-gram codes with a positive count
    counts: npt.NDArray[np.float64]
    contexts: Int64s  # sorted (k-1)-gram history codes
    denom: npt.NDArray[np.float64]  # N_k(h): sum of counts after h
    types: npt.NDArray[np.float64]  # T_k(h): distinct bytes after h
    discount: float


def _discount(counts: npt.NDArray[np.float64]) -> float:
    n1 = float(np.sum(counts == 1))
    n2 = float(np.sum(counts == 2))
    return n1 / (n1 + 2.0 * n2) if n1 > 0 else 0.5


def _level(grams: Int64s, counts: npt.NDArray[np.float64]) -> _Level:
    contexts, inverse = np.unique(grams // 256, return_inverse=True)
    return _Level(
        grams=grams,
        counts=counts,
        contexts=contexts,
        denom=np.bincount(inverse, weights=counts).astype(np.float64),
        types=np.bincount(inverse).astype(np.float64),
        discount=_discount(counts),
    )


def _lookup(keys: Int64s, table: Int64s) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.bool_]]:
    idx = np.searchsorted(table, keys)
    idx = np.minimum(idx, len(table) - 1)
    return idx, table[idx] == keys


class KneserNey:
    def __init__(self, order: int, levels: list[_Level]) -> None:
        self.order = order
        self.levels = levels  # levels[k - 1] holds order k

    @classmethod
    def fit(cls, stream: npt.NDArray[Any], order: int) -> KneserNey:
        if not 1 <= order <= 7:
            raise ValueError("order must be in 1..7 (codes are int64)")
        padded = np.concatenate(
            [np.full(order - 1, PAD_BYTE, np.int64), np.asarray(stream, np.int64)]
        )
        seen = [np.unique(gram_codes(padded, k)) for k in range(1, order + 1)]
        levels: list[_Level] = []
        for k in range(1, order + 1):
            if k == order:
                grams, raw = np.unique(gram_codes(padded, k), return_counts=True)
            else:
                # Continuation count: distinct bytes seen before the k-gram.
                grams, raw = np.unique(seen[k] % (256**k), return_counts=True)
            levels.append(_level(grams, raw.astype(np.float64)))
        return cls(order, levels)

    def probabilities(self, stream: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
        """P(byte i | the bytes before it) for every position of ``stream``."""
        n = self.order
        padded = np.concatenate([np.full(n - 1, PAD_BYTE, np.int64), np.asarray(stream, np.int64)])
        p = np.full(len(stream), 1.0 / 256.0)
        for k in range(1, n + 1):
            lv = self.levels[k - 1]
            codes = gram_codes(padded, k)[n - k :]
            gi, gfound = _lookup(codes, lv.grams)
            count = np.where(gfound, lv.counts[gi], 0.0)
            ci, cfound = _lookup(codes // 256, lv.contexts)
            denom = lv.denom[ci]
            mixed = (np.maximum(count - lv.discount, 0.0) + lv.discount * lv.types[ci] * p) / denom
            p = np.where(cfound, mixed, p)
        return p

    def bits_per_char(self, stream: npt.NDArray[Any]) -> float:
        return float(-np.log2(self.probabilities(stream)).mean())
