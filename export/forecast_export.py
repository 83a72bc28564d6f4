"""Export ``price_gru`` (v2, the recurrent volatility model) as an ONNX step model.

The step takes ``x [B, 1]``, the raw daily log return, and returns ``return_next [B, 2]``
with fields ``mean`` (always 0: the mean has no skill, see ``models/forecast_vol.py``) and
``log_var``, the log variance of the next day's log return. State: ``h [1, B, 16]`` (the
GRU) and ``var [1, B, 5]`` (four EWMAs and one GJR-GARCH recursion, as deviations from the
prior variance). Parity runs the ONNX step 200 times carrying state against the PyTorch
model over the whole window, on real test-split returns, at batch 1 and 64.

The sensor forecasters live in :mod:`statecast.export.forecast_quantile_export`.
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
from statecast.export.parity import PARITY_STEPS, check_parity, window_parity
from statecast.export.step_export import export_step_model, manifest_entry
from statecast.models.forecast_vol import VolatilityForecaster, VolatilityStep
from statecast.models.trainer import Checkpoint, load_checkpoint_as

log = logging.getLogger(__name__)

MODEL_VERSION = "2"
ONNX_DIR = PACKAGE_ROOT / "models" / "onnx"
CHECKPOINT_DIR = PACKAGE_ROOT / "models" / "checkpoints"
PRICE_NAME = "price_gru"

Array = npt.NDArray[Any]

PRICE_OUTPUT = OutputSpec(
    name="return_next",
    unit="log-return",
    fields=("mean", "log_var"),
    description=(
        "next daily close-to-close log return as a Gaussian: mean (zero: no skill) and log variance"
    ),
)


def load_vol_forecaster(path: Path) -> tuple[VolatilityForecaster, Checkpoint]:
    return load_checkpoint_as(path, VolatilityForecaster)


def price_spec(model: VolatilityForecaster, ckpt: Checkpoint) -> ModelSpec:
    c = model.config
    return ModelSpec(
        name=PRICE_NAME,
        version=MODEL_VERSION,
        kind="forecast",
        inputs=(TensorSpec("x", "float32", (-1, 1)),),
        outputs=(PRICE_OUTPUT,),
        states=(StateSpec("h", 1, c.hidden), StateSpec("var", 1, c.n_recursions)),
        preprocess={
            "features": list(ckpt.meta["features"]),
            "normalisation": dict(ckpt.meta["normalisation"]),
            "cell": "gru",
            "horizon_steps": 1,
            "mean_model": "zero",
            "state_layout": {
                "var": {
                    "kind": "variance_recursions",
                    "entries": [f"ewma_{d:g}" for d in c.init_decays] + ["gjr_garch"],
                    "stored_as": "deviation from prior_var",
                    "prior_var": c.prior_var,
                }
            },
        },
    )


def parity_windows(batch: int, steps: int = PARITY_STEPS) -> Array:
    """``[batch, steps, 1]`` real daily log returns from each ticker's test split."""
    from statecast.models.forecast_train import prepare_price

    price = prepare_price()
    series = [r[price.splits[t].val_end :, None] for t, r in price.returns.items()]
    windows = []
    for i in range(batch):
        s = series[i % len(series)]
        start = (i * 7) % max(len(s) - steps, 1)
        windows.append(s[start : start + steps])
    return np.stack(windows).astype(np.float32)


def price_parity(model: VolatilityForecaster, onnx_path: Path) -> float:
    def reference(x: Array) -> Array:
        with torch.no_grad():
            y, _ = model(torch.from_numpy(x))
        ref: Array = y.numpy()
        return ref

    return window_parity(onnx_path, parity_windows, reference, PRICE_OUTPUT.name, PRICE_NAME)


def export_price_gru(
    checkpoint: Path | None = None,
    onnx_path: Path | None = None,
    manifest: Path = DEFAULT_MANIFEST,
) -> ManifestEntry:
    model, ckpt = load_vol_forecaster(checkpoint or CHECKPOINT_DIR / f"{PRICE_NAME}.pt")
    spec = price_spec(model, ckpt)
    path = onnx_path or ONNX_DIR / f"{PRICE_NAME}.onnx"
    export_step_model(VolatilityStep(model), spec, path, doc=PRICE_OUTPUT.description)
    diff = check_parity(price_parity(model, path), PRICE_NAME)
    metrics = dict(cast(dict[str, Any], ckpt.meta.get("metrics", {})))
    metrics["parity_max_abs_diff"] = float(f"{diff:.3g}")
    entry = manifest_entry(spec, path, metrics, root=manifest.resolve().parent.parent)
    upsert_entry(entry, manifest)
    return entry


def parity_price_gru(onnx_path: Path | None = None) -> float:
    model, _ = load_vol_forecaster(CHECKPOINT_DIR / f"{PRICE_NAME}.pt")
    return price_parity(model, onnx_path or load_manifest()[PRICE_NAME].onnx_path())
