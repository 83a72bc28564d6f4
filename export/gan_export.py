"""Export the ``gan_demand`` generator as ONNX (kind ``synthesis``) for the load tool.

The graph (:class:`statecast.models.gan.GeneratorExport`) takes ``x`` ``[B, 49]`` float32,
the raw condition (48 half-hourly temperatures in degC, then the workday flag 0/1), and
``z`` ``[B, noise_dim]`` float32 standard-normal noise, and returns ``demand`` ``[B, 48]``
in GW. It has no state: the load tool runs it once per synthetic day and stream, with
onnxruntime only (no torch at load time). Only the generator is exported; the
discriminator stays in the checkpoint.

Parity: the ONNX generator against the PyTorch generator on seeded conditions and noise,
batches 1 and 256, within the contract's 1e-4.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from statecast.contract.manifest import ManifestEntry
from statecast.contract.paths import PACKAGE_ROOT
from statecast.contract.spec import ModelSpec, OutputSpec, TensorSpec
from statecast.export.parity import check_parity, step_parity
from statecast.export.step_export import export_step_model, shipped_entry
from statecast.models.gan import COND, DAY, DemandGan, GeneratorExport
from statecast.models.trainer import load_checkpoint_as

log = logging.getLogger(__name__)

NAME = "gan_demand"
VERSION = "1"
MODELS_DIR = PACKAGE_ROOT / "models"
ONNX_PATH = MODELS_DIR / "onnx" / f"{NAME}.onnx"
CHECKPOINT_PATH = MODELS_DIR / "checkpoints" / f"{NAME}.pt"
STEP_MS = 30 * 60 * 1000
PARITY_SEED = 99


def load_gan(path: Path = CHECKPOINT_PATH) -> tuple[DemandGan, dict[str, Any]]:
    model, ckpt = load_checkpoint_as(path, DemandGan)
    return model, ckpt.meta


def build_spec(gan: DemandGan) -> ModelSpec:
    return ModelSpec(
        name=NAME,
        version=VERSION,
        kind="synthesis",
        inputs=(
            TensorSpec("x", "float32", (-1, COND)),
            TensorSpec("z", "float32", (-1, gan.config.noise_dim)),
        ),
        outputs=(
            OutputSpec(
                "demand",
                "GW",
                fields=tuple(f"hh{i:02d}" for i in range(DAY)),
                description="one synthetic day of half-hourly electricity demand",
            ),
        ),
        states=(),
        preprocess={
            "condition": [*(f"temperature_hh{i:02d}" for i in range(DAY)), "workday"],
            "condition_units": ["degC"] * DAY + ["0/1"],
            "noise_dim": gan.config.noise_dim,
            "noise": "standard normal",
            "day_steps": DAY,
            "step_ms": STEP_MS,
            "source": "fpp2 elecdemand (Victoria, 2014)",
        },
    )


def parity_inputs(gan: DemandGan, batch: int, seed: int) -> dict[str, np.ndarray[Any, Any]]:
    rng = np.random.default_rng(seed)
    temp = rng.normal(20.0, 6.0, size=(batch, DAY))
    workday = rng.integers(0, 2, size=(batch, 1))
    return {
        "x": np.concatenate([temp, workday], axis=1).astype(np.float32),
        "z": rng.standard_normal((batch, gan.config.noise_dim)).astype(np.float32),
    }


def parity_gan_demand(onnx_path: Path = ONNX_PATH, checkpoint: Path = CHECKPOINT_PATH) -> float:
    gan, _ = load_gan(checkpoint)
    export = GeneratorExport(gan).eval()
    worst = 0.0
    for batch in (1, 256):
        feeds = parity_inputs(gan, batch, PARITY_SEED + batch)
        with torch.no_grad():
            want = export(torch.from_numpy(feeds["x"]), torch.from_numpy(feeds["z"])).numpy()
        worst = max(worst, step_parity(onnx_path, [feeds], [{"demand": want}]))
    return worst


def export_gan_demand(
    onnx_path: Path = ONNX_PATH, checkpoint: Path = CHECKPOINT_PATH, manifest: bool = True
) -> ManifestEntry:
    gan, meta = load_gan(checkpoint)
    spec = build_spec(gan)
    example = (torch.zeros(2, COND), torch.zeros(2, gan.config.noise_dim))
    export_step_model(
        GeneratorExport(gan).eval(), spec, onnx_path, inputs=example, doc=__doc__ or ""
    )
    diff = check_parity(parity_gan_demand(onnx_path, checkpoint), NAME)
    real = meta.get("realism", {})
    metrics = {
        "two_sample_accuracy": real.get("two_sample_accuracy"),
        "two_sample_target": 0.5,
        "shape_ks": {k: v.get("ks") for k, v in real.get("shape", {}).items()},
        "lag1_within_day": real.get("lag1_within_day"),
        "lag48_year": real.get("lag48_year"),
        "held_out_days": real.get("held_out_days"),
        "train_seconds": meta.get("train_seconds"),
        "parity_max_abs_diff": diff,
    }
    entry = shipped_entry(spec, onnx_path, metrics, upsert=manifest)
    if not manifest:
        return entry
    log.info("exported %s: parity %.3g", NAME, diff)
    return entry
