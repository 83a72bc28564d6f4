"""Parity: an ONNX step model run step by step, carrying state, against a reference.

The reference is the PyTorch model run over the whole sequence at once; the contract says
they agree within :data:`PARITY_TOLERANCE` absolute on every prediction output.

:func:`step_parity` is model-agnostic: give it the per-step non-state inputs (a list of
T dicts, batch axis first) and the expected outputs per step (a list of T dicts). It
starts from zero states, feeds each step's ``state_out.*`` back as the next
``state_in.*``, and returns the largest absolute difference over all steps and outputs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from statecast.contract.spec import ModelSpec

log = logging.getLogger(__name__)

PARITY_TOLERANCE = 1e-4
PARITY_STEPS = 200
PARITY_BATCHES = (1, 64)

Array = npt.NDArray[Any]


class ParityError(AssertionError):
    """The ONNX step model does not reproduce the reference."""


def open_session(path: Path) -> tuple[Any, ModelSpec]:
    """A CPU onnxruntime session (the worker's builder, one thread) and the spec it carries."""
    from statecast.worker.inference import build_session

    sess = build_session(path)
    spec = ModelSpec.from_metadata(dict(sess.get_modelmeta().custom_metadata_map))
    return sess, spec


def run_steps(
    sess: Any, spec: ModelSpec, steps: Sequence[Mapping[str, Array]]
) -> list[dict[str, Array]]:
    """Run the step model over ``steps`` from a zero state; the outputs of every step."""
    if not steps:
        return []
    batch = int(np.asarray(next(iter(steps[0].values()))).shape[0])
    state = {s.input_name: np.zeros((s.layers, batch, s.hidden), np.float32) for s in spec.states}
    out_names = [o.name for o in spec.outputs] + [s.output_name for s in spec.states]
    results: list[dict[str, Array]] = []
    for step in steps:
        values = sess.run(out_names, {**step, **state})
        named = dict(zip(out_names, values, strict=True))
        state = {s.input_name: named[s.output_name] for s in spec.states}
        results.append({o.name: named[o.name] for o in spec.outputs})
    return results


def step_parity(
    path: Path,
    steps: Sequence[Mapping[str, Array]],
    expected: Sequence[Mapping[str, Array]],
) -> float:
    """Max abs difference between the ONNX step outputs and ``expected``, step by step."""
    if len(steps) != len(expected):
        raise ValueError(f"{len(steps)} steps but {len(expected)} expected outputs")
    sess, spec = open_session(path)
    got = run_steps(sess, spec, steps)
    worst = 0.0
    for got_t, exp_t in zip(got, expected, strict=True):
        for name, value in exp_t.items():
            diff = np.abs(got_t[name].astype(np.float64) - np.asarray(value, np.float64))
            worst = max(worst, float(diff.max(initial=0.0)))
            if not np.isfinite(diff).all():
                return float("inf")
    return worst


def sequence_steps(name: str, x: Array) -> list[dict[str, Array]]:
    """Split ``x`` ``[B, T, ...]`` into T step inputs ``{name: x[:, t]}``."""
    return [{name: np.ascontiguousarray(x[:, t])} for t in range(x.shape[1])]


def chunk_steps(
    texts: Sequence[npt.NDArray[np.int64]], chunk: int, pad_id: int = 0
) -> list[dict[str, Array]]:
    """Steps ``{x, lengths}`` feeding each text ``chunk`` tokens at a time, batched: ``x``
    padded with ``pad_id``; a text that has ended gets length 0 (its state must not move)."""
    n_steps = max(-(-len(t) // chunk) for t in texts)
    steps = []
    for k in range(n_steps):
        parts = [t[k * chunk : (k + 1) * chunk] for t in texts]
        lengths = np.array([len(p) for p in parts], dtype=np.int64)
        x = np.full((len(texts), max(1, int(lengths.max()))), pad_id, dtype=np.int64)
        for i, p in enumerate(parts):
            x[i, : len(p)] = p
        steps.append({"x": x, "lengths": lengths})
    return steps


def window_parity(
    onnx_path: Path,
    windows: Callable[[int], Array],
    reference: Callable[[Array], Array],
    output: str,
    label: str,
    batches: Sequence[int] = PARITY_BATCHES,
) -> float:
    """Worst abs diff, over ``batches``, of a model whose only non-state input is ``x``:
    the ONNX step run over each window ``windows(batch)`` ``[B, T, F]`` one row at a time
    against ``reference(window)`` ``[B, T, ...]`` (the model over the whole window), on
    the prediction ``output``. Takes a callable, not a module, so this file needs no torch
    (``statecast models`` verifies without the train extra)."""
    worst = 0.0
    for batch in batches:
        x = windows(batch)
        ref = reference(x)
        expected = [{output: ref[:, t]} for t in range(x.shape[1])]
        diff = step_parity(onnx_path, sequence_steps("x", x), expected)
        log.info("%s parity at batch %d, T=%d: %.3g", label, batch, x.shape[1], diff)
        worst = max(worst, diff)
    return worst


def check_parity(diff: float, what: str, tolerance: float = PARITY_TOLERANCE) -> float:
    """``diff`` when within tolerance, else :class:`ParityError`."""
    if not diff <= tolerance:
        raise ParityError(f"{what}: parity max abs diff {diff:.3g} exceeds {tolerance:g}")
    return diff
