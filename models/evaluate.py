"""Held-out evaluation of the forecasters, with baselines computed on the same points.

A forecast made at row ``t`` is for row ``t + 1``; a point belongs to the split that holds
its target row. The model is run over the whole series from a zero state, as the worker
would serve it, so the state entering the test split has seen train and validation rows;
only predictions whose target lies in the test split are scored.

- Point forecasts (sensor): MAE against naive (value at ``t``) and seasonal naive (value
  one season before the target, ``t + 1 - season``); the baseline is the better of them.
- Gaussian forecasts (price): mean NLL against a zero-mean Gaussian whose variance is the
  mean square of the last ``window`` returns known at ``t`` (20-day rolling volatility).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from statecast.models.datasets import SplitBounds
from statecast.models.forecast import RecurrentForecaster

FloatArray = npt.NDArray[np.float64]
LOG_2PI = math.log(2.0 * math.pi)


def run_series(model: RecurrentForecaster, x: npt.ArrayLike) -> FloatArray:
    """Predictions ``[T, O]`` of ``model`` over raw features ``x`` ``[T, F]``, zero state."""
    model.eval()
    with torch.no_grad():
        y, _ = model(torch.as_tensor(np.asarray(x, np.float32))[None])
    out: FloatArray = y[0].double().numpy()
    return out


def scored_rows(split: SplitBounds) -> npt.NDArray[np.int64]:
    """Input rows ``t`` whose target row ``t + 1`` lies in the test split."""
    return np.arange(split.val_end - 1, split.n - 1, dtype=np.int64)


@dataclass(frozen=True)
class PointMetrics:
    test_mae: float
    baseline_mae: float
    baseline: str
    naive_mae: float
    seasonal_naive_mae: float
    points: int

    @property
    def improvement(self) -> float:
        """Fraction by which the model's MAE is below the baseline's (0.25 = 25% below)."""
        return 1.0 - self.test_mae / self.baseline_mae

    def to_dict(self) -> dict[str, Any]:
        return {
            "test_mae": round(self.test_mae, 6),
            "baseline_mae": round(self.baseline_mae, 6),
            "baseline": self.baseline,
            "naive_mae": round(self.naive_mae, 6),
            "seasonal_naive_mae": round(self.seasonal_naive_mae, 6),
            "improvement_vs_baseline": round(self.improvement, 4),
            "test_points": self.points,
        }


def point_metrics(
    pred: npt.ArrayLike, series: npt.ArrayLike, rows: npt.ArrayLike, season: int
) -> PointMetrics:
    """``pred[t]`` forecasts ``series[t + 1]``; scored at input rows ``rows``."""
    p = np.asarray(pred, np.float64).reshape(-1)
    s = np.asarray(series, np.float64)
    t = np.asarray(rows, np.int64)
    if t.min(initial=season) < season - 1:
        raise ValueError("seasonal naive needs a full season before every scored point")
    target = s[t + 1]
    mae = float(np.mean(np.abs(p[t] - target)))
    naive = float(np.mean(np.abs(s[t] - target)))
    seasonal = float(np.mean(np.abs(s[t + 1 - season] - target)))
    name, base = ("naive", naive) if naive <= seasonal else (f"seasonal-naive-{season}", seasonal)
    return PointMetrics(mae, base, name, naive, seasonal, int(t.size))


def gaussian_nll_np(
    mean: npt.ArrayLike, log_var: npt.ArrayLike, target: npt.ArrayLike
) -> FloatArray:
    m, lv, y = (np.asarray(a, np.float64) for a in (mean, log_var, target))
    out: FloatArray = 0.5 * (LOG_2PI + lv + (y - m) ** 2 * np.exp(-lv))
    return out


def rolling_volatility_log_var(
    returns: npt.ArrayLike, rows: npt.ArrayLike, window: int
) -> FloatArray:
    """log of the mean square of ``returns[t - window + 1 .. t]`` for each ``t`` in ``rows``."""
    r = np.asarray(returns, np.float64)
    t = np.asarray(rows, np.int64)
    if t.min(initial=window) < window - 1:
        raise ValueError("rolling volatility needs a full window before every scored point")
    csum = np.concatenate([[0.0], np.cumsum(r * r)])
    ms = (csum[t + 1] - csum[t + 1 - window]) / window
    out: FloatArray = np.log(np.maximum(ms, 1e-12))
    return out


@dataclass(frozen=True)
class GaussianMetrics:
    test_nll: float
    baseline_nll: float
    baseline: str
    points: int
    per_series: dict[str, dict[str, float]]

    def to_dict(self) -> dict[str, Any]:
        return {
            "test_nll": round(self.test_nll, 6),
            "baseline_nll": round(self.baseline_nll, 6),
            "baseline": self.baseline,
            "test_points": self.points,
            "per_series": {
                k: {m: round(v, 6) for m, v in d.items()} for k, d in self.per_series.items()
            },
        }


def gaussian_metrics(
    series: Mapping[str, tuple[FloatArray, npt.ArrayLike, npt.ArrayLike]], window: int
) -> GaussianMetrics:
    """``series[name] = (pred [T, 2] (mean, log_var), returns, scored rows)``; pooled means."""
    model_all: list[FloatArray] = []
    base_all: list[FloatArray] = []
    per: dict[str, dict[str, float]] = {}
    for name, (pred, returns, rows) in series.items():
        r = np.asarray(returns, np.float64)
        t = np.asarray(rows, np.int64)
        target = r[t + 1]
        nll = gaussian_nll_np(pred[t, 0], pred[t, 1], target)
        base = gaussian_nll_np(0.0, rolling_volatility_log_var(r, t, window), target)
        model_all.append(nll)
        base_all.append(base)
        per[name] = {"test_nll": float(nll.mean()), "baseline_nll": float(base.mean())}
    m = np.concatenate(model_all)
    b = np.concatenate(base_all)
    return GaussianMetrics(
        test_nll=float(m.mean()),
        baseline_nll=float(b.mean()),
        baseline=f"zero-mean-gaussian-rolling-{window}d-volatility",
        points=int(m.size),
        per_series=per,
    )


# --- multi-horizon quantile forecasts ----------------------------------------------------


def pinball(pred: npt.ArrayLike, target: npt.ArrayLike, quantiles: npt.ArrayLike) -> FloatArray:
    """Pinball (quantile) loss per point: ``pred [..., Q]`` against ``target [...]``."""
    p = np.asarray(pred, np.float64)
    y = np.asarray(target, np.float64)[..., None]
    q = np.asarray(quantiles, np.float64)
    err = y - p
    out: FloatArray = np.maximum(q * err, (q - 1.0) * err)
    return out


@dataclass(frozen=True)
class QuantileMetrics:
    """Scores of ``[origins, horizons, quantiles]`` forecasts against ``[origins, horizons]``.

    The quantiles must include 0.1, 0.5 and 0.9: the one-step MAE is that of the median at
    horizon 1 and the 80% interval is [p10, p90].
    """

    mean_pinball: float
    mae_h1: float
    mae_p50: float  # over every horizon
    coverage80: float
    coverage80_h48: float  # at the last horizon
    pinball_by_horizon: tuple[float, ...]
    origins: int

    def to_dict(self, prefix: str = "") -> dict[str, Any]:
        return {
            f"{prefix}mean_pinball": round(self.mean_pinball, 6),
            f"{prefix}mae_h1": round(self.mae_h1, 6),
            f"{prefix}mae_p50": round(self.mae_p50, 6),
            f"{prefix}coverage80": round(self.coverage80, 4),
            f"{prefix}coverage80_last": round(self.coverage80_h48, 4),
        }


def quantile_metrics(
    pred: npt.ArrayLike, target: npt.ArrayLike, quantiles: tuple[float, ...]
) -> QuantileMetrics:
    p = np.asarray(pred, np.float64)
    y = np.asarray(target, np.float64)
    qs = list(quantiles)
    lo, mid, hi = qs.index(0.1), qs.index(0.5), qs.index(0.9)
    loss = pinball(p, y, quantiles)  # [N, H, Q]
    inside = (y >= p[..., lo]) & (y <= p[..., hi])
    return QuantileMetrics(
        mean_pinball=float(loss.mean()),
        mae_h1=float(np.mean(np.abs(p[:, 0, mid] - y[:, 0]))),
        mae_p50=float(np.mean(np.abs(p[..., mid] - y))),
        coverage80=float(inside.mean()),
        coverage80_h48=float(inside[:, -1].mean()),
        pinball_by_horizon=tuple(float(v) for v in loss.mean(axis=(0, 2))),
        origins=int(p.shape[0]),
    )


# --- value at risk -----------------------------------------------------------------------

Z_99 = 2.3263478740408408  # standard normal 99% quantile
Z_975 = 1.959963984540054  # two-sided 95%


@dataclass(frozen=True)
class VaRBacktest:
    """1-day 99% VaR breaches (return below mean - z99 sd) and Kupiec's unconditional test."""

    points: int
    breaches: int
    expected: float
    kupiec_lr: float
    kupiec_p: float
    coverage95: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "var99_breaches": self.breaches,
            "var99_expected": round(self.expected, 2),
            "kupiec_lr": round(self.kupiec_lr, 4),
            "kupiec_p": round(self.kupiec_p, 4),
            "coverage95": round(self.coverage95, 4),
        }


