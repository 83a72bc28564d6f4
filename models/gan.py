"""A small conditional GAN for day-long half-hourly electricity demand profiles.

Generator and discriminator are the Keras conditional-GAN tutorial's pair written in
PyTorch: the condition (the day's 48 half-hourly temperatures and its workday flag) is
concatenated to the noise for the generator and to the profile for the discriminator.
Both work on normalised values; :class:`GeneratorExport` bakes the normalisation in, so the
ONNX file takes raw conditions (degC, 0/1) and noise and returns demand in GW.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

DAY = 48  # half-hours per day
COND = DAY + 1  # temperature profile + workday flag


@dataclass(frozen=True)
class GanConfig:
    noise_dim: int = 16
    hidden: int = 128
    # Width (half-hours) of the fixed Gaussian smoothing of the generator's output: demand
    # changes smoothly within a day, and an MLP's raw output is jagged at this data size.
    smooth: float = 0.0
    # The discriminator also sees the day's half-hour-to-half-hour changes, so the
    # generator is held to the real days' ramps and jumps, not only their levels.
    diffs: bool = True
    # Normalisation fitted on the training days (set by training, travels in the checkpoint).
    demand_mean: float = 0.0
    demand_std: float = 1.0
    temp_mean: float = 0.0
    temp_std: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GanConfig:
        return cls(**d)


def normalise_condition(cond: torch.Tensor, config: GanConfig) -> torch.Tensor:
    """Raw ``[B, 49]`` (48 temperatures degC, workday 0/1) -> the networks' scale."""
    temp = (cond[:, :DAY] - config.temp_mean) / config.temp_std
    return torch.cat([temp, cond[:, DAY:] * 2.0 - 1.0], dim=1)


def smoothing_matrix(width: float, n: int = DAY) -> torch.Tensor:
    """``[n, n]`` row-normalised Gaussian kernel (identity for ``width`` 0)."""
    if width <= 0:
        return torch.eye(n)
    t = torch.arange(n, dtype=torch.float32)
    k = torch.exp(-0.5 * ((t[:, None] - t[None, :]) / width) ** 2)
    return k / k.sum(dim=1, keepdim=True)


class Generator(nn.Module):
    """``(noise [B, noise_dim], condition [B, 49] normalised) -> demand [B, 48] normalised``."""

    smoother: torch.Tensor

    def __init__(self, config: GanConfig) -> None:
        super().__init__()
        h = config.hidden
        self.register_buffer("smoother", smoothing_matrix(config.smooth).T.contiguous())
        self.net = nn.Sequential(
            nn.Linear(config.noise_dim + COND, h),
            nn.LeakyReLU(0.2),
            nn.Linear(h, h),
            nn.LeakyReLU(0.2),
            nn.Linear(h, DAY),
        )

    def forward(self, z: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(torch.cat([z, cond], dim=1)) @ self.smoother
        return out


class Discriminator(nn.Module):
    """``(demand [B, 48] normalised, condition [B, 49] normalised) -> real logit [B, 1]``."""

    def __init__(self, config: GanConfig) -> None:
        super().__init__()
        h = config.hidden
        self.diffs = config.diffs
        self.net = nn.Sequential(
            nn.Linear(DAY + COND + (DAY - 1 if config.diffs else 0), h),
            nn.LeakyReLU(0.2),
            nn.Dropout(0.3),
            nn.Linear(h, h),
            nn.LeakyReLU(0.2),
            nn.Dropout(0.3),
            nn.Linear(h, 1),
        )

    def forward(self, day: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        parts = [day, cond]
        if self.diffs:
            # Scaled up: a half-hour step is small next to the day's range.
            parts.append((day[:, 1:] - day[:, :-1]) * 4.0)
        out: torch.Tensor = self.net(torch.cat(parts, dim=1))
        return out


class DemandGan(nn.Module):
    """Both networks in one module, so one checkpoint rebuilds them."""

    def __init__(self, config: GanConfig) -> None:
        super().__init__()
        self.config = config
        self.generator = Generator(config)
        self.discriminator = Discriminator(config)

    def sample(self, z: torch.Tensor, cond_raw: torch.Tensor) -> torch.Tensor:
        """Demand in GW ``[B, 48]`` for raw conditions ``[B, 49]``."""
        c = self.config
        day: torch.Tensor = self.generator(z, normalise_condition(cond_raw, c))
        return day * c.demand_std + c.demand_mean


class GeneratorExport(nn.Module):
    """The exported graph: ``(x [B, 49] raw condition, z [B, noise]) -> (demand [B, 48])``."""

    def __init__(self, gan: DemandGan) -> None:
        super().__init__()
        self.gan = gan

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.gan.sample(z, x)
