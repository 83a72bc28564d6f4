"""Training recipe for ``video_lstm``: motion clips from Fashion-MNIST, CNN + LSTM end to end.

Every frame of a clip is scored (cross-entropy of the running prediction against the
clip's motion), so the served model, which answers after every frame, is trained the way
it is used. Evaluation reports the accuracy after the last frame of each held-out clip
(``test_accuracy``) and the accuracy after k frames for every k (how soon the running
prediction becomes right).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from statecast.contract.paths import PACKAGE_ROOT
from statecast.models.trainer import TrainConfig, count_parameters, fit, save_checkpoint
from statecast.models.video import VideoConfig, VideoLSTM
from statecast.models.video_data import ClipConfig, Clips, SplitSizes, build_splits

log = logging.getLogger(__name__)

NAME = "video_lstm"
CHECKPOINT = PACKAGE_ROOT / "models" / "checkpoints" / f"{NAME}.pt"

Item = tuple[Tensor, Tensor, Tensor]


class ClipDataset(Dataset[Item]):
    """Items ``(frames uint8 [T, 1, H, W], length, label)``; converted to float per batch."""

    def __init__(self, clips: Clips) -> None:
        self.frames = torch.from_numpy(clips.frames).unsqueeze(2)
        self.lengths = torch.from_numpy(clips.lengths)
        self.labels = torch.from_numpy(clips.labels)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, i: int) -> Item:
        return self.frames[i], self.lengths[i], self.labels[i]


def clip_loss(model: nn.Module, batch: Item) -> Tensor:
    """Mean cross-entropy of the prediction after every real frame of every clip."""
    frames, lengths, labels = batch
    logits = model(frames.float(), lengths)
    t = frames.shape[1]
    valid = torch.arange(t)[None, :] < lengths[:, None]
    targets = labels[:, None].expand(-1, t)
    loss: Tensor = nn.functional.cross_entropy(logits[valid], targets[valid])
    return loss


@dataclass(frozen=True)
class Accuracy:
    final: float  # after each clip's last frame
    by_frames: list[float]  # [k-1]: after k frames, over the clips at least k frames long
    per_class: dict[str, float]


def evaluate(model: VideoLSTM, clips: Clips, batch: int = 500) -> Accuracy:
    model.eval()
    preds = []
    with torch.no_grad():
        for lo in range(0, len(clips), batch):
            frames = torch.from_numpy(clips.frames[lo : lo + batch]).unsqueeze(2).float()
            lengths = torch.from_numpy(clips.lengths[lo : lo + batch])
            preds.append(model(frames, lengths).argmax(-1).numpy())
    pred = np.concatenate(preds)  # [N, T]
    n, t = pred.shape
    right = pred == clips.labels[:, None]
    last = right[np.arange(n), clips.lengths - 1]
    by_frames = []
    for k in range(1, t + 1):
        long_enough = clips.lengths >= k
        by_frames.append(float(right[long_enough, k - 1].mean()) if long_enough.any() else 0.0)
    per_class = {
        name: float(last[clips.labels == i].mean())
        for i, name in enumerate(model.cfg.classes)
        if (clips.labels == i).any()
    }
    return Accuracy(final=float(last.mean()), by_frames=by_frames, per_class=per_class)


def train_video_lstm(
    epochs: int = 4,
    max_seconds: float | None = 900.0,
    seed: int = 0,
    train_clips: int = SplitSizes.train,
    lr: float = 2e-3,
    batch_size: int = 64,
    checkpoint: Path = CHECKPOINT,
    progress: bool = True,
) -> Path:
    """Build the clips (cached), train, evaluate on the held-out test clips, save."""
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    sizes = SplitSizes(train=train_clips)
    clip_cfg = ClipConfig()
    splits = build_splits(seed=seed, sizes=sizes, cfg=clip_cfg)
    cfg = VideoConfig(height=clip_cfg.canvas, width=clip_cfg.canvas)
    torch.manual_seed(seed)
    model = VideoLSTM(cfg)
    log.info("video_lstm: %d parameters", count_parameters(model))
    train_cfg = TrainConfig(
        epochs=epochs,
        batch_size=batch_size,
        val_batch_size=500,
        lr=lr,
        patience=2,
        seed=seed,
        max_seconds=max_seconds,
        progress=progress,
    )
    started = time.monotonic()
    result = fit(
        model, clip_loss, ClipDataset(splits["train"]), ClipDataset(splits["val"]), train_cfg
    )
    seconds = time.monotonic() - started
    val = evaluate(model, splits["val"])
    test = evaluate(model, splits["test"])
    log.info(
        "video_lstm: val accuracy %.4f, test accuracy %.4f after %d epochs (%.0f s)",
        val.final,
        test.final,
        result.epochs_run,
        seconds,
    )
    meta: dict[str, Any] = {
        "test_accuracy": test.final,
        "val_accuracy": val.final,
        "test_accuracy_by_frames": test.by_frames,
        "test_accuracy_per_class": test.per_class,
        "chance_accuracy": 1.0 / len(cfg.classes),
        "test_clips": len(splits["test"]),
        "train_clips": len(splits["train"]),
        "val_clips": len(splits["val"]),
        "epochs_run": result.epochs_run,
        "best_epoch": result.best_epoch,
        "train_seconds": round(seconds, 1),
        "history": result.history,
        "seed": seed,
        "parameters": count_parameters(model),
        "clip_config": repr(clip_cfg),
    }
    return save_checkpoint(checkpoint, model, cfg, meta)
