"""Parity references on disk: one ``.npz`` (no pickle) beside an imported ONNX file.

Each reference is a sequence of step inputs (worker-shaped, batch first) and the outputs
Keras gave for them. ``statecast models verify`` replays them through onnxruntime from a
zero state, so checking an imported model needs neither keras nor torch.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

Array = np.ndarray[Any, Any]


@dataclass(frozen=True)
class Reference:
    steps: list[dict[str, Array]]
    expected: list[dict[str, Array]]


def save_reference(path: Path, refs: Sequence[Reference]) -> None:
    arrays: dict[str, Array] = {}
    for i, r in enumerate(refs):
        for t, (step, exp) in enumerate(zip(r.steps, r.expected, strict=True)):
            for k, v in step.items():
                arrays[f"{i}/{t}/in/{k}"] = v
            for k, v in exp.items():
                arrays[f"{i}/{t}/out/{k}"] = v
    tmp = path.with_suffix(".tmp.npz")
    # np.savez stamps every member with the current time; a fixed stamp makes the same
    # reference the same bytes, so re-importing a model leaves its sha256 alone.
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        for key, value in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(value), allow_pickle=False)
            info = zipfile.ZipInfo(key + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, buf.getvalue())
    tmp.replace(path)


def load_reference(path: Path) -> list[Reference]:
    with np.load(path, allow_pickle=False) as data:
        keys = list(data.keys())
        sets: dict[int, dict[int, tuple[dict[str, Array], dict[str, Array]]]] = {}
        for key in keys:
            i, t, io, name = key.split("/", 3)
            step = sets.setdefault(int(i), {}).setdefault(int(t), ({}, {}))
            step[0 if io == "in" else 1][name] = data[key]
    refs: list[Reference] = []
    for i in sorted(sets):
        ts = sorted(sets[i])
        refs.append(Reference([sets[i][t][0] for t in ts], [sets[i][t][1] for t in ts]))
    return refs
