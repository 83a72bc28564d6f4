"""Day-ahead quantile sensor model, volatility model, calendar features and the codec."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from statecast.contract.calendar import day_of_week, derive, half_hour_of_day
from statecast.contract.spec import ModelSpec, OutputSpec, StateSpec, TensorSpec
from statecast.models.forecast_quantile import (
    QuantileConfig,
    QuantileForecaster,
    QuantileStep,
    calibrate_gaps,
)
from statecast.models.forecast_vol import VolatilityForecaster, VolatilityStep, VolConfig
from statecast.worker.codecs.base import Decoded, RawRecord, Rejected
from statecast.worker.codecs.forecast import ForecastCodec
from tests.fixtures.tiny_models import event

pytestmark = pytest.mark.unit

JAN1_2014 = 1_388_534_400_000  # a Wednesday, local midnight
HALF_HOUR = 1_800_000


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_calendar_features_of_known_timestamps() -> None:
    ts = np.array([JAN1_2014, JAN1_2014 + HALF_HOUR, JAN1_2014 + 47 * HALF_HOUR + 1])
    assert half_hour_of_day(ts).tolist() == [0, 1, 47]
    assert day_of_week(ts).tolist() == [2, 2, 2]  # Wednesday, Monday = 0
    assert day_of_week([JAN1_2014 + 5 * 86_400_000]).tolist() == [0]  # the next Monday
    assert half_hour_of_day([-1]).tolist() == [47]  # before 1970: still in range
    cols = derive(("day_of_week", "half_hour_of_day"), ts)
    assert cols.dtype == np.float32
    assert cols.tolist()[1] == [2.0, 1.0]
    with pytest.raises(ValueError, match="unknown derived"):
        derive(("moon_phase",), ts)


def _quantile_model(cell: str, seed: int = 0) -> QuantileForecaster:
    torch.manual_seed(seed)
    config = QuantileConfig(
        cell=cell,  # type: ignore[arg-type]
        n_values=3,
        calendar=(48, 7),
        window_features=(0, 1),
        window=6,
        horizon=5,
        hidden=8,
        mlp_hidden=16,
        feature_mean=(4.5, 18.0, 0.7),
        feature_std=(0.9, 5.0, 0.45),
    )
    return QuantileForecaster(config).eval()


def _rows(t: int, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    ts = JAN1_2014 + HALF_HOUR * np.arange(t)
    values = np.stack(
        [4.5 + rng.normal(size=t), 18 + 5 * rng.normal(size=t), (rng.random(t) < 0.7) * 1.0], 1
    )
    x = np.concatenate([values, derive(("half_hour_of_day", "day_of_week"), ts)], axis=1)
    return torch.as_tensor(x, dtype=torch.float32)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_quantile_step_equals_the_sequence_and_quantiles_never_cross(cell: str) -> None:
    model = _quantile_model(cell)
    x = torch.stack([_rows(40, 0), _rows(40, 1)])
    with torch.no_grad():
        y, final = model(x)
        step = QuantileStep(model)
        state = model.zero_state(2)
        outs = []
        for t in range(x.shape[1]):
            o = step(x[:, t], *state)
            outs.append(o[0])
            state = o[1:]
    assert y.shape == (2, 40, 5, 3)
    # The sequence builds lags by unfolding, the step by shifting its ring buffer.
    torch.testing.assert_close(torch.stack(outs, 1), y, atol=1e-5, rtol=0)
    for a, b in zip(final, state, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    assert bool((y[..., 0] <= y[..., 1]).all())
    assert bool((y[..., 1] <= y[..., 2]).all())


def test_ring_buffer_holds_the_last_window_of_normalised_inputs_oldest_first() -> None:
    model = _quantile_model("gru")
    x = _rows(10)[None]
    with torch.no_grad():
        _, state = model(x)
    window = state[-1].reshape(6, 2)  # [W, (demand, temperature)]
    z = (x[0, -6:, :2] - model.in_mean[:2]) / model.in_std[:2]
    torch.testing.assert_close(window, z)


def test_calibration_makes_the_interval_cover_its_level() -> None:
    model = _quantile_model("lstm")
    x = _rows(400)[None]
    with torch.no_grad():
        pred, _ = model(x)
    pred = pred[0]  # [T, H, Q]
    rng = np.random.default_rng(3)
    target = pred[..., 1] + torch.as_tensor(rng.normal(scale=2.0, size=pred.shape[:2])).float()
    scale = calibrate_gaps(model, pred, target)
    assert scale.shape == (5, 3)
    assert bool((scale[:, 1] == 1).all())
    with torch.no_grad():
        again, _ = model(x)
    inside = (target >= again[0, ..., 0]) & (target <= again[0, ..., 2])
    assert float(inside.float().mean()) == pytest.approx(0.8, abs=0.02)


def test_volatility_step_equals_the_sequence_and_a_new_stream_starts_at_the_prior() -> None:
    torch.manual_seed(0)
    model = VolatilityForecaster(VolConfig(prior_var=2e-4, return_std=0.014)).eval()
    with torch.no_grad():
        torch.nn.init.normal_(model.head.weight, std=0.5)  # a GRU term that matters
        r = 0.014 * torch.randn(3, 50, 1)
        y, _ = model(r)
        step = VolatilityStep(model)
        state = model.zero_state(3)
        outs = []
        for t in range(50):
            o = step(r[:, t], *state)
            outs.append(o[0])
            state = o[1:]
        torch.testing.assert_close(torch.stack(outs, 1), y, atol=1e-5, rtol=0)
        assert bool((y[..., 0] == 0).all())  # zero mean
        # A first return equal to the prior's sd moves no EWMA off the prior.
        first = model(torch.full((1, 1, 1), 2e-4**0.5))[1][1]
    np.testing.assert_allclose(first[0, 0, :-1].numpy(), 0.0, atol=1e-9)


def _calendar_spec(horizon: int = 3) -> ModelSpec:
    return ModelSpec(
        name="sensor_test",
        version="1",
        kind="forecast",
        inputs=(TensorSpec("x", "float32", (-1, 5)),),
        outputs=(OutputSpec("demand", "GW", ("p10", "p50", "p90")),),
        states=(StateSpec("h", 1, 4),),
        preprocess={
            "features": ["demand", "temperature", "workday"],
            "derived_features": ["half_hour_of_day", "day_of_week"],
            "horizon_steps": horizon,
        },
    )


def test_codec_appends_calendar_features_derived_from_the_event_ts() -> None:
    codec = ForecastCodec(_calendar_spec(), {}, Path("."))
    ts = JAN1_2014 + 5 * 86_400_000 + 13 * HALF_HOUR  # Monday 06:30
    values = {"workday": 1, "demand": 4.2, "temperature": 21.5}
    recs = [
        RawRecord("t", 0, 0, 0, b"m", event("m", ts, values)),
        RawRecord("t", 0, 1, 0, b"m", event("m", ts + HALF_HOUR, values)),
        RawRecord("t", 0, 2, 0, b"m", b'{"stream": "m", "ts": "noon", "values": {}}'),
    ]
    first, second, bad = codec.decode(recs)
    assert isinstance(first, Decoded)
    assert isinstance(second, Decoded)
    assert first.steps[0]["x"].tolist() == pytest.approx([4.2, 21.5, 1.0, 13.0, 0.0])
    assert second.steps[0]["x"].tolist()[3:] == [14.0, 0.0]
    assert isinstance(bad, Rejected)
    assert bad.reason == "wrong_type"


def test_codec_refuses_a_spec_with_an_unknown_derived_feature() -> None:
    spec = _calendar_spec()
    spec.preprocess["derived_features"] = ["moon_phase"]
    with pytest.raises(ValueError, match="moon_phase"):
        ForecastCodec(spec, {}, Path("."))


def test_multi_horizon_prediction_is_one_list_per_quantile() -> None:
    codec = ForecastCodec(_calendar_spec(), {}, Path("."))
    out = np.arange(2 * 3 * 3, dtype=np.float32).reshape(2, 3, 3)  # [B, H, Q]
    preds = codec.predictions({"demand": out})
    assert preds[0] == {
        "demand": {"p10": [0.0, 3.0, 6.0], "p50": [1.0, 4.0, 7.0], "p90": [2.0, 5.0, 8.0]}
    }
    assert preds[1]["demand"]["p50"] == [10.0, 13.0, 16.0]


def test_replayed_sensor_laps_keep_the_calendar_of_their_data() -> None:
    from statecast.loadtest.series import sensor_series

    (sensor,) = sensor_series()
    rows = np.array([0, 13, 5000, len(sensor) - 1])
    for lap in (1, 2):
        later = [sensor.event_ts(int(r), lap) for r in rows]
        first = [sensor.event_ts(int(r), 0) for r in rows]
        names = ("half_hour_of_day", "day_of_week")
        np.testing.assert_array_equal(derive(names, later), derive(names, first))
        assert [sensor.locate(t) for t in later] == rows.tolist()
    assert sensor.event_ts(0, 1) > sensor.event_ts(len(sensor) - 1, 0)


def test_demo_board_shows_the_day_ahead_band_and_scores_the_median() -> None:
    import io

    from statecast.loadtest.demo import ForecastBoard
    from statecast.loadtest.generator import StreamPlan
    from statecast.loadtest.series import sensor_series

    (sensor,) = sensor_series()
    plan = StreamPlan("sensor", (sensor,), 1, 1, id_prefix="sensor")
    board = ForecastBoard([plan], watch=1, warmup_steps=0)
    row = 100
    band = {
        "p10": [4.0 + k for k in range(48)],
        "p50": [4.5 + k for k in range(48)],
        "p90": [5.0 + k for k in range(48)],
    }
    pred = {
        "stream": plan.stream_id(0),
        "ts": sensor.event_ts(row, 0),
        "prediction": {"demand": band},
    }
    board.observe(pred, 0.0)
    out = io.StringIO()
    board.render(out)
    text = out.getvalue()
    assert "forecast 4.500 GW" in text  # the one-step forecast is p50 at horizon 1
    assert "+6h 15.50 [15.00-16.00]" in text  # horizon 12
    assert "+24h 51.50 [51.00-52.00]" in text  # horizon 48
    actual = float(sensor.values[row + 1, 0])
    assert board.summary()["sensor_mae_gw"] == pytest.approx(abs(4.5 - actual), abs=1e-4)
