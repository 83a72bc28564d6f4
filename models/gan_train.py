"""Train ``gan_demand`` (conditional GAN on elecdemand days) and measure its realism.

The Keras tutorial's recipe: alternate one discriminator step (real days labelled 0.9,
one-sided label smoothing, generated days 0) and one generator step (non-saturating loss),
Adam at 2e-4 with beta1 0.5, a fixed number of steps, seeded; plus a feature-matching
term for the generator (batch means of levels and half-hour changes). Real days reach the
discriminator with small Gaussian instance noise, so 292 days do not let it memorise; the
generator's step scores its days with the same noise added.

Realism (models/gan_realism.py) is measured on the held-out days: the generator gets each
held-out day's real temperature profile and workday flag and fresh noise, and its days are
compared with the real ones. Figures go into the checkpoint's meta (and from there into
the manifest) and the plot into ``models/cards/gan_demand.png``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from statecast.contract.paths import PACKAGE_ROOT
from statecast.models import gan_realism as realism
from statecast.models.gan import DemandGan, GanConfig, normalise_condition
from statecast.models.gan_data import Days, load_days, split_days
from statecast.models.trainer import count_parameters, save_checkpoint, seed_everything

log = logging.getLogger(__name__)

MODEL_NAME = "gan_demand"
CHECKPOINT_PATH = PACKAGE_ROOT / "models" / "checkpoints" / f"{MODEL_NAME}.pt"
PLOT_PATH = PACKAGE_ROOT / "models" / "cards" / f"{MODEL_NAME}.png"
EVAL_SEED = 1234


def synthesise(gan: DemandGan, conditions: np.ndarray[Any, Any], seed: int) -> np.ndarray[Any, Any]:
    """One synthetic day (GW) per raw condition row, noise from ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(len(conditions), gan.config.noise_dim, generator=gen)
    with torch.no_grad():
        out = gan.sample(z, torch.as_tensor(conditions, dtype=torch.float32))
    return out.numpy().astype(np.float64)


def evaluate_realism(
    gan: DemandGan, all_days: Days, held_out: Days, plot: Path | None
) -> dict[str, Any]:
    gan.eval()
    synth = synthesise(gan, held_out.conditions(), EVAL_SEED)
    # Lag 48 needs consecutive days: a synthetic year, one day per real day's condition
    # (as the load tool runs it), against the real year.
    year = synthesise(gan, all_days.conditions(), EVAL_SEED + 1)
    metrics: dict[str, Any] = {
        "held_out_days": len(held_out),
        "shape": realism.compare_shapes(held_out.demand, synth),
        "lag1_within_day": {
            "real": round(realism.within_day_lag1(held_out.demand), 4),
            "synth": round(realism.within_day_lag1(synth), 4),
        },
        "lag48_year": {
            "real": round(realism.autocorrelation(all_days.demand.ravel(), 48), 4),
            "synth": round(realism.autocorrelation(year.ravel(), 48), 4),
        },
        "lag1_year": {
            "real": round(realism.autocorrelation(all_days.demand.ravel(), 1), 4),
            "synth": round(realism.autocorrelation(year.ravel(), 1), 4),
        },
        "two_sample_accuracy": realism.two_sample_accuracy(held_out.demand, synth),
        "mean_abs_error_of_mean_profile_gw": round(
            float(np.abs(held_out.demand.mean(axis=0) - synth.mean(axis=0)).mean()), 4
        ),
    }
    if plot is not None:
        picks = np.linspace(0, len(held_out) - 1, 6).astype(int)
        samples = np.stack(
            [synthesise(gan, held_out.conditions()[picks], EVAL_SEED + 10 + j) for j in range(3)],
            axis=1,
        )
        labels = [
            f"day {int(held_out.index[i]) + 1} of 2014, "
            f"{'workday' if held_out.workday[i] else 'non-workday'}, "
            f"max {held_out.temperature[i].max():.0f} degC"
            for i in picks
        ]
        realism.plot_days(
            plot,
            held_out.demand[picks],
            samples,
            labels,
            realism.day_shape(held_out.demand),
            realism.day_shape(synth),
        )
    return metrics


def _features(days: torch.Tensor) -> torch.Tensor:
    """Levels and (scaled) half-hour changes of normalised days."""
    return torch.cat([days, (days[:, 1:] - days[:, :-1]) * 4.0], dim=1)


