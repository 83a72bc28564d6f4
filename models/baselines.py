"""Strong simple baselines for the forecasters, computed on the model cards' splits.

Sensor (fpp2 elecdemand, half-hourly demand): a forecast made at origin row ``t`` (after
seeing row ``t``) is for rows ``t + 1 .. t + H``. Baselines:

- seasonal naive: the same half-hour one day earlier, ``y[t + k - 48]``; its quantiles add
  the validation residual quantiles per horizon (a point forecast alone would be scored
  with all quantiles equal, which only flatters the model);
- ridge AR: 48 demand lags, temperature and workday at ``t`` and a one-hot half-hour of day,
  fitted on the training rows, penalty chosen on validation MAE (the issue's baseline);
- direct multi-horizon ridge: the same design, one ridge per horizon 1..48 (penalty chosen
  per horizon on validation), quantiles from validation residual quantiles per horizon.
  Its horizon-1 column is the ridge AR above.

Price (daily log returns per ticker): GARCH(1,1), GJR-GARCH(1,1) and EGARCH(1,1) from the
``arch`` package, zero mean, fitted by maximum likelihood on each ticker's training rows and
run one step ahead over the whole series with those parameters fixed.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from statecast.contract.calendar import HALF_HOURS_PER_DAY
from statecast.models.datasets import SplitBounds

log = logging.getLogger(__name__)

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]

QUANTILES: tuple[float, ...] = (0.1, 0.5, 0.9)
HORIZON = HALF_HOURS_PER_DAY
AR_LAGS = 48
PENALTIES: tuple[float, ...] = tuple(float(v) for v in np.logspace(-3, 4, 15))


# --- sensor origins ----------------------------------------------------------------------


def multi_origins(split: SplitBounds, part: str, horizon: int = HORIZON) -> I64:
    """Origins whose every target ``t + 1 .. t + horizon`` lies in ``part``."""
    lo, hi = {
        "train": (0, split.train_end),
        "val": (split.train_end, split.val_end),
        "test": (split.val_end, split.n),
    }[part]
    first = max(lo - 1, AR_LAGS - 1)
    return np.arange(first, hi - horizon, dtype=np.int64)


def horizon_targets(series: npt.ArrayLike, origins: I64, horizon: int = HORIZON) -> F64:
    """``[N, H]`` of ``series[t + k]`` for ``k = 1..H``."""
    s = np.asarray(series, np.float64)
    out: F64 = s[origins[:, None] + np.arange(1, horizon + 1)[None, :]]
    return out


# --- ridge -------------------------------------------------------------------------------


def ar_design(
    demand: npt.ArrayLike,
    temperature: npt.ArrayLike,
    workday: npt.ArrayLike,
    half_hour: npt.ArrayLike,
    origins: I64,
) -> F64:
    """Rows ``[48 demand lags, temperature, workday, one-hot half-hour of day]`` at origins."""
    d = np.asarray(demand, np.float64)
    lags = d[origins[:, None] - np.arange(AR_LAGS)[None, :]]
    hh = np.asarray(half_hour, np.int64)[origins]
    onehot = np.eye(HALF_HOURS_PER_DAY)[hh]
    temp = np.asarray(temperature, np.float64)[origins, None]
    work = np.asarray(workday, np.float64)[origins, None]
    out: F64 = np.concatenate([lags, temp, work, onehot], axis=1)
    return out


@dataclass(frozen=True)
class Ridge:
    """Multi-output ridge on standardised columns, unpenalised intercept."""

    mean: F64
    std: F64
    coef: F64  # [P, K]
    intercept: F64  # [K]

    def predict(self, x: npt.ArrayLike) -> F64:
        z = (np.asarray(x, np.float64) - self.mean) / self.std
        out: F64 = z @ self.coef + self.intercept
        return out


def fit_ridge(x: npt.ArrayLike, y: npt.ArrayLike, penalties: npt.ArrayLike) -> list[Ridge]:
    """One :class:`Ridge` per penalty (every output column shares the penalty)."""
    xa = np.asarray(x, np.float64)
    ya = np.asarray(y, np.float64)
    ya = ya[:, None] if ya.ndim == 1 else ya
    mean = xa.mean(axis=0)
    std = xa.std(axis=0)
    std = np.where(std > 1e-12, std, 1.0)
    z = (xa - mean) / std
    ymean = ya.mean(axis=0)
    gram = z.T @ z
    rhs = z.T @ (ya - ymean)
    eye = np.eye(gram.shape[0])
    return [
        Ridge(mean, std, np.linalg.solve(gram + float(lam) * eye, rhs), ymean)
        for lam in np.asarray(penalties, np.float64)
    ]


@dataclass(frozen=True)
class SensorSeries:
    """The raw columns the sensor baselines need, with the chronological split."""

    demand: F64
    temperature: F64
    workday: F64
    half_hour: I64
    split: SplitBounds


@dataclass(frozen=True)
class DirectRidge:
    """One ridge per horizon (penalty per horizon) and validation residual quantiles."""

    models: tuple[Ridge, ...]  # one per horizon, each with a single output column
    penalties: tuple[float, ...]
    residual_quantiles: F64  # [H, Q]

    def predict_mean(self, x: npt.ArrayLike) -> F64:
        out: F64 = np.concatenate([m.predict(x) for m in self.models], axis=1)
        return out

    def predict_quantiles(self, x: npt.ArrayLike) -> F64:
        mean = self.predict_mean(x)
        out: F64 = mean[:, :, None] + self.residual_quantiles[None, :, :]
        return out


def fit_direct_ridge(s: SensorSeries, horizon: int = HORIZON) -> DirectRidge:
    """Fit on train origins, pick each horizon's penalty by validation MAE."""
    design = {
        part: ar_design(s.demand, s.temperature, s.workday, s.half_hour, o)
        for part, o in (
            ("train", multi_origins(s.split, "train", horizon)),
            ("val", multi_origins(s.split, "val", horizon)),
        )
    }
    y_train = horizon_targets(s.demand, multi_origins(s.split, "train", horizon), horizon)
    y_val = horizon_targets(s.demand, multi_origins(s.split, "val", horizon), horizon)
    fits = fit_ridge(design["train"], y_train, PENALTIES)
    val_mae = np.stack([np.abs(f.predict(design["val"]) - y_val).mean(axis=0) for f in fits])
    best = val_mae.argmin(axis=0)  # [H]
    models = tuple(
        Ridge(
            fits[b].mean,
            fits[b].std,
            fits[b].coef[:, k : k + 1],
            fits[b].intercept[k : k + 1],
        )
        for k, b in enumerate(best)
    )
    ridge = DirectRidge(models, tuple(PENALTIES[b] for b in best), np.zeros((horizon, 0)))
    resid = y_val - ridge.predict_mean(design["val"])
    rq = np.quantile(resid, QUANTILES, axis=0).T  # [H, Q]
    return DirectRidge(models, ridge.penalties, rq)


