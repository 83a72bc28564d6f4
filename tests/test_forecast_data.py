"""Forecast data: real data sets load, splits are chronological, nothing leaks across them."""

from __future__ import annotations

import numpy as np
import pytest

from statecast.models.datasets import (
    ALL_TICKERS,
    HALF_HOUR_MS,
    SENSOR_FEATURES,
    Normalisation,
    chronological_split,
    load_elecdemand,
    load_stock_prices,
)
from statecast.models.evaluate import point_metrics, rolling_volatility_log_var, scored_rows
from statecast.models.forecast_train import eval_item, prepare_price, prepare_sensor, train_windows

pytestmark = pytest.mark.unit


def test_elecdemand_is_the_half_hourly_2014_series() -> None:
    df = load_elecdemand()
    assert len(df) == 17_520
    assert list(df.columns) == ["ts", *SENSOR_FEATURES]
    assert set(np.diff(df["ts"].to_numpy()).tolist()) == {HALF_HOUR_MS}
    assert set(df["workday"].unique().tolist()) == {0, 1}
    assert 2.0 < df["demand"].mean() < 8.0  # GW, Victoria


def test_stock_prices_are_chronological_log_returns() -> None:
    prices = load_stock_prices()
    assert list(prices) == list(ALL_TICKERS)
    for ticker, frame in prices.items():
        assert list(frame.columns) == ["ts", "close", "log_return"], ticker
        assert frame["ts"].is_monotonic_increasing, ticker
        close = frame["close"].to_numpy()
        np.testing.assert_allclose(np.diff(np.log(close)), frame["log_return"].to_numpy()[1:])
        assert np.isfinite(frame["log_return"]).all(), ticker
    with pytest.raises(ValueError, match="unknown tickers"):
        load_stock_prices(["NOPE"])


def test_split_is_chronological_with_test_last() -> None:
    s = chronological_split(1000, 0.15, 0.15)
    assert (s.train.stop, s.val.start, s.val.stop, s.test.start, s.test.stop) == (
        700,
        700,
        850,
        850,
        1000,
    )
    with pytest.raises(ValueError, match="too short"):
        chronological_split(3, 0.15, 0.15)


def test_normalisation_is_fitted_on_training_rows_only() -> None:
    data = prepare_sensor()
    train_only = Normalisation.fit(data.x[: data.split.train_end])
    assert data.norm == train_only
    assert data.norm != Normalisation.fit(data.x)
    price = prepare_price()
    pooled = np.concatenate([r[: price.splits[t].train_end] for t, r in price.returns.items()])
    assert price.norm == Normalisation.fit(pooled)


def test_training_windows_never_reach_past_the_training_split() -> None:
    n, end = 500, 350
    rows = np.arange(n, dtype=np.float64)
    items = train_windows(rows, rows, end, burn_in=10, length=40, stride=7)
    assert items
    for x, y, mask in items:
        assert float(x.max()) < end
        assert float(y.max()) < end
        np.testing.assert_array_equal(y[:, 0].numpy(), x[:, 0].numpy() + 1)
        assert float(mask[:10].sum()) == 0
        assert float(mask[10:].min()) == 1


def test_validation_item_scores_only_validation_targets() -> None:
    split = chronological_split(200, 0.15, 0.15)
    rows = np.arange(200, dtype=np.float64)
    _x, y, mask = eval_item(rows, rows, split, "val")
    scored = y[:, 0].numpy()[mask.numpy() > 0]
    assert scored.min() == split.train_end
    assert scored.max() == split.val_end - 1
    assert float(y.max()) < split.val_end


def test_test_points_are_the_test_split_targets() -> None:
    split = chronological_split(200, 0.15, 0.15)
    t = scored_rows(split)
    assert (t + 1).min() == split.val_end
    assert (t + 1).max() == split.n - 1


def test_point_baselines_use_the_same_points() -> None:
    series = np.array([0.0, 1, 2, 3, 4, 5, 6, 7])
    pred = series + 1.5  # forecast of series[t + 1] made at t: off by 0.5
    m = point_metrics(pred, series, np.array([4, 5, 6]), season=4)
    assert m.test_mae == pytest.approx(0.5)
    assert m.naive_mae == pytest.approx(1.0)
    assert m.seasonal_naive_mae == pytest.approx(4.0)
    assert m.baseline == "naive"
    assert m.baseline_mae == pytest.approx(1.0)
    assert m.improvement == pytest.approx(0.5)


def test_rolling_volatility_uses_only_past_returns() -> None:
    r = np.array([0.1, -0.2, 0.3, -0.4, 0.5])
    lv = rolling_volatility_log_var(r, np.array([2, 4]), window=3)
    expected = [np.mean(r[0:3] ** 2), np.mean(r[2:5] ** 2)]
    np.testing.assert_allclose(np.exp(lv), expected)