def kupiec_lr(n: int, x: int, p: float) -> float:
    """Kupiec's likelihood ratio for ``x`` breaches in ``n`` days at breach rate ``p``."""

    def loglik(rate: float) -> float:
        # 0 * log(0) is 0: a rate of 0 or 1 is the limit of the likelihood, not -inf.
        a = (n - x) * math.log(1.0 - rate) if n > x else 0.0
        b = x * math.log(rate) if x > 0 else 0.0
        return a + b

    return max(0.0, -2.0 * (loglik(p) - loglik(x / n)))


def var_backtest(mean: npt.ArrayLike, log_var: npt.ArrayLike, target: npt.ArrayLike) -> VaRBacktest:
    from scipy.stats import chi2

    m, lv, y = (np.asarray(a, np.float64) for a in (mean, log_var, target))
    sd = np.exp(0.5 * lv)
    n = int(y.size)
    x = int(np.sum(y < m - Z_99 * sd))
    lr = kupiec_lr(n, x, 0.01)
    return VaRBacktest(
        points=n,
        breaches=x,
        expected=0.01 * n,
        kupiec_lr=lr,
        kupiec_p=float(chi2.sf(lr, 1)),
        coverage95=float(np.mean(np.abs(y - m) <= Z_975 * sd)),
    )