def seasonal_naive(demand: npt.ArrayLike, origins: I64, horizon: int = HORIZON) -> F64:
    """``[N, H]``: the same half-hour one day before each target."""
    d = np.asarray(demand, np.float64)
    out: F64 = d[origins[:, None] + np.arange(1, horizon + 1)[None, :] - HALF_HOURS_PER_DAY]
    return out


def residual_quantiles(resid: npt.ArrayLike) -> F64:
    out: F64 = np.quantile(np.asarray(resid, np.float64), QUANTILES, axis=0).T
    return out


@dataclass(frozen=True)
class SensorBaselines:
    """Test-split forecasts ``[N, H, Q]`` of every sensor baseline, on the same origins."""

    origins: I64  # multi-horizon test origins
    target: F64  # [N, H]
    forecasts: dict[str, F64]  # name -> [N, H, Q]
    one_step_rows: I64  # every origin whose next row is in test (the cards' 2,628 points)
    one_step: dict[str, F64]  # name -> point forecast at one_step_rows
    penalties: tuple[float, ...]


def sensor_baselines(s: SensorSeries, horizon: int = HORIZON) -> SensorBaselines:
    ridge = fit_direct_ridge(s, horizon)
    test = multi_origins(s.split, "test", horizon)
    val = multi_origins(s.split, "val", horizon)
    x_test = ar_design(s.demand, s.temperature, s.workday, s.half_hour, test)
    sn_val_resid = horizon_targets(s.demand, val, horizon) - seasonal_naive(s.demand, val, horizon)
    sn_test = seasonal_naive(s.demand, test, horizon)
    one_rows = np.arange(s.split.val_end - 1, s.split.n - 1, dtype=np.int64)
    x_one = ar_design(s.demand, s.temperature, s.workday, s.half_hour, one_rows)
    d = s.demand
    return SensorBaselines(
        origins=test,
        target=horizon_targets(s.demand, test, horizon),
        forecasts={
            "seasonal-naive": sn_test[:, :, None] + residual_quantiles(sn_val_resid)[None],
            "seasonal-naive-point": np.repeat(sn_test[:, :, None], len(QUANTILES), axis=2),
            "direct-ridge": ridge.predict_quantiles(x_test),
        },
        one_step_rows=one_rows,
        one_step={
            "naive": d[one_rows],
            "seasonal-naive": d[one_rows + 1 - HALF_HOURS_PER_DAY],
            "ridge-ar": ridge.models[0].predict(x_one)[:, 0],
        },
        penalties=ridge.penalties,
    )


