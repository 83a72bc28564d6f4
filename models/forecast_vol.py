"""Recurrent volatility model: GARCH-like recursions in the state plus a GRU correction.

The predicted mean is zero: on these daily returns a mean has no skill (the old GRU's
predicted mean correlated -0.09..+0.03 with the next return; the training-split average
does no better than zero on test), so the model spends everything on the variance.

State (all ``float32``, zero = a new stream):

- ``var`` ``[1, B, K]``: K variance recursions stored as *deviations from the prior
  variance* ``v0`` (the pooled training variance), so a zero state starts every recursion
  at ``v0``. Recursions 0..K-2 are EWMAs of the squared return with learned decays (fast to
  slow: a year-long one learns the stream's own level); the last is a GJR-GARCH(1,1) with
  variance targeting, ``s' = v0 (1 - a - g/2 - b) + (a + g [r < 0]) r^2 + b s``.
- ``h`` ``[1, B, hidden]``: a GRU fed the normalised return, its size, and the log of
  every recursion; its head adds a bounded correction to the log variance.

``log_var = c + sum_k w_k log(s_k) + tanh-bounded GRU term``: a HAR-style blend in logs
whose weights are learned on the pooled training rows.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from statecast.models.forecast import ForecastStep

State = tuple[Tensor, ...]
_EPS = 1e-12


@dataclass(frozen=True)
class VolConfig:
    prior_var: float  # v0: pooled training variance of the return
    return_std: float  # scale of the GRU's return input
    init_decays: tuple[float, ...] = (0.7, 0.94, 0.985, 0.997)
    hidden: int = 16
    gru_scale: float = 0.5  # the GRU's log-variance correction lies within +-this
    input_clip: float = 10.0

    @property
    def n_recursions(self) -> int:
        return len(self.init_decays) + 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VolConfig:
        fields = dict(d)
        fields["init_decays"] = tuple(float(v) for v in fields["init_decays"])
        return cls(**fields)


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


class VolatilityForecaster(nn.Module):
    """``forward(r [B,T,1] raw log returns, state) -> (y [B,T,2] (mean=0, log_var), state)``."""

    def __init__(self, config: VolConfig) -> None:
        super().__init__()
        c = config
        self.config = c
        k = c.n_recursions
        self.decay_logit = nn.Parameter(torch.tensor([_logit(d) for d in c.init_decays]))
        # GJR parameters through a softmax over (a, g/2, b, slack): a + g/2 + b < 1 always.
        self.gjr_logits = nn.Parameter(torch.log(torch.tensor([0.04, 0.04, 0.90, 0.02])))
        self.blend = nn.Linear(k, 1)
        with torch.no_grad():
            # Start as the plain GJR recursion: weight 1 on it, 0 elsewhere.
            self.blend.weight.zero_()
            self.blend.weight[0, -1] = 1.0
            self.blend.bias.zero_()
        self.gru = nn.GRU(input_size=2 + k, hidden_size=c.hidden, batch_first=True)
        self.head = nn.Linear(c.hidden, 1)
        with torch.no_grad():
            self.head.weight.zero_()
            self.head.bias.zero_()

    def zero_state(self, batch: int) -> State:
        c = self.config
        return (torch.zeros(1, batch, c.hidden), torch.zeros(1, batch, c.n_recursions))

    def gjr_params(self) -> tuple[Tensor, Tensor, Tensor]:
        w = torch.softmax(self.gjr_logits, dim=0)
        return w[0], 2.0 * w[1], w[2]

    def forward(self, r: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        c = self.config
        b, t = r.shape[0], r.shape[1]
        if state is None:
            state = self.zero_state(b)
        h0, dev = state
        v0 = c.prior_var
        lam = torch.sigmoid(self.decay_logit)  # [K-1]
        alpha, gamma, beta = self.gjr_params()
        r2 = r[..., 0] ** 2  # [B, T]
        neg = (r[..., 0] < 0).to(r.dtype)
        d = dev[0]  # [B, K] deviations from v0, the state entering step 0
        levels = []
        for i in range(t):
            # After seeing r[:, i], the recursions forecast the variance of r[:, i + 1].
            ewma = lam * d[:, :-1] + (1.0 - lam) * (r2[:, i : i + 1] - v0)
            arch = (alpha + gamma * neg[:, i : i + 1]) * r2[:, i : i + 1]
            # s' - v0 = (a + g 1[r<0]) r^2 + b (s - v0) - v0 (a + g/2)
            gjr = arch + beta * d[:, -1:] - v0 * (alpha + 0.5 * gamma)
            d = torch.cat([ewma, gjr], dim=-1)
            levels.append(d)
        dev_seq = torch.stack(levels, dim=1)  # [B, T, K]
        log_s = torch.log((dev_seq + v0).clamp(min=_EPS * v0 + _EPS))
        z = (r / c.return_std).clamp(-c.input_clip, c.input_clip)
        gru_in = torch.cat([z, z.abs(), log_s - math.log(v0)], dim=-1)
        out, h = self.gru(gru_in, h0)
        correction = c.gru_scale * torch.tanh(self.head(out))
        log_var = self.blend(log_s - math.log(v0)) + math.log(v0) + correction
        mean = torch.zeros_like(log_var)
        return torch.cat([mean, log_var], dim=-1), (h, d.unsqueeze(0))


class VolatilityStep(ForecastStep):
    """``forward(x [B,1], h, var) -> (y [B,2], h', var')``."""

    def __init__(self, model: VolatilityForecaster) -> None:
        super().__init__(model)
