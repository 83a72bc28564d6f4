"""Batched, seeded autoregressive decoding for generative routes (text continuation, captions).

:func:`decode` runs a step function once per generated token for *all* rows at once (one
``session.run`` per token across every stream of a poll, never one stream at a time).
Each row samples from its own random generator, seeded from its record id
(:func:`seed_for`), so a row's output does not depend on which other rows share the batch:
a replay of the same record publishes the same continuation.

The states handed in are the caller's *copies* (DESIGN.md: the stored state advances only
over input that arrived); :func:`decode` never writes into them.

Pure numpy; runs in the worker's inference thread.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[Any]
Tokens = npt.NDArray[np.int64]
States = dict[str, Array]
# (tokens [B] int64, states) -> (logits [B, V], new states): one decoder step for B rows.
StepFn = Callable[[Tokens, Mapping[str, Array]], tuple[Array, Mapping[str, Array]]]
Seed = int | np.random.Generator


def seed_for(record_id: str, salt: str = "") -> int:
    """A 64-bit seed from a record id such as ``"topic/partition/offset"`` (stable across
    processes and Python versions, unlike ``hash``)."""
    digest = hashlib.blake2b(f"{salt}\x00{record_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def rng_for(seed: Seed) -> np.random.Generator:
    return (
        seed
        if isinstance(seed, np.random.Generator)
        else np.random.Generator(np.random.PCG64(seed))
    )


def probabilities(
    logits: Array, temperature: float = 1.0, top_k: int = 0
) -> npt.NDArray[np.float64]:
    """Row-wise sampling distribution: softmax of ``logits / temperature`` restricted to the
    ``top_k`` largest logits (0: all). ``temperature`` 0 puts all mass on the argmax."""
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim != 2:
        raise ValueError(f"logits must be [B, V], got shape {z.shape}")
    if temperature < 0 or not np.isfinite(temperature):
        raise ValueError(f"temperature must be finite and >= 0, got {temperature}")
    if temperature == 0:
        out = np.zeros_like(z)
        out[np.arange(len(z)), np.argmax(z, axis=1)] = 1.0
        return out
    z = z / temperature
    if 0 < top_k < z.shape[1]:
        kth = np.partition(z, -top_k, axis=1)[:, -top_k][:, None]
        z = np.where(z >= kth, z, -np.inf)
    z = z - z.max(axis=1, keepdims=True)
    p: npt.NDArray[np.float64] = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    return p


def sample(probs: npt.NDArray[np.float64], uniforms: npt.NDArray[np.float64]) -> Tokens:
    """Inverse-CDF draw per row: the first index whose cumulative mass exceeds ``u``."""
    cdf = np.cumsum(probs, axis=1)
    # u * total rather than u: cumsum's last entry may fall a hair short of 1.0.
    idx = (cdf < (uniforms * cdf[:, -1])[:, None]).sum(axis=1)
    out: Tokens = np.minimum(idx, probs.shape[1] - 1).astype(np.int64)
    return out


def decode(
    step: StepFn,
    first_tokens: npt.ArrayLike,
    states: Mapping[str, Array],
    steps: int,
    *,
    temperature: float,
    top_k: int,
    seeds: Sequence[Seed],
    stop_token: int | None = None,
    batch_axis: int = 1,
) -> Tokens:
    """Generate ``steps`` tokens per row: feed ``first_tokens``, sample from the logits,
    feed the sample back, and so on. Returns ``[B, steps]`` int64.

    ``states`` hold each row's starting state with the batch on ``batch_axis`` (axis 1 in
    the ``[layers, B, hidden]`` step contract). A row that emits ``stop_token`` leaves the
    batch (later steps run only the rows still going) and the rest of its output is
    ``stop_token``. ``seeds``: one int (or ready generator) per row.
    """
    tokens = np.asarray(first_tokens, dtype=np.int64).reshape(-1)
    b = len(tokens)
    if len(seeds) != b:
        raise ValueError(f"{len(seeds)} seeds for {b} rows")
    fill = -1 if stop_token is None else stop_token
    out = np.full((b, max(steps, 0)), fill, dtype=np.int64)
    if steps <= 0 or b == 0:
        return out
    # Every row's uniforms up front, from its own generator: its draws do not depend on
    # which rows it shares a batch with or when other rows stop.
    uniforms = np.stack([rng_for(s).random(steps) for s in seeds])
    active = np.arange(b)
    current: Mapping[str, Array] = states
    for t in range(steps):
        logits, current = step(tokens, current)
        probs = probabilities(np.asarray(logits)[:, :], temperature, top_k)
        nxt = sample(probs, uniforms[active, t])
        out[active, t] = nxt
        tokens = nxt
        if stop_token is not None:
            going = nxt != stop_token
            if not going.all():
                active, tokens = active[going], tokens[going]
                if len(active) == 0:
                    break
                current = {
                    k: np.take(v, np.flatnonzero(going), axis=batch_axis)
                    for k, v in current.items()
                }
    return out


def trim(tokens: Tokens, stop_token: int | None) -> list[list[int]]:
    """Each row's tokens up to (not including) its first ``stop_token``."""
    rows: list[list[int]] = []
    for row in tokens.tolist():
        if stop_token is not None and stop_token in row:
            row = row[: row.index(stop_token)]
        rows.append([t for t in row if t >= 0])
    return rows
