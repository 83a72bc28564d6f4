"""worker/generation.py: batched seeded decoding with a toy step function."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest

from statecast.worker.generation import decode, probabilities, sample, seed_for, trim

V = 8


class ToyStep:
    """Logits favour ``(token + 1) % V`` plus a per-row bias from the state; counts calls."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def __call__(
        self, tokens: np.ndarray[Any, Any], states: Mapping[str, np.ndarray[Any, Any]]
    ) -> tuple[np.ndarray[Any, Any], dict[str, np.ndarray[Any, Any]]]:
        self.calls.append(len(tokens))
        h = states["h"]  # [1, B, 1]
        logits = np.zeros((len(tokens), V))
        logits[np.arange(len(tokens)), (tokens + 1) % V] = 2.0
        logits[:, 0] += h[0, :, 0]
        return logits, {"h": h + 1.0}


def _states(b: int) -> dict[str, np.ndarray[Any, Any]]:
    return {"h": np.zeros((1, b, 1), np.float32)}


def test_greedy_follows_the_argmax() -> None:
    states = {"h": np.full((1, 2, 1), -10.0, np.float32)}  # the bias stays negative
    out = decode(ToyStep(), [0, 3], states, 4, temperature=0.0, top_k=0, seeds=[1, 2])
    assert out.tolist() == [[1, 2, 3, 4], [4, 5, 6, 7]]


def test_one_step_call_per_token_for_all_rows() -> None:
    step = ToyStep()
    decode(step, np.zeros(5, np.int64), _states(5), 6, temperature=1.0, top_k=0, seeds=range(5))
    assert step.calls == [5] * 6


def test_a_row_samples_the_same_alone_or_in_a_batch() -> None:
    seeds = [seed_for(f"t/0/{i}") for i in range(4)]
    together = decode(
        ToyStep(), [0, 1, 2, 3], _states(4), 12, temperature=1.5, top_k=0, seeds=seeds
    )
    for i in range(4):
        alone = decode(ToyStep(), [i], _states(1), 12, temperature=1.5, top_k=0, seeds=[seeds[i]])
        assert alone[0].tolist() == together[i].tolist()
    other = decode(
        ToyStep(), [0], _states(1), 12, temperature=1.5, top_k=0, seeds=[seed_for("t/0/99")]
    )
    assert other[0].tolist() != together[0].tolist()


def test_stop_token_ends_a_row_and_drops_it_from_later_steps() -> None:
    step = ToyStep()
    # Row 0 greedily walks 5, 6, 7, 0 (stop); row 1 walks 1, 2, 3, 4, 5 (its bias on
    # token 0 stays negative, so it never stops).
    states = {"h": np.array([[[-1.0], [-10.0]]], np.float32)}
    out = decode(step, [4, 0], states, 5, temperature=0.0, top_k=0, seeds=[0, 0], stop_token=0)
    assert out[0].tolist() == [5, 6, 7, 0, 0]
    assert out[1].tolist() == [1, 2, 3, 4, 5]
    assert step.calls == [2, 2, 2, 2, 1]
    assert trim(out, 0) == [[5, 6, 7], [1, 2, 3, 4, 5]]
    assert states["h"].ravel().tolist() == [-1.0, -10.0]  # the caller's copy is untouched


def test_top_k_keeps_only_the_k_largest() -> None:
    logits = np.array([[0.0, 1.0, 2.0, 3.0, 4.0]])
    p = probabilities(logits, temperature=1.0, top_k=2)
    assert np.count_nonzero(p) == 2
    assert p[0, 3] > 0
    assert p[0, 4] > 0
    assert p.sum() == pytest.approx(1.0)
    draws = {int(sample(p, np.array([u]))[0]) for u in np.linspace(0.001, 0.999, 50)}
    assert draws == {3, 4}


def test_negative_temperature_is_refused() -> None:
    with pytest.raises(ValueError, match="temperature"):
        probabilities(np.zeros((1, 3)), temperature=-1.0)


def test_seed_for_is_stable() -> None:
    assert seed_for("gen/0/17") == seed_for("gen/0/17")
    assert seed_for("gen/0/17") != seed_for("gen/0/18")
    assert 0 <= seed_for("gen/0/17") < 2**64
    assert seed_for("gen/0/17", salt="a") != seed_for("gen/0/17", salt="b")
