"""Forecaster modules, the shared training loop and the checkpoint round trip (tiny models)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from statecast.models.forecast import ForecastConfig, ForecastStep, RecurrentForecaster
from statecast.models.forecast_train import ItemDataset, gaussian_loss, point_loss, train_windows
from statecast.models.trainer import TrainConfig, fit, load_checkpoint, save_checkpoint

pytestmark = pytest.mark.unit

CELLS = ("lstm", "gru", "rnn")


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    # The CI machine has two cores shared with the rest of the suite: threads only contend.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _config(cell: str, head: str = "point", **kw: object) -> ForecastConfig:
    return ForecastConfig.from_dict(
        {
            "cell": cell,
            "n_features": 3,
            "hidden": 8,
            "head": head,
            "feature_mean": (1.0, 2.0, 3.0),
            "feature_std": (2.0, 0.5, 1.0),
            "target_std": 0.25,
            **kw,
        }
    )


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("head", ["point", "gaussian"])
def test_step_by_step_equals_the_whole_sequence(cell: str, head: str) -> None:
    torch.manual_seed(0)
    model = RecurrentForecaster(_config(cell, head, abs_features=head == "gaussian")).eval()
    x = torch.randn(4, 30, 3)
    with torch.no_grad():
        whole, final = model(x)
        step = ForecastStep(model)
        state = model.zero_state(4)
        outs = []
        for t in range(30):
            y, *new = step(x[:, t], *state)
            state = tuple(new)
            outs.append(y)
    assert whole.shape == (4, 30, 1 if head == "point" else 2)
    assert len(state) == (2 if cell == "lstm" else 1)
    torch.testing.assert_close(torch.stack(outs, dim=1), whole)
    for a, b in zip(state, final, strict=True):
        torch.testing.assert_close(a, b)


def test_residual_point_head_predicts_a_change_from_the_raw_feature() -> None:
    model = RecurrentForecaster(_config("lstm", residual_feature=0)).eval()
    torch.nn.init.zeros_(model.head.weight)
    torch.nn.init.zeros_(model.head.bias)
    x = torch.randn(2, 5, 3)
    with torch.no_grad():
        y, _ = model(x)
    torch.testing.assert_close(y[..., 0], x[..., 0])


def test_checkpoint_round_trip_rebuilds_the_model_alone(tmp_path: Path) -> None:
    torch.manual_seed(1)
    config = _config("gru", "gaussian", abs_features=True)
    model = RecurrentForecaster(config).eval()
    path = save_checkpoint(tmp_path / "m.pt", model, config, meta={"metrics": {"test_nll": -1.5}})
    loaded, ckpt = load_checkpoint(path)
    assert isinstance(loaded, RecurrentForecaster)
    assert loaded.config == config
    assert ckpt.meta == {"metrics": {"test_nll": -1.5}}
    assert not loaded.training
    x = torch.randn(3, 12, 3)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x)[0], model(x)[0], rtol=0, atol=0)


def test_checkpoint_rejects_a_foreign_file(tmp_path: Path) -> None:
    path = tmp_path / "x.pt"
    torch.save({"weights": torch.zeros(1)}, path)
    with pytest.raises(ValueError, match="not a statecast checkpoint"):
        load_checkpoint(path)


def _tiny_problem() -> tuple[ItemDataset, ItemDataset]:
    t = np.arange(200, dtype=np.float64)
    series = np.sin(t / 5.0)
    x = np.stack([series, np.cos(t / 5.0), np.zeros_like(t)], axis=1)
    train = ItemDataset(train_windows(x, series, 150, burn_in=5, length=20, stride=10))
    val = ItemDataset(train_windows(x[150:], series[150:], 50, burn_in=5, length=20, stride=40))
    return train, val


@pytest.mark.parametrize("head", ["point", "gaussian"])
def test_fit_learns_is_seeded_and_keeps_the_best_epoch(head: str) -> None:
    train, val = _tiny_problem()
    loss = point_loss if head == "point" else gaussian_loss
    tc = TrainConfig(epochs=4, batch_size=8, lr=1e-2, seed=3, progress=False, patience=100)

    def run() -> tuple[RecurrentForecaster, float, list[float]]:
        torch.manual_seed(3)
        model = RecurrentForecaster(_config("lstm", head, feature_mean=(), feature_std=()))
        result = fit(model, loss, train, val, tc)
        return model, result.best_val_loss, [h["val_loss"] for h in result.history]

    m1, best1, hist1 = run()
    m2, best2, _ = run()
    assert hist1[-1] < hist1[0]
    assert best1 == min(hist1)
    assert best1 == best2
    for a, b in zip(m1.state_dict().values(), m2.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_early_stopping_stops_when_validation_stalls() -> None:
    train, val = _tiny_problem()
    model = RecurrentForecaster(_config("rnn", feature_mean=(), feature_std=()))
    tc = TrainConfig(epochs=50, batch_size=8, lr=0.0, seed=0, progress=False, patience=2)
    result = fit(model, point_loss, train, val, tc)
    assert result.epochs_run == 3  # best at epoch 0, then two stale epochs
    assert result.best_epoch == 0


def test_train_cli_parses_overrides_and_refuses_unknown_options(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from statecast.cli import main
    from statecast.models.train_cli import parse_overrides

    assert parse_overrides(["hidden=32", "cell=rnn", "lr=0.01"]) == {
        "hidden": 32,
        "cell": "rnn",
        "lr": 0.01,
    }
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_overrides(["hidden"])
    assert main(["train", "sensor_lstm", "--set", "bogus=1"]) == 2
    assert "bogus" in capsys.readouterr().out
