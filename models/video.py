"""The video classifier: a LeNet-like CNN per frame, an LSTM across frames, a linear head.

:class:`VideoLSTM` runs whole clips (training, evaluation, the parity reference);
:class:`VideoStep` is the same weights as one step per frame for the ONNX export: a frame
and the LSTM state in, class probabilities and the next state out. The step also carries a
frame counter ``n`` in its state, so the worker knows how many frames a camera has sent
(captions every N frames) with the same exactly-once guarantee as the LSTM state.

Two auxiliary heads (the subject's garment, the camera's motion) are trained beside the
motion head but not exported: they make the LSTM state describe the scene, which is what
the caption decoder reads.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from statecast.models.video_data import MOTIONS

# Frames arrive as 8-bit grey values; the graph takes them raw (0-255) and scales here, so
# the worker feeds pixels as decoded. Mean/std of the training frames, rounded.
PIXEL_MEAN = 70.0
PIXEL_STD = 55.0


@dataclass(frozen=True)
class VideoConfig:
    height: int = 32
    width: int = 32
    conv1: int = 8
    conv2: int = 16
    features: int = 64
    hidden: int = 64
    classes: tuple[str, ...] = field(default=MOTIONS)
    # Auxiliary targets (empty: no such head).
    garments: tuple[str, ...] = ()
    cameras: tuple[str, ...] = ()
    # Feed the encoder the frame and its difference from the previous one (carried in the
    # state): motion becomes local evidence the convolutions see, wherever the object is.
    pair: bool = True

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for key in ("classes", "garments", "cameras"):
            d[key] = list(d[key])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VideoConfig:
        tuples = {k: tuple(d.get(k, ())) for k in ("classes", "garments", "cameras")}
        return cls(**{**d, **tuples})


def _lenet_side(n: int) -> int:
    return ((n - 4) // 2 - 4) // 2


class FrameEncoder(nn.Module):
    """``[B, 1, H, W]`` raw pixels (and, for pair models, the difference from the previous
    frame) -> ``[B, features]``: two conv/pool blocks and a dense layer."""

    def __init__(self, cfg: VideoConfig) -> None:
        super().__init__()
        self.pair = cfg.pair
        self.convs = nn.Sequential(
            nn.Conv2d(2 if cfg.pair else 1, cfg.conv1, kernel_size=5),
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

    def forward(self, x: Tensor, diff: Tensor | None = None) -> Tensor:
        inp = (x - PIXEL_MEAN) / PIXEL_STD
        if self.pair:
            inp = torch.cat([inp, (diff if diff is not None else x * 0.0) / PIXEL_STD], dim=1)
        out: Tensor = self.dense(self.convs(inp))
        return out


class VideoLSTM(nn.Module):
    def __init__(self, cfg: VideoConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = FrameEncoder(cfg)
        self.lstm = nn.LSTM(cfg.features, cfg.hidden, num_layers=1, batch_first=True)
        self.head = nn.Linear(cfg.hidden, len(cfg.classes))
        self.garment_head = nn.Linear(cfg.hidden, len(cfg.garments)) if cfg.garments else None
        self.camera_head = nn.Linear(cfg.hidden, len(cfg.cameras)) if cfg.cameras else None

    def forward(self, frames: Tensor, lengths: Tensor | None = None) -> Tensor:
        """``[B, T, 1, H, W]`` raw pixels -> logits ``[B, T, K]`` after every frame."""
        out: Tensor = self.head(self.hidden_states(frames, lengths))
        return out

    def hidden_states(self, frames: Tensor, lengths: Tensor | None = None) -> Tensor:
        """``[B, T, 1, H, W]`` raw pixels -> the LSTM's ``h`` ``[B, T, hidden]`` after every frame.

        With ``lengths``, frames past a clip's length (padding) skip the encoder; their
        logits are still computed but mean nothing. The LSTM is causal, so the logits of the
        real frames are the same either way.
        """
        b, t = frames.shape[:2]
        flat = frames.reshape(b * t, *frames.shape[2:])
        # The first frame has no predecessor: its difference is zero.
        diff = torch.cat([frames[:, :1] * 0.0, frames[:, 1:] - frames[:, :-1]], dim=1)
        flat_diff = diff.reshape(b * t, *frames.shape[2:])
        if lengths is None:
            feats = self.encoder(flat, flat_diff).reshape(b, t, -1)
        else:
            valid = (torch.arange(t, device=frames.device)[None, :] < lengths[:, None]).reshape(-1)
            encoded = self.encoder(flat[valid], flat_diff[valid])
            feats = encoded.new_zeros(b * t, encoded.shape[1])
            feats[valid] = encoded
            feats = feats.reshape(b, t, -1)
        seq: Tensor = self.lstm(feats)[0]
        return seq


class VideoStep(nn.Module):
    """One frame per stream: ``x [B,1,H,W]``, ``h``/``c [1,B,hidden]``, the frame count
    ``n [1,B,1]`` and the previous frame ``prev [1,B,H*W]`` -> probs, h', c', n + 1, x."""

    def __init__(self, model: VideoLSTM) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, x: Tensor, h: Tensor, c: Tensor, n: Tensor, prev: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        b = x.shape[0]
        # A new camera (n == 0) has no previous frame: its difference is zero, as in training.
        seen = (n[0] > 0.5).to(x.dtype).reshape(b, 1, 1, 1)
        diff = (x - prev[0].reshape(x.shape)) * seen
        feats = self.model.encoder(x, diff).unsqueeze(1)
        seq, (h2, c2) = self.model.lstm(feats, (h, c))
        probs = torch.softmax(self.model.head(seq[:, 0]), dim=-1)
        return probs, h2, c2, n + 1.0, x.reshape(1, b, -1)
