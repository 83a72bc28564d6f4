"""Data windows and losses shared by the forecasters' training recipes.

- ``prepare_sensor`` / ``prepare_price``: the cards' chronological splits of fpp2 elecdemand
  and of the four stocks' daily log returns, with normalisation fitted on training rows.
- ``train_windows`` / ``eval_item``: windows inside the training rows (a warm-up part that
  only advances the state, then scored steps) and whole-series validation items.
- ``point_loss`` / ``gaussian_loss``: losses of the generic :class:`RecurrentForecaster`
  (used by tests and by anyone training the generic module).

The shipped recipes live in ``forecast_sensor`` (``sensor_lstm``, ``sensor_rnn``: day-ahead
quantiles) and ``forecast_price`` (``price_gru``: recurrent volatility).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from statecast.models.datasets import (
    HALF_HOURS_PER_DAY,
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
from statecast.models.forecast import RecurrentForecaster, gaussian_nll

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
