"""Calendar-aware multi-horizon quantile forecaster (LSTNet-style linear + recurrent paths).

One step sees the event's raw values (``demand, temperature, workday``) and the calendar
features the codec derives from ``ts`` (half-hour of day, day of week; see
``statecast.contract.calendar``), and forecasts the next ``horizon`` steps at several
quantiles, in real units: ``y [B, T, horizon, quantiles]``.

Why two paths: a linear autoregression on the last day of demand with a clock already beats
a plain recurrent net by 1.8x on this series, so the model keeps that linear path exactly
(a ring buffer of the last ``window`` normalised inputs lives in the state) and lets the
recurrent cell and a small MLP add what is not linear (temperature response, weekday shape)
and the spread of the quantiles. Quantiles cannot cross: the median is one output and the
others are the median minus / plus cumulative softplus gaps.

State: ``h`` (and ``c`` for LSTM) ``[layers, B, hidden]`` and ``window`` ``[1, B, W * Fw]``,
the last ``W`` steps of the buffered features, oldest first. Zeros (a new stream) mean
"history at the training mean".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from statecast.models.forecast import CellType, ForecastStep

State = tuple[Tensor, ...]
_CELLS: dict[str, Callable[..., nn.RNNBase]] = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}
WINDOW_STATE = "window"


@dataclass(frozen=True)
class QuantileConfig:
    cell: CellType
    n_values: int  # raw value features at the front of x
    calendar: tuple[int, ...]  # cardinality of each derived feature, appended after values
    window_features: tuple[int, ...]  # indices of value features kept in the ring buffer
    window: int = 48
    horizon: int = 48
    quantiles: tuple[float, ...] = (0.1, 0.5, 0.9)
    hidden: int = 64
    layers: int = 1
    mlp_hidden: int = 128
    # Dropout on the MLP's hidden layer (training only; the exported step has none).
    dropout: float = 0.0
    feature_mean: tuple[float, ...] = ()
    feature_std: tuple[float, ...] = ()
    target_feature: int = 0
    input_clip: float = 10.0

    def __post_init__(self) -> None:
        if self.cell not in _CELLS:
            raise ValueError(f"unknown cell {self.cell!r}")
        if 0.5 not in self.quantiles or list(self.quantiles) != sorted(self.quantiles):
            raise ValueError("quantiles must be sorted and include the median 0.5")
        for name in ("feature_mean", "feature_std"):
            if len(getattr(self, name)) != self.n_values:
                raise ValueError(f"{name} needs {self.n_values} entries")

    @property
    def n_features(self) -> int:
        return self.n_values + len(self.calendar)

    @property
    def window_size(self) -> int:
        return self.window * len(self.window_features)

    @property
    def recurrent_states(self) -> tuple[str, ...]:
        return ("h", "c") if self.cell == "lstm" else ("h",)

    @property
    def state_names(self) -> tuple[str, ...]:
        return (*self.recurrent_states, WINDOW_STATE)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> QuantileConfig:
        fields = dict(d)
        for name in ("calendar", "window_features"):
            fields[name] = tuple(int(v) for v in fields[name])
        for name in ("quantiles", "feature_mean", "feature_std"):
            fields[name] = tuple(float(v) for v in fields[name])
        return cls(**fields)


class QuantileForecaster(nn.Module):
    """``forward(x [B,T,F] raw, state) -> (y [B,T,H,Q] real units, state)``."""

    in_mean: Tensor
    in_std: Tensor
    calendar_codes: Tensor
    gap_scale: Tensor

    def __init__(self, config: QuantileConfig) -> None:
        super().__init__()
        c = config
        self.config = c
        self.register_buffer("in_mean", torch.tensor(c.feature_mean, dtype=torch.float32))
        self.register_buffer("in_std", torch.tensor(c.feature_std, dtype=torch.float32))
        # One-hot by comparison with 0..card-1: exports as Equal, no gather on user input.
        self.register_buffer(
            "calendar_codes", torch.arange(max(c.calendar, default=1), dtype=torch.float32)
        )
        n_cal = sum(c.calendar)
        self.rnn = _CELLS[c.cell](
            input_size=c.n_values + n_cal,
            hidden_size=c.hidden,
            num_layers=c.layers,
            batch_first=True,
        )
        feat = c.window_size + c.n_values + n_cal
        n_q = len(c.quantiles)
        self.linear = nn.Linear(feat, c.horizon)
        self.mlp = nn.Sequential(
            nn.Linear(c.hidden + feat, c.mlp_hidden),
            nn.ReLU(),
            nn.Dropout(c.dropout),
            nn.Linear(c.mlp_hidden, c.horizon * n_q),
        )
        self._mid = c.quantiles.index(0.5)
        # Per-horizon multipliers of the quantile gaps, set after training on validation
        # (:func:`calibrate_gaps`) so the intervals cover what they claim; ones until then.
        self.register_buffer("gap_scale", torch.ones(c.horizon, n_q))

    def zero_state(self, batch: int) -> State:
        c = self.config
        rec = tuple(torch.zeros(c.layers, batch, c.hidden) for _ in c.recurrent_states)
        return (*rec, torch.zeros(1, batch, c.window_size))

    def linear_features(self, x: Tensor) -> Tensor:
        """``[B, T, D]`` inputs of the linear path over ``x`` from a zero state (no
        parameters involved: training fits the linear path on them in closed form)."""
        c = self.config
        b, t = x.shape[0], x.shape[1]
        z = self._normalise(x)
        lags, _ = self._lags(z, torch.zeros(1, b, c.window_size), b, t)
        return torch.cat([lags, z, self._one_hot(x[..., c.n_values :])], dim=-1)

    def _normalise(self, x: Tensor) -> Tensor:
        c = self.config
        return ((x[..., : c.n_values] - self.in_mean) / self.in_std).clamp(
            -c.input_clip, c.input_clip
        )

    def forward(self, x: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        c = self.config
        b, t = x.shape[0], x.shape[1]
        if state is None:
            state = self.zero_state(b)
        z = self._normalise(x)
        cal = self._one_hot(x[..., c.n_values :])
        rnn_in = torch.cat([z, cal], dim=-1)
        n_rec = len(c.recurrent_states)
        if c.cell == "lstm":
            out, (h, cc) = self.rnn(rnn_in, (state[0], state[1]))
            rec_state: State = (h, cc)
        else:
            out, h = self.rnn(rnn_in, state[0])
            rec_state = (h,)
        lags, window = self._lags(z, state[n_rec], b, t)
        feat = torch.cat([lags, z, cal], dim=-1)
        raw = self.mlp(torch.cat([out, feat], dim=-1)).reshape(b, t, c.horizon, -1)
        median = self.linear(feat) + raw[..., self._mid]
        y = self._quantiles(median, raw)
        i = c.target_feature
        return y * self.in_std[i] + self.in_mean[i], (*rec_state, window)

    def _one_hot(self, codes: Tensor) -> Tensor:
        parts = []
        for j, card in enumerate(self.config.calendar):
            col = torch.round(codes[..., j : j + 1])
            parts.append((col == self.calendar_codes[:card]).to(codes.dtype))
        return torch.cat(parts, dim=-1)

    def _lags(self, z: Tensor, buf: Tensor, b: int, t: int) -> tuple[Tensor, Tensor]:
        """Ring-buffer features of every step ``[B, T, W * Fw]`` and the next buffer."""
        c = self.config
        fw = len(c.window_features)
        zw = z[..., list(c.window_features)]
        full = torch.cat([buf[0].reshape(b, c.window, fw), zw], dim=1)  # [B, W + T, Fw]
        if t == 1:
            # The served step: the buffer shifted by one (a plain slice in the graph).
            lags = full[:, 1:].reshape(b, 1, c.window * fw)
        else:
            win = full.unfold(1, c.window, 1)[:, 1:]  # [B, T, Fw, W]
            lags = win.transpose(2, 3).reshape(b, t, c.window * fw)
        nxt = full[:, -c.window :].reshape(1, b, c.window * fw)
        return lags, nxt

    def _quantiles(self, median: Tensor, raw: Tensor) -> Tensor:
        """Non-crossing quantiles: the median +- cumulative softplus gaps."""
        m = self._mid
        gaps = nn.functional.softplus(raw) * self.gap_scale
        above = [median + gaps[..., m + 1 : j + 1].sum(dim=-1) for j in range(m + 1, raw.shape[-1])]
        # ``below`` for quantile j sums the gaps j..m-1, so it lies under quantile j + 1.
        below = [median - gaps[..., j:m].sum(dim=-1) for j in range(m)]
        return torch.stack([*below, median, *above], dim=-1)


class QuantileStep(ForecastStep):
    """One served step: ``forward(x [B,F], *state) -> (y [B,H,Q], *state_out)``."""

    def __init__(self, model: QuantileForecaster) -> None:
        super().__init__(model)


def pinball_loss(
    pred: Tensor, target: Tensor, quantiles: Tensor, mask: Tensor, horizon_weight: Tensor
) -> Tensor:
    """Weighted pinball loss of ``pred [B,T,H,Q]`` for ``target [B,T,H]`` over masked origins.

    ``horizon_weight [H]`` (mean 1) balances horizons whose errors differ by 10x: unweighted,
    the day-ahead horizons would drown the next half-hour.
    """
    err = target.unsqueeze(-1) - pred
    per = torch.maximum(quantiles * err, (quantiles - 1.0) * err).mean(dim=-1)
    loss = (per * horizon_weight).mean(dim=-1)
    out: Tensor = (loss * mask).sum() / mask.sum().clamp(min=1.0)
    return out


def calibrate_gaps(
    model: QuantileForecaster, pred: Tensor, target: Tensor, smooth: int = 0
) -> Tensor:
    """Set ``gap_scale`` so each outer quantile is hit at its level on ``(pred, target)``.

    ``pred [N, H, Q]`` are the uncalibrated forecasts of validation origins, ``target
    [N, H]``. For quantile ``q`` below the median, the scale is the ``1 - q`` quantile of
    ``(median - y) / gap``; above it, the ``q`` quantile of ``(y - median) / gap``. Exact for
    one quantile on each side of the median (p10, p50, p90). ``smooth > 0`` averages each
    horizon's scale with ``smooth`` neighbours on each side: neighbouring horizons share
    most of their origins' weather, so one horizon's estimate alone is noisy.
    """
    qs = model.config.quantiles
    m = qs.index(0.5)
    med = pred[..., m]
    scale = torch.ones(pred.shape[1], len(qs))
    for j, q in enumerate(qs):
        if j == m:
            continue
        gap = (pred[..., j] - med).abs().clamp(min=1e-9)
        ratio = ((med - target) if j < m else (target - med)) / gap
        level = 1.0 - q if j < m else q
        col = torch.quantile(ratio, level, dim=0).clamp(min=0.05)
        if smooth > 0:
            padded = torch.cat([col[:1].repeat(smooth), col, col[-1:].repeat(smooth)])
            col = padded.unfold(0, 2 * smooth + 1, 1).mean(dim=-1)
        scale[:, j] = col
    with torch.no_grad():
        model.gap_scale.copy_(model.gap_scale * scale)
    return scale