# --- price volatility --------------------------------------------------------------------

GARCH_MODELS: dict[str, dict[str, Any]] = {
    "garch": {"vol": "GARCH", "p": 1, "o": 0, "q": 1},
    "gjr-garch": {"vol": "GARCH", "p": 1, "o": 1, "q": 1},
    "egarch": {"vol": "EGARCH", "p": 1, "o": 1, "q": 1},
}
# arch's optimiser is happier with returns in percent; variances are scaled back.
_PCT = 100.0


@dataclass(frozen=True)
class VolatilityForecast:
    """One-step-ahead zero-mean Gaussian forecasts over a whole series."""

    log_var: F64  # [T]: log variance of returns[t + 1] given returns[.. t]
    params: dict[str, float]


def garch_forecast(returns: npt.ArrayLike, train_end: int, name: str) -> VolatilityForecast:
    """Fit ``name`` on ``returns[:train_end]``, then filter the whole series with it fixed."""
    from arch import arch_model

    r = np.asarray(returns, np.float64) * _PCT
    model = arch_model(r, mean="Zero", dist="normal", rescale=False, **GARCH_MODELS[name])
    fitted = model.fit(last_obs=train_end, disp="off", show_warning=False)
    fixed = model.fix(fitted.params)
    # conditional_volatility[t] is sigma of r[t] given r[.. t-1]; shift so that entry t
    # forecasts t + 1. The last row has no target and repeats its predecessor.
    sigma = np.asarray(fixed.conditional_volatility, np.float64) / _PCT
    nxt = np.concatenate([sigma[1:], sigma[-1:]])
    params = {k: float(v) for k, v in fitted.params.items()}
    return VolatilityForecast(log_var=2.0 * np.log(nxt), params=params)


def price_baselines(
    returns: Mapping[str, npt.ArrayLike], splits: Mapping[str, SplitBounds]
) -> dict[str, dict[str, VolatilityForecast]]:
    """``out[model][ticker]``, every GARCH-family model on every ticker."""
    return {
        name: {t: garch_forecast(r, splits[t].train_end, name) for t, r in returns.items()}
        for name in GARCH_MODELS
    }


def mean_skill(returns: npt.ArrayLike, split: SplitBounds) -> dict[str, float]:
    """Does a constant mean (train average) beat zero on test? Squared-error comparison."""
    r = np.asarray(returns, np.float64)
    mu = float(r[split.train].mean())
    test = r[split.test]
    mse_zero = float(np.mean(test**2))
    mse_mean = float(np.mean((test - mu) ** 2))
    return {"train_mean": mu, "mse_zero": mse_zero, "mse_train_mean": mse_mean}
