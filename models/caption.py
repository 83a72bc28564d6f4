"""Captions for cameras: a decoder LSTM conditioned on the video model's state.

The language is synthetic: every caption is a template filled from a scene's labels,

    a <garment> <subject motion> while the camera <camera motion>

("a sneaker moves left while the camera zooms in"), over a vocabulary of 30 words (and three
special tokens) built from the Fashion-MNIST class names and the motion words. The
decoding is real: the
decoder reads the camera's ``video_lstm`` state ``h`` (after the frames seen so far) and
writes the caption one word at a time.

:class:`CaptionDecoder` runs teacher-forced sequences (training, the parity reference);
:class:`CaptionStep` is one decoder step for the ONNX export: a token, the context and the
decoder state in, the next-word logits and the next state out. A zero decoder state and the
``<bos>`` token start a caption.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor, nn

from statecast.models.video_data import MOTIONS
from statecast.models.video_scenes import CAMERA_MOTIONS, GARMENTS

PAD, BOS, EOS = "<pad>", "<bos>", "<eos>"
MOTION_PHRASES: dict[str, tuple[str, ...]] = {
    "left": ("moves", "left"),
    "right": ("moves", "right"),
    "up": ("moves", "up"),
    "down": ("moves", "down"),
    "zoom_in": ("zooms", "in"),
    "zoom_out": ("zooms", "out"),
    "rotate_cw": ("turns", "clockwise"),
    "rotate_ccw": ("turns", "counterclockwise"),
}
CAMERA_PHRASES: dict[str, tuple[str, ...]] = {
    "still": ("is", "still"),
    "pan_left": ("pans", "left"),
    "pan_right": ("pans", "right"),
    "tilt_up": ("tilts", "up"),
    "tilt_down": ("tilts", "down"),
    "zoom_in": ("zooms", "in"),
    "zoom_out": ("zooms", "out"),
    "roll_cw": ("rolls", "clockwise"),
    "roll_ccw": ("rolls", "counterclockwise"),
}


def _vocabulary() -> tuple[str, ...]:
    words: list[str] = [PAD, BOS, EOS, "a", *GARMENTS, "while", "the", "camera"]
    for phrase in (*MOTION_PHRASES.values(), *CAMERA_PHRASES.values()):
        words.extend(w for w in phrase if w not in words)
    return tuple(words)


VOCAB: tuple[str, ...] = _vocabulary()
WORD_ID = {w: i for i, w in enumerate(VOCAB)}
MAX_WORDS = 12  # longest caption is 9 words; <eos> and slack


def caption_words(motion: str, garment: str, camera: str) -> list[str]:
    """The template: ``a <garment> <motion phrase> while the camera <camera phrase>``."""
    return [
        "a",
        garment,
        *MOTION_PHRASES[motion],
        "while",
        "the",
        "camera",
        *CAMERA_PHRASES[camera],
    ]


def caption_ids(motion: int, garment: int, camera: int) -> list[int]:
    """Token ids of the caption for label indices, ending with ``<eos>``."""
    words = caption_words(MOTIONS[motion], GARMENTS[garment], CAMERA_MOTIONS[camera])
    return [WORD_ID[w] for w in words] + [WORD_ID[EOS]]


def caption_text(ids: list[int]) -> str:
    """Words up to the first ``<eos>`` (specials dropped), joined by spaces."""
    out: list[str] = []
    for i in ids:
        if i == WORD_ID[EOS]:
            break
        if 0 <= i < len(VOCAB) and i not in (WORD_ID[PAD], WORD_ID[BOS]):
            out.append(VOCAB[i])
    return " ".join(out)


def target_matrix(motions: npt.ArrayLike, garments: npt.ArrayLike, cameras: npt.ArrayLike) -> Any:
    """``[N, MAX_WORDS]`` int64 caption ids per scene, padded with ``<pad>``."""
    m, g, c = (np.asarray(a, dtype=np.int64) for a in (motions, garments, cameras))
    out = np.full((m.shape[0], MAX_WORDS), WORD_ID[PAD], dtype=np.int64)
    for i in range(m.shape[0]):
        ids = caption_ids(int(m[i]), int(g[i]), int(c[i]))
        out[i, : len(ids)] = ids
    return out


@dataclass(frozen=True)
class CaptionConfig:
    context: int = 64  # size of the video state it reads (video_lstm's hidden)
    embed: int = 32
    hidden: int = 128
    vocab: tuple[str, ...] = field(default=VOCAB)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["vocab"] = list(self.vocab)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CaptionConfig:
        return cls(**{**d, "vocab": tuple(d["vocab"])})


class CaptionDecoder(nn.Module):
    """Word embedding and the projected context, concatenated, into one LSTM layer."""

    def __init__(self, cfg: CaptionConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(len(cfg.vocab), cfg.embed)
        self.context = nn.Sequential(nn.Linear(cfg.context, cfg.hidden), nn.Tanh())
        self.lstm = nn.LSTM(cfg.embed + cfg.hidden, cfg.hidden, batch_first=True)
        self.out = nn.Linear(cfg.hidden, len(cfg.vocab))

    def forward(self, tokens: Tensor, context: Tensor) -> Tensor:
        """``tokens [B, T]`` (``<bos>`` first), ``context [B, C]`` -> logits ``[B, T, V]``."""
        ctx = self.context(context).unsqueeze(1).expand(-1, tokens.shape[1], -1)
        seq, _ = self.lstm(torch.cat([self.embed(tokens), ctx], dim=-1))
        out: Tensor = self.out(seq)
        return out


class CaptionStep(nn.Module):
    """``x [B,1]`` token, ``context [B,C]``, ``h``/``c [1,B,H]`` -> logits ``[B,V]``, h', c'."""

    def __init__(self, model: CaptionDecoder) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor, context: Tensor, h: Tensor, c: Tensor) -> tuple[Tensor, ...]:
        m = self.model
        inp = torch.cat([m.embed(x[:, :1]), m.context(context).unsqueeze(1)], dim=-1)
        seq, (h2, c2) = m.lstm(inp, (h, c))
        return m.out(seq[:, 0]), h2, c2
