"""The video classifier: a LeNet-like CNN per frame, an LSTM across frames, a linear head.

:class:`VideoLSTM` runs whole clips (training, evaluation, the parity reference);
:class:`VideoStep` is the same weights as one step per frame for the ONNX export: a frame
and the LSTM state in, class probabilities and the next state out.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from statecast.models.video_data import MOTIONS

# Frames arrive as 8-bit grey values; the graph takes them raw (0-255) and scales here, so
# the worker feeds pixels as decoded. Mean/std of the training frames, rounded.
PIXEL_MEAN = 20.0
PIXEL_STD = 50.0


@dataclass(frozen=True)
class VideoConfig:
    height: int = 32
    width: int = 32
    conv1: int = 8
    conv2: int = 16
    features: int = 64
    hidden: int = 64
    classes: tuple[str, ...] = field(default=MOTIONS)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["classes"] = list(self.classes)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VideoConfig:
        return cls(**{**d, "classes": tuple(d["classes"])})


def _lenet_side(n: int) -> int:
    return ((n - 4) // 2 - 4) // 2


class FrameEncoder(nn.Module):
    """``[B, 1, H, W]`` raw pixels -> ``[B, features]``: two conv/pool blocks and a dense layer."""

    def __init__(self, cfg: VideoConfig) -> None:
        super().__init__()
        self.convs = nn.Sequential(
            nn.Conv2d(1, cfg.conv1, kernel_size=5),
            nn.BatchNorm2d(cfg.conv1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(cfg.conv1, cfg.conv2, kernel_size=5),
            nn.BatchNorm2d(cfg.conv2),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        # LeNet geometry: 5x5 valid convolutions, each followed by a 2x2 pool; batch norm
        # (folded into the convolutions at export) lets the small net train in few epochs.
        flat = cfg.conv2 * _lenet_side(cfg.height) * _lenet_side(cfg.width)
        self.dense = nn.Sequential(nn.Flatten(), nn.Linear(flat, cfg.features), nn.ReLU())

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.dense(self.convs((x - PIXEL_MEAN) / PIXEL_STD))
        return out


class VideoLSTM(nn.Module):
    def __init__(self, cfg: VideoConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = FrameEncoder(cfg)
        self.lstm = nn.LSTM(cfg.features, cfg.hidden, num_layers=1, batch_first=True)
        self.head = nn.Linear(cfg.hidden, len(cfg.classes))

    def forward(self, frames: Tensor, lengths: Tensor | None = None) -> Tensor:
        """``[B, T, 1, H, W]`` raw pixels -> logits ``[B, T, K]`` after every frame.

        With ``lengths``, frames past a clip's length (padding) skip the encoder; their
        logits are still computed but mean nothing. The LSTM is causal, so the logits of the
        real frames are the same either way.
        """
        b, t = frames.shape[:2]
        flat = frames.reshape(b * t, *frames.shape[2:])
        if lengths is None:
            feats = self.encoder(flat).reshape(b, t, -1)
        else:
            valid = (torch.arange(t, device=frames.device)[None, :] < lengths[:, None]).reshape(-1)
            encoded = self.encoder(flat[valid])
            feats = encoded.new_zeros(b * t, encoded.shape[1])
            feats[valid] = encoded
            feats = feats.reshape(b, t, -1)
        seq, _ = self.lstm(feats)
        out: Tensor = self.head(seq)
        return out


class VideoStep(nn.Module):
    """One frame per stream: ``x [B,1,H,W]``, ``h``/``c [1,B,hidden]`` -> probs, h', c'."""

    def __init__(self, model: VideoLSTM) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor, h: Tensor, c: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        feats = self.model.encoder(x).unsqueeze(1)
        seq, (h2, c2) = self.model.lstm(feats, (h, c))
        probs = torch.softmax(self.model.head(seq[:, 0]), dim=-1)
        return probs, h2, c2
