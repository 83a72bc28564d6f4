"""Recurrent forecasters: one module for LSTM, GRU and SimpleRNN cells, and its config.

The module takes RAW features and returns predictions in real units: input normalisation
and output scaling are buffers built from the config, so the exported step graph needs no
preprocessing code beside it. Two heads:

- ``point``: one value per step (``[.., 1]``); with ``residual_feature`` set, the model
  predicts the change from that raw feature (next demand = demand now + learned change).
- ``gaussian``: ``(mean, log_var)`` per step, in the target's real units.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

CellType = Literal["lstm", "gru", "rnn"]
HeadType = Literal["point", "gaussian"]
State = tuple[Tensor, ...]

_CELLS: dict[str, Callable[..., nn.RNNBase]] = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}


@dataclass(frozen=True)
class ForecastConfig:
    """Everything needed to rebuild a forecaster: architecture and the data scaling."""

    cell: CellType
    n_features: int
    hidden: int = 64
    layers: int = 1
    dropout: float = 0.0
    head: HeadType = "point"
    # Normalisation of x (fitted on train rows only) and of the target.
    feature_mean: tuple[float, ...] = ()
    feature_std: tuple[float, ...] = ()
    target_mean: float = 0.0
    target_std: float = 1.0
    # Index into x of the raw feature the point head predicts a change from, if any.
    residual_feature: int | None = None
    # Also feed |z| of every normalised feature: lets a small cell track volatility.
    abs_features: bool = False
    # Normalised inputs are clipped to +-this, so a crash day cannot saturate the cell.
    input_clip: float = 10.0

    def __post_init__(self) -> None:
        if self.cell not in _CELLS:
            raise ValueError(f"unknown cell {self.cell!r}")
        if self.head not in ("point", "gaussian"):
            raise ValueError(f"unknown head {self.head!r}")
        for name in ("feature_mean", "feature_std"):
            value = getattr(self, name)
            if value and len(value) != self.n_features:
                raise ValueError(f"{name} has {len(value)} entries for {self.n_features} features")

    @property
    def n_outputs(self) -> int:
        return 1 if self.head == "point" else 2

    @property
    def state_names(self) -> tuple[str, ...]:
        return ("h", "c") if self.cell == "lstm" else ("h",)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ForecastConfig:
        fields = dict(d)
        for name in ("feature_mean", "feature_std"):
            fields[name] = tuple(float(v) for v in fields.get(name, ()))
        return cls(**fields)


class RecurrentForecaster(nn.Module):
    """``forward(x [B,T,F] raw, state) -> (y [B,T,O] real units, state)``."""

    in_mean: Tensor
    in_std: Tensor

    def __init__(self, config: ForecastConfig) -> None:
        super().__init__()
        self.config = config
        f = config.n_features
        mean = config.feature_mean or (0.0,) * f
        std = config.feature_std or (1.0,) * f
        self.register_buffer("in_mean", torch.tensor(mean, dtype=torch.float32))
        self.register_buffer("in_std", torch.tensor(std, dtype=torch.float32))
        cell_cls = _CELLS[config.cell]
        self.rnn = cell_cls(
            input_size=f * (2 if config.abs_features else 1),
            hidden_size=config.hidden,
            num_layers=config.layers,
            batch_first=True,
            dropout=config.dropout if config.layers > 1 else 0.0,
        )
        self.head = nn.Linear(config.hidden, config.n_outputs)

    def zero_state(self, batch: int) -> State:
        c = self.config
        return tuple(torch.zeros(c.layers, batch, c.hidden) for _ in c.state_names)

    def forward(self, x: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        c = self.config
        if state is None:
            state = self.zero_state(x.shape[0])
        z = ((x - self.in_mean) / self.in_std).clamp(-c.input_clip, c.input_clip)
        if c.abs_features:
            z = torch.cat([z, z.abs()], dim=-1)
        if c.cell == "lstm":
            out, (h, cc) = self.rnn(z, (state[0], state[1]))
            new_state: State = (h, cc)
        else:
            out, h = self.rnn(z, state[0])
            new_state = (h,)
        raw = self.head(out)
        return self._to_units(x, raw), new_state

    def _to_units(self, x: Tensor, raw: Tensor) -> Tensor:
        c = self.config
        if c.head == "point":
            y = raw * c.target_std
            if c.residual_feature is not None:
                return y + x[..., c.residual_feature : c.residual_feature + 1]
            return y + c.target_mean
        mean = raw[..., :1] * c.target_std + c.target_mean
        # Var(std * z) = std^2 Var(z): shift the log-variance by 2 log std.
        log_var = raw[..., 1:] + 2.0 * math.log(c.target_std)
        return torch.cat([mean, log_var], dim=-1)


class ForecastStep(nn.Module):
    """One step of a forecaster, the shape the worker serves.

    ``forward(x [B,F], *state_in) -> (y [B,...], *state_out)``, states ``[layers, B, hidden]``.
    ``model`` is any sequence forecaster ``(x [B,T,F], state) -> (y [B,T,...], state')``
    (this one, the quantile and the volatility forecasters): the step is that model over a
    sequence of one row, so step and whole-sequence runs share every weight and op.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor, *state: Tensor) -> tuple[Tensor, ...]:
        y, new_state = self.model(x.unsqueeze(1), tuple(state))
        return (y[:, 0], *new_state)


def gaussian_nll(mean: Tensor, log_var: Tensor, target: Tensor) -> Tensor:
    """Per-point negative log-likelihood of ``target`` under N(mean, exp(log_var))."""
    return 0.5 * (math.log(2 * math.pi) + log_var + (target - mean) ** 2 * torch.exp(-log_var))
