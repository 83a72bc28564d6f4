"""The char model's baseline: the numpy interpolated Kneser-Ney against a plain-Python
reference of the same formula, normalisation, and the effect of order."""

from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np
import pytest

from statecast.models.charrnn_ngram import PAD_BYTE, KneserNey

TEXT = (
    b"the cat sat on the mat. the dog sat on the log. a cat and a dog met on a mat.\n"
    b"then the cat ran to the log and the dog ran to the mat; nobody sat on the hat.\n"
) * 3


def reference_kn(train: bytes, order: int) -> dict[int, tuple[Counter[bytes], float]]:
    """Counts per order (raw at the top, continuation below) and discounts, by dicts."""
    padded = bytes([PAD_BYTE]) * (order - 1) + train
    grams = {
        k: [padded[i - k + 1 : i + 1] for i in range(k - 1, len(padded))]
        for k in range(1, order + 1)
    }
    counts: dict[int, tuple[Counter[bytes], float]] = {}
    for k in range(1, order + 1):
        c = Counter(grams[k]) if k == order else Counter(g[1:] for g in set(grams[k + 1]))
        n1 = sum(1 for v in c.values() if v == 1)
        n2 = sum(1 for v in c.values() if v == 2)
        counts[k] = (c, n1 / (n1 + 2 * n2) if n1 else 0.5)
    return counts


def reference_prob(
    counts: dict[int, tuple[Counter[bytes], float]], history: bytes, byte: int
) -> float:
    p = 1.0 / 256
    for k in range(1, len(counts) + 1):
        c, d = counts[k]
        h = history[len(history) - (k - 1) :] if k > 1 else b""
        followers: dict[bytes, float] = defaultdict(float)
        for g, v in c.items():
            if g[:-1] == h:
                followers[g] += v
        total = sum(followers.values())
        if total == 0:
            continue
        n = c.get(h + bytes([byte]), 0)
        p = (max(n - d, 0.0) + d * len(followers) * p) / total
    return p


@pytest.mark.parametrize("order", [3, 5])
def test_matches_the_plain_python_formula(order: int) -> None:
    train = np.frombuffer(TEXT, np.uint8)
    lm = KneserNey.fit(train, order)
    counts = reference_kn(TEXT, order)
    probe = b"the cat sat on a hat and the dog met the fox.\n"
    got = lm.probabilities(np.frombuffer(probe, np.uint8))
    history = bytes([PAD_BYTE]) * (order - 1)
    for i, byte in enumerate(probe):
        want = reference_prob(counts, history + probe[:i], byte)
        assert got[i] == pytest.approx(want, rel=1e-9), (i, chr(byte))


@pytest.mark.parametrize("history", [b"the c", b"zzzz", b"", b"on th"])
def test_probabilities_sum_to_one(history: bytes) -> None:
    lm = KneserNey.fit(np.frombuffer(TEXT, np.uint8), 5)
    total = 0.0
    for b in range(256):
        stream = np.frombuffer(history + bytes([b]), np.uint8)
        total += float(lm.probabilities(stream)[-1])
    assert total == pytest.approx(1.0, abs=1e-9)


def test_higher_orders_score_repetitive_text_better() -> None:
    train = np.frombuffer(TEXT, np.uint8)
    held = np.frombuffer(b"the dog sat on the mat. the cat ran to the log.\n", np.uint8)
    bpc = [KneserNey.fit(train, n).bits_per_char(held) for n in (1, 3, 5)]
    assert bpc[0] > bpc[1] > bpc[2]
    assert bpc[0] < 8.0  # better than uniform over 256 bytes