def train_gan_demand(
    epochs: int | None = None,
    seed: int = 0,
    max_seconds: float | None = None,
    progress: bool = True,
    steps: int = 10_000,
    batch: int = 64,
    lr: float = 2e-4,
    noise_dim: int = 16,
    hidden: int = 128,
    jitter: float = 0.02,
    smooth: float = 0.0,
    diffs: bool = True,
    feature_matching: float = 10.0,
    checkpoint: Path = CHECKPOINT_PATH,
    plot: Path | None = PLOT_PATH,
) -> Path:
    """``epochs`` (if given) overrides ``steps`` as passes over the training days."""
    torch.set_num_threads(1)
    seed_everything(seed)
    days = load_days()
    train, held_out = split_days(days)
    if epochs is not None:
        steps = max(1, epochs * len(train) // batch)
    config = GanConfig(
        noise_dim=noise_dim,
        hidden=hidden,
        smooth=smooth,
        diffs=diffs,
        demand_mean=float(train.demand.mean()),
        demand_std=float(train.demand.std()),
        temp_mean=float(train.temperature.mean()),
        temp_std=float(train.temperature.std()),
    )
    gan = DemandGan(config)
    g, d = gan.generator, gan.discriminator
    opt_g = torch.optim.Adam(g.parameters(), lr=lr, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(d.parameters(), lr=lr, betas=(0.5, 0.999))
    bce = nn.BCEWithLogitsLoss()
    real_days = torch.as_tensor(
        (train.demand - config.demand_mean) / config.demand_std, dtype=torch.float32
    )
    conds = normalise_condition(torch.as_tensor(train.conditions(), dtype=torch.float32), config)
    gen = torch.Generator().manual_seed(seed)
    start = time.monotonic()
    done = 0
    bar = tqdm(range(steps), desc=MODEL_NAME, unit="step", disable=not progress)
    for step in bar:
        idx = torch.randint(0, len(real_days), (batch,), generator=gen)
        cond = conds[idx]
        z = torch.randn(batch, noise_dim, generator=gen)
        fake = g(z, cond)
        # Instance noise: the discriminator sees real days with it (it cannot win on fine
        # detail it could only memorise from 292 days) and generated days as they are; the
        # generator is scored on its days with the same noise added.
        real = real_days[idx] + jitter * torch.randn(batch, real_days.shape[1], generator=gen)
        fake_seen = fake + jitter * torch.randn(batch, real_days.shape[1], generator=gen)
        gan.train()
        loss_d = bce(d(real, cond), torch.full((batch, 1), 0.9)) + bce(
            d(fake.detach(), cond), torch.zeros(batch, 1)
        )
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()
        loss_g = bce(d(fake_seen, cond), torch.ones(batch, 1))
        if feature_matching > 0:
            # Feature matching (Salimans et al. 2016) on fixed features: the batch means of
            # the levels and half-hour changes of generated days must match those of the
            # real days with the same conditions. Without it the generator kept small
            # systematic zigzags that a linear classifier spotted on every day.
            real_clean = real_days[idx]
            loss_g = loss_g + feature_matching * nn.functional.mse_loss(
                _features(fake).mean(dim=0), _features(real_clean).mean(dim=0)
            )
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        done = step + 1
        if done % 200 == 0:
            bar.set_postfix(d=f"{float(loss_d.detach()):.3f}", g=f"{float(loss_g.detach()):.3f}")
        if max_seconds is not None and time.monotonic() - start > max_seconds:
            break
    bar.close()
    seconds = time.monotonic() - start
    gan.eval()
    meta: dict[str, Any] = {
        "seed": seed,
        "steps": done,
        "batch": batch,
        "lr": lr,
        "jitter": jitter,
        "smooth": smooth,
        "diffs": diffs,
        "feature_matching": feature_matching,
        "train_days": len(train),
        "held_out_day_index": held_out.index.tolist(),
        "train_seconds": round(seconds, 1),
        "generator_parameters": count_parameters(g),
        "discriminator_parameters": count_parameters(d),
        "realism": evaluate_realism(gan, days, held_out, plot),
    }
    log.info("gan_demand: %s", meta["realism"])
    save_checkpoint(checkpoint, gan, config, meta)
    return checkpoint
