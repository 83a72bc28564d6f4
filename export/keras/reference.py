"""Parity references for imported models: step inputs and what Keras itself predicts.

:func:`build` makes, for a plan, a sequence of worker-shaped step inputs (random, or from a
real sample) and the outputs Keras gives for the same data read the way the semantics
define it: the window model on the last W events (window), the model on the whole prefix
of the stream (stateful), the model on each input (stateless). The ONNX step run from a
zero state must reproduce them within 1e-4.

:mod:`statecast.export.keras.refstore` saves them beside the ONNX file.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from statecast.contract.spec import ModelSpec
from statecast.export.keras.layers import Embedding
from statecast.export.keras.refstore import Reference
from statecast.export.step_export import example_inputs as spec_example_inputs

if TYPE_CHECKING:
    from statecast.export.keras.importer import ImportOptions, Plan

Array = np.ndarray[Any, Any]
Predict = Callable[[Array], Array]
BATCH = 4
EXTRA_EVENTS = 6
STATEFUL_EVENTS = 12


def example_inputs(plan: Plan, spec: ModelSpec) -> tuple[torch.Tensor, ...]:
    return spec_example_inputs(spec)


def _adapt(plan: Plan, events: Array) -> Array:
    """Worker-shaped events ``[B, N, ...]`` -> Keras steps ``[B, N, *step_shape]``."""
    b, n = events.shape[:2]
    flat = torch.from_numpy(events.reshape((b * n, *events.shape[2:])).astype(np.float32))
    with torch.no_grad():
        adapted = plan.adapter.features(flat).numpy()
    return adapted.reshape((b, n, *plan.adapter.step_shape))


def _out(plan: Plan, y: Array) -> Array:
    if plan.sequence_output:  # [B, T, out]: the newest event's prediction is the last step
        y = y[:, -1]
    with torch.no_grad():
        return plan.adapter.output(torch.from_numpy(y.astype(np.float32))).numpy()


def _event_shape(plan: Plan) -> tuple[int, ...]:
    x = plan.spec.inputs[0]
    return tuple(int(d) for d in x.shape[1:])


def _random_events(plan: Plan, opts: ImportOptions, rng: np.random.Generator, n: int) -> Array:
    shape = (BATCH, n, *_event_shape(plan))
    if plan.spec.kind in ("classify", "video"):
        return rng.uniform(0.0, 255.0, size=shape).astype(np.float32)
    mean = np.asarray(opts.input_mean or 0.0, np.float32)
    std = np.asarray(opts.input_std or 1.0, np.float32)
    return (mean + std * rng.normal(size=shape)).astype(np.float32)


def build(
    plan: Plan,
    predict: Predict,
    rng: np.random.Generator,
    sample: Array | None,
    opts: ImportOptions,
) -> Reference:
    if plan.spec.kind == "sentiment":
        return _tokens(plan, predict, rng, sample, opts)
    if plan.mode == "stateless":
        events = (
            _random_events(plan, opts, rng, 3)
            if sample is None
            else np.asarray(sample, np.float32).reshape((1, -1, *_event_shape(plan)))
        )
        return _stateless(plan, predict, events)
    if sample is not None:
        events = np.asarray(sample, np.float32)
        events = events.reshape((*events.shape[:2], *_event_shape(plan)))
    else:
        n = plan.window + EXTRA_EVENTS if plan.mode == "window" else STATEFUL_EVENTS
        if plan.mode == "stateful" and plan.fixed_time:
            n = plan.fixed_time
        events = _random_events(plan, opts, rng, n)
    if plan.mode == "window":
        return _window(plan, predict, events)
    return _stateful(plan, predict, events)


def _stateless(plan: Plan, predict: Predict, events: Array) -> Reference:
    adapted = _adapt(plan, events)
    steps: list[dict[str, Array]] = []
    expected: list[dict[str, Array]] = []
    name = plan.spec.outputs[0].name
    for t in range(events.shape[1]):
        steps.append({"x": np.ascontiguousarray(events[:, t])})
        expected.append({name: _out(plan, predict(adapted[:, t]))})
    return Reference(steps, expected)


def _window(plan: Plan, predict: Predict, events: Array) -> Reference:
    b, n = events.shape[:2]
    w = plan.window
    adapted = _adapt(plan, events)
    padded = np.concatenate([np.zeros((b, w - 1, *adapted.shape[2:]), np.float32), adapted], 1)
    # Every window of every stream in one predict call: [N * B, W, ...].
    windows = np.stack([padded[:, t : t + w] for t in range(n)])
    y = _out(plan, predict(windows.reshape((n * b, *windows.shape[2:]))))
    y = y.reshape((n, b, *y.shape[1:]))
    name = plan.spec.outputs[0].name
    steps = [{"x": np.ascontiguousarray(events[:, t])} for t in range(n)]
    expected = [
        {name: y[t], "warming_up": np.full((b, 1), float(t + 1 < w), np.float32)} for t in range(n)
    ]
    return Reference(steps, expected)


def _stateful(plan: Plan, predict: Predict, events: Array) -> Reference:
    n = events.shape[1]
    adapted = _adapt(plan, events)
    name = plan.spec.outputs[0].name
    steps = [{"x": np.ascontiguousarray(events[:, t])} for t in range(n)]
    expected: list[dict[str, Array]] = []
    for t in range(n):
        try:
            expected.append({name: _out(plan, predict(adapted[:, : t + 1]))})
        except (ValueError, RuntimeError):
            # A model built for a fixed length accepts only that length: compare there.
            expected.append({})
    if not any(expected):
        raise ValueError("keras accepts no prefix of the parity sequence; give a sample")
    return Reference(steps, expected)


def _vocab(plan: Plan) -> int:
    chain = getattr(plan.step, "chain", None)
    for block in getattr(chain, "blocks", []):
        if isinstance(block, Embedding):
            return block.vocab
    raise ValueError("a sentiment model needs an Embedding layer first")


def _tokens(
    plan: Plan,
    predict: Predict,
    rng: np.random.Generator,
    sample: Array | None,
    opts: ImportOptions,
) -> Reference:
    if sample is None:
        rows = [rng.integers(1, _vocab(plan), size=int(rng.integers(5, 60))) for _ in range(BATCH)]
    else:
        rows = [np.asarray(r)[np.asarray(r) != 0] for r in np.asarray(sample)]
    chunk = opts.chunk
    # Each row in chunks of random sizes (never above the model's chunk), so waves mix
    # lengths, and rows that have ended run on with length 0.
    parts: list[list[Array]] = []
    for r in rows:
        cuts: list[Array] = []
        i = 0
        while i < len(r):
            k = int(rng.integers(1, chunk + 1))
            cuts.append(r[i : i + k])
            i += k
        parts.append(cuts)
    n = max(len(p) for p in parts)
    steps: list[dict[str, Array]] = []
    expected: list[dict[str, Array]] = []
    seen = [0] * len(rows)
    for t in range(n):
        pieces = [p[t] if t < len(p) else np.zeros(0, np.int64) for p in parts]
        lengths = np.array([len(p) for p in pieces], np.int64)
        x = np.zeros((len(rows), max(1, int(lengths.max()))), np.int64)
        for i, p in enumerate(pieces):
            x[i, : len(p)] = p
            seen[i] += len(p)
        steps.append({"x": x, "lengths": lengths})
        expected.append({"positive": _prefix_outputs(plan, predict, rows, seen)})
    return Reference(steps, expected)


def _prefix_outputs(plan: Plan, predict: Predict, rows: list[Array], seen: list[int]) -> Array:
    """Keras on each row's tokens so far. With ``mask_zero`` one call: zeros padded in
    front are masked, so they change nothing; otherwise one call per row."""
    blocks = getattr(getattr(plan.step, "chain", None), "blocks", [])
    emb = next(b for b in blocks if isinstance(b, Embedding))
    if emb.mask_zero:
        width = max(seen)
        batch = np.zeros((len(rows), width), np.int64)
        for i, r in enumerate(rows):
            batch[i, width - seen[i] :] = r[: seen[i]]
        return _out(plan, predict(batch)).astype(np.float32)
    probs = [
        _out(plan, predict(np.asarray(r[:n], np.int64)[None]))
        for r, n in zip(rows, seen, strict=True)
    ]
    return np.concatenate(probs).astype(np.float32)
