"""Export the two forecasters as ONNX step models, check parity, write their manifest lines.

Each export rebuilds the model from its checkpoint alone, writes
``models/onnx/<name>.onnx`` with :func:`statecast.export.step_export.export_step_model`, runs parity
on real test-split windows (T=200 at batch 1 and 64) and upserts the manifest entry with the
test figures stored in the checkpoint plus ``parity_max_abs_diff``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import torch

from statecast.contract.manifest import DEFAULT_MANIFEST, ManifestEntry, load_manifest, upsert_entry
from statecast.contract.paths import PACKAGE_ROOT
from statecast.contract.spec import ModelSpec, OutputSpec, StateSpec, TensorSpec
from statecast.export.parity import (
    PARITY_BATCHES,
    PARITY_STEPS,
    check_parity,
    sequence_steps,
    step_parity,
)
from statecast.export.step_export import export_step_model, manifest_entry
from statecast.models.forecast import ForecastStep, RecurrentForecaster
from statecast.models.trainer import Checkpoint, load_checkpoint

log = logging.getLogger(__name__)

MODEL_VERSION = "1"
ONNX_DIR = PACKAGE_ROOT / "models" / "onnx"
CHECKPOINT_DIR = PACKAGE_ROOT / "models" / "checkpoints"
SENSOR_NAME = "sensor_lstm"
PRICE_NAME = "price_gru"

Array = npt.NDArray[Any]

_OUTPUTS: dict[str, OutputSpec] = {
    SENSOR_NAME: OutputSpec(
        name="demand_next",
        unit="GW",
        description="electricity demand forecast for the next half-hour",
    ),
    PRICE_NAME: OutputSpec(
        name="return_next",
        unit="log-return",
        fields=("mean", "log_var"),
        description="next daily close-to-close log return as a Gaussian: mean, log variance",
    ),
}


def load_forecaster(path: Path) -> tuple[RecurrentForecaster, Checkpoint]:
    model, ckpt = load_checkpoint(path)
    if not isinstance(model, RecurrentForecaster):
        raise TypeError(f"{path} holds a {type(model).__name__}, not a RecurrentForecaster")
    return model, ckpt


def forecast_spec(name: str, model: RecurrentForecaster, ckpt: Checkpoint) -> ModelSpec:
    """The step-model spec of a forecaster, from its checkpoint."""
    c = model.config
    meta = ckpt.meta
    return ModelSpec(
        name=name,
        version=MODEL_VERSION,
        kind="forecast",
        inputs=(TensorSpec("x", "float32", (-1, c.n_features)),),
        outputs=(_OUTPUTS[name],),
        states=tuple(StateSpec(s, c.layers, c.hidden) for s in c.state_names),
        preprocess={
            "features": list(meta["features"]),
            "normalisation": dict(meta["normalisation"]),
            "cell": c.cell,
            "horizon_steps": 1,
        },
    )


def parity_windows(name: str, batch: int, steps: int = PARITY_STEPS) -> Array:
    """``[batch, steps, F]`` raw feature windows from the test split of the model's data."""
    from statecast.models import forecast_train as ft

    if name == SENSOR_NAME:
        sensor = ft.prepare_sensor()
        series = [sensor.x[sensor.split.val_end :]]
    else:
        price = ft.prepare_price()
        series = [r[price.splits[t].val_end :, None] for t, r in price.returns.items()]
    windows = []
    for i in range(batch):
        s = series[i % len(series)]
        start = (i * 7) % max(len(s) - steps, 1)
        windows.append(s[start : start + steps])
    return np.stack(windows).astype(np.float32)


def forecaster_parity(name: str, model: RecurrentForecaster, onnx_path: Path) -> float:
    """Max abs diff of the ONNX step outputs over T=200 steps at batch 1 and 64."""
    out_name = _OUTPUTS[name].name
    worst = 0.0
    for batch in PARITY_BATCHES:
        x = parity_windows(name, batch)
        with torch.no_grad():
            y, _ = model(torch.from_numpy(x))
        ref = y.numpy()
        expected = [{out_name: ref[:, t]} for t in range(x.shape[1])]
        diff = step_parity(onnx_path, sequence_steps("x", x), expected)
        log.info("%s parity at batch %d, T=%d: %.3g", name, batch, x.shape[1], diff)
        worst = max(worst, diff)
    return worst


def export_forecaster(
    name: str,
    checkpoint: Path | None = None,
    onnx_path: Path | None = None,
    manifest: Path = DEFAULT_MANIFEST,
) -> ManifestEntry:
    model, ckpt = load_forecaster(checkpoint or CHECKPOINT_DIR / f"{name}.pt")
    spec = forecast_spec(name, model, ckpt)
    path = onnx_path or ONNX_DIR / f"{name}.onnx"
    export_step_model(ForecastStep(model), spec, path, doc=_OUTPUTS[name].description)
    diff = check_parity(forecaster_parity(name, model, path), name)
    metrics: dict[str, Any] = {
        k: v for k, v in cast(dict[str, Any], ckpt.meta.get("metrics", {})).items()
    }
    metrics["parity_max_abs_diff"] = float(f"{diff:.3g}")
    root = manifest.resolve().parent.parent
    entry = manifest_entry(spec, path, metrics, root=root)
    upsert_entry(entry, manifest)
    return entry


def _shipped_onnx(name: str) -> Path:
    return load_manifest()[name].onnx_path()


def export_sensor_lstm() -> ManifestEntry:
    return export_forecaster(SENSOR_NAME)


def export_price_gru() -> ManifestEntry:
    return export_forecaster(PRICE_NAME)


def parity_sensor_lstm(onnx_path: Path | None = None) -> float:
    model, _ = load_forecaster(CHECKPOINT_DIR / f"{SENSOR_NAME}.pt")
    return forecaster_parity(SENSOR_NAME, model, onnx_path or _shipped_onnx(SENSOR_NAME))


def parity_price_gru(onnx_path: Path | None = None) -> float:
    model, _ = load_forecaster(CHECKPOINT_DIR / f"{PRICE_NAME}.pt")
    return forecaster_parity(PRICE_NAME, model, onnx_path or _shipped_onnx(PRICE_NAME))
