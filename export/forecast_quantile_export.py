"""Export the day-ahead sensor forecasters (``sensor_lstm``, ``sensor_rnn``) as step models.

The step graph takes ``x [B, 5]``: the raw ``demand, temperature, workday`` of the event and
the two calendar features the codec derives from its ``ts`` (spec
``preprocess["derived_features"]``, computed by :mod:`statecast.contract.calendar`). It
returns ``demand [B, 48, 3]``: the next 48 half-hours (horizon k at ``ts + k * step_ms``)
at the quantiles named by the output's ``fields`` (``p10, p50, p90``), in GW.

State: ``h`` (and ``c``) ``[1, B, hidden]`` and ``window`` ``[1, B, 96]``, the ring buffer of
the last 48 normalised (demand, temperature) pairs, oldest first (documented in
``preprocess["state_layout"]``). Parity runs the ONNX step T=200 times carrying all of it
against the PyTorch model over the whole window (which builds its lags by unfolding the
sequence, a different code path from the step's shift).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import torch

from statecast.contract.calendar import MS_PER_HALF_HOUR
from statecast.contract.manifest import DEFAULT_MANIFEST, ManifestEntry, load_manifest, upsert_entry
from statecast.contract.paths import PACKAGE_ROOT
from statecast.contract.spec import ModelSpec, OutputSpec, StateSpec, TensorSpec
from statecast.export.parity import PARITY_STEPS, check_parity, window_parity
from statecast.export.step_export import export_step_model, manifest_entry
from statecast.models.forecast_quantile import WINDOW_STATE, QuantileForecaster, QuantileStep
from statecast.models.trainer import Checkpoint, load_checkpoint_as

log = logging.getLogger(__name__)

MODEL_VERSION = "2"
ONNX_DIR = PACKAGE_ROOT / "models" / "onnx"
CHECKPOINT_DIR = PACKAGE_ROOT / "models" / "checkpoints"
OUTPUT_NAME = "demand"

Array = npt.NDArray[Any]


def quantile_field(q: float) -> str:
    """``0.1 -> "p10"``."""
    return f"p{round(q * 100):d}"


def load_quantile_forecaster(path: Path) -> tuple[QuantileForecaster, Checkpoint]:
    return load_checkpoint_as(path, QuantileForecaster)


def quantile_spec(name: str, model: QuantileForecaster, ckpt: Checkpoint) -> ModelSpec:
    c = model.config
    meta = ckpt.meta
    states = tuple(StateSpec(s, c.layers, c.hidden) for s in c.recurrent_states)
    features = list(meta["features"])
    return ModelSpec(
        name=name,
        version=MODEL_VERSION,
        kind="forecast",
        inputs=(TensorSpec("x", "float32", (-1, c.n_features)),),
        outputs=(
            OutputSpec(
                name=OUTPUT_NAME,
                unit="GW",
                fields=tuple(quantile_field(q) for q in c.quantiles),
                description=(
                    f"electricity demand of the next {c.horizon} half-hours (horizon k at "
                    "ts + k * step_ms) at the quantiles named by fields"
                ),
            ),
        ),
        states=(*states, StateSpec(WINDOW_STATE, 1, c.window_size)),
        preprocess={
            "features": features,
            "derived_features": list(meta["derived_features"]),
            "normalisation": dict(meta["normalisation"]),
            "cell": c.cell,
            "horizon_steps": c.horizon,
            "step_ms": MS_PER_HALF_HOUR,
            "quantiles": list(c.quantiles),
            "state_layout": {
                WINDOW_STATE: {
                    "kind": "ring_buffer",
                    "steps": c.window,
                    "features": [features[i] for i in c.window_features],
                    "order": "oldest first, step-major",
                    "normalised": True,
                }
            },
        },
    )


def parity_windows(batch: int, steps: int = PARITY_STEPS) -> Array:
    """``[batch, steps, 5]`` real rows (values and calendar) from the test split."""
    from statecast.models.forecast_sensor import prepare_calendar_sensor

    data = prepare_calendar_sensor()
    s = data.x[data.split.val_end :]
    windows = [s[(i * 7) % (len(s) - steps) :][:steps] for i in range(batch)]
    return np.stack(windows).astype(np.float32)


def quantile_parity(model: QuantileForecaster, onnx_path: Path) -> float:
    def reference(x: Array) -> Array:
        with torch.no_grad():
            y, _ = model(torch.from_numpy(x))
        ref: Array = y.numpy()
        return ref

    return window_parity(onnx_path, parity_windows, reference, OUTPUT_NAME, onnx_path.name)


def export_quantile_forecaster(
    name: str,
    checkpoint: Path | None = None,
    onnx_path: Path | None = None,
    manifest: Path = DEFAULT_MANIFEST,
) -> ManifestEntry:
    model, ckpt = load_quantile_forecaster(checkpoint or CHECKPOINT_DIR / f"{name}.pt")
    spec = quantile_spec(name, model, ckpt)
    path = onnx_path or ONNX_DIR / f"{name}.onnx"
    export_step_model(QuantileStep(model), spec, path, doc=spec.outputs[0].description)
    diff = check_parity(quantile_parity(model, path), name)
    metrics = dict(cast(dict[str, Any], ckpt.meta.get("metrics", {})))
    # The per-horizon curves stay in the checkpoint and the card; the manifest keeps figures.
    metrics.pop("pinball_by_horizon", None)
    metrics["parity_max_abs_diff"] = float(f"{diff:.3g}")
    entry = manifest_entry(spec, path, metrics, root=manifest.resolve().parent.parent)
    upsert_entry(entry, manifest)
    return entry


def export_sensor_lstm() -> ManifestEntry:
    return export_quantile_forecaster("sensor_lstm")


def export_sensor_rnn() -> ManifestEntry:
    return export_quantile_forecaster("sensor_rnn")


def _parity(name: str, onnx_path: Path | None) -> float:
    model, _ = load_quantile_forecaster(CHECKPOINT_DIR / f"{name}.pt")
    return quantile_parity(model, onnx_path or load_manifest()[name].onnx_path())


def parity_sensor_lstm(onnx_path: Path | None = None) -> float:
    return _parity("sensor_lstm", onnx_path)


def parity_sensor_rnn(onnx_path: Path | None = None) -> float:
    return _parity("sensor_rnn", onnx_path)
