"""Training recipe for ``video_caption``: the decoder learns captions from video states.

The shipped ``video_lstm`` is frozen. It runs over the scene clips of
:mod:`statecast.models.video_scenes` (the same splits as its own training), and its state
``h`` after frame k (k >= :data:`MIN_FRAMES`) becomes the context of one training row whose
target is the clip's templated caption. Teacher forcing, cross-entropy per word, early
stopping on the validation clips.

Evaluation on the held-out test clips (unseen images and video) decodes greedily from the
state after each clip's last frame and reports exact match, corpus BLEU-4 (one reference
per clip) and how often each slot (garment, subject motion, camera motion) is right.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from statecast.contract.manifest import sha256_file
from statecast.contract.paths import PACKAGE_ROOT, cache_dir
from statecast.models.caption import (
    BOS,
    EOS,
    MAX_WORDS,
    PAD,
    WORD_ID,
    CaptionConfig,
    CaptionDecoder,
    target_matrix,
)
from statecast.models.trainer import (
    TrainConfig,
    count_parameters,
    fit,
    load_checkpoint,
    save_checkpoint,
)
from statecast.models.video import VideoLSTM
from statecast.models.video_data import Split
from statecast.models.video_scenes import Scenes, build_scene_splits

log = logging.getLogger(__name__)

NAME = "video_caption"
CHECKPOINT = PACKAGE_ROOT / "models" / "checkpoints" / f"{NAME}.pt"
VIDEO_CHECKPOINT = PACKAGE_ROOT / "models" / "checkpoints" / "video_lstm.pt"
MIN_FRAMES = 4  # captions are asked for after a few frames, never after one
F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]


def video_states(model: VideoLSTM, clips: Scenes, batch: int = 500) -> F32:
    """``[N, T, hidden]``: the video model's ``h`` after every frame of every clip."""
    model.eval()
    parts = []
    with torch.no_grad():
        for lo in range(0, len(clips), batch):
            frames = torch.from_numpy(clips.frames[lo : lo + batch]).unsqueeze(2).float()
            lengths = torch.from_numpy(clips.lengths[lo : lo + batch])
            parts.append(model.hidden_states(frames, lengths).numpy())
    return np.concatenate(parts).astype(np.float32)


def cached_states(video_ckpt: Path, splits: Mapping[Split, Scenes]) -> dict[Split, F32]:
    """:func:`video_states` of every split, cached by the video checkpoint's digest."""
    digest = hashlib.sha256(
        (sha256_file(video_ckpt) + repr([len(s) for s in splits.values()])).encode()
    ).hexdigest()[:12]
    path = cache_dir() / "video" / f"caption-states-{digest}.npz"
    if path.is_file():
        with np.load(path) as z:
            return {k: z[k] for k in splits}
    model, _ = load_checkpoint(video_ckpt)
    if not isinstance(model, VideoLSTM):
        raise TypeError(f"{video_ckpt} does not hold a VideoLSTM")
    out = {k: video_states(model, v) for k, v in splits.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **out)  # type: ignore[arg-type]
    return out


def caption_rows(states: F32, clips: Scenes, min_frames: int = MIN_FRAMES) -> TensorDataset:
    """One row per (clip, frame k >= min_frames): (context, input tokens, target tokens)."""
    t = states.shape[1]
    valid = (np.arange(t)[None, :] < clips.lengths[:, None]) & (
        np.arange(t)[None, :] >= min_frames - 1
    )
    targets = target_matrix(clips.labels, clips.garments, clips.cameras)
    clip_of, _ = np.nonzero(valid)
    ctx = states[valid]
    tgt = targets[clip_of]
    inp = np.concatenate([np.full((len(tgt), 1), WORD_ID[BOS]), tgt[:, :-1]], axis=1)
    return TensorDataset(torch.from_numpy(ctx), torch.from_numpy(inp), torch.from_numpy(tgt))


def caption_loss(model: nn.Module, batch: tuple[Tensor, Tensor, Tensor]) -> Tensor:
    ctx, inp, tgt = batch
    logits = model(inp, ctx)
    loss: Tensor = nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1), ignore_index=WORD_ID[PAD]
    )
    return loss


def greedy(model: CaptionDecoder, context: Tensor, steps: int = MAX_WORDS) -> I64:
    """``[B, steps]`` greedy word ids from each context (the reference for the ONNX step)."""
    model.eval()
    b = context.shape[0]
    h = torch.zeros(1, b, model.cfg.hidden)
    c = torch.zeros(1, b, model.cfg.hidden)
    tok = torch.full((b, 1), WORD_ID[BOS], dtype=torch.int64)
    ctx = model.context(context).unsqueeze(1)
    out = []
    with torch.no_grad():
        for _ in range(steps):
            seq, (h, c) = model.lstm(torch.cat([model.embed(tok), ctx], dim=-1), (h, c))
            tok = model.out(seq[:, 0]).argmax(-1, keepdim=True)
            out.append(tok)
    ids: I64 = torch.cat(out, dim=1).numpy().astype(np.int64)
    return ids


def trim(ids: Sequence[int]) -> list[int]:
    """Word ids up to (not including) ``<eos>``."""
    out = []
    for i in ids:
        if i == WORD_ID[EOS]:
            break
        out.append(int(i))
    return out


def corpus_bleu(hypotheses: Sequence[Sequence[int]], references: Sequence[Sequence[int]]) -> float:
    """BLEU-4 (Papineni et al. 2002): clipped 1-4-gram precisions over the corpus, geometric
    mean with equal weights, brevity penalty; one reference per hypothesis, no smoothing."""
    matched = [0] * 4
    total = [0] * 4
    hyp_len = ref_len = 0
    for hyp, ref in zip(hypotheses, references, strict=True):
        hyp_len += len(hyp)
        ref_len += len(ref)
        for n in range(1, 5):
            h = Counter(tuple(hyp[i : i + n]) for i in range(len(hyp) - n + 1))
            r = Counter(tuple(ref[i : i + n]) for i in range(len(ref) - n + 1))
            matched[n - 1] += sum(min(c, r[g]) for g, c in h.items())
            total[n - 1] += max(len(hyp) - n + 1, 0)
    if min(matched) == 0 or hyp_len == 0:
        return 0.0
    log_p = sum(math.log(m / t) for m, t in zip(matched, total, strict=True)) / 4
    bp = 1.0 if hyp_len > ref_len else math.exp(1 - ref_len / hyp_len)
    return bp * math.exp(log_p)


def evaluate_captions(model: CaptionDecoder, states: F32, clips: Scenes) -> dict[str, Any]:
    """Greedy captions from the state after each clip's last frame vs the templates."""
    n = len(clips)
    ctx = torch.from_numpy(states[np.arange(n), clips.lengths - 1])
    return score_captions(greedy(model, ctx), clips)


def template_baseline(
    video: VideoLSTM, states: F32, clips: Scenes, train: Scenes
) -> dict[str, Any]:
    """The caption baseline with no decoder: the template filled with the video model's own
    motion class after each clip's last frame and the training clips' most frequent garment
    and camera motion. It moves with the video model, so it is scored beside every decoder."""
    n = len(clips)
    with torch.no_grad():
        last = torch.from_numpy(states[np.arange(n), clips.lengths - 1])
        motion = video.head(last).argmax(-1).numpy()
    garment = np.full(n, int(np.bincount(train.garments).argmax()))
    camera = np.full(n, int(np.bincount(train.cameras).argmax()))
    return score_captions(target_matrix(motion, garment, camera), clips)


def score_captions(ids: npt.ArrayLike, clips: Scenes) -> dict[str, Any]:
    """Exact match, corpus BLEU-4 and per-slot accuracy of word-id rows vs the templates."""
    hyps = [trim(row) for row in np.asarray(ids).tolist()]
    refs = [trim(row) for row in target_matrix(clips.labels, clips.garments, clips.cameras)]
    exact = float(np.mean([h == r for h, r in zip(hyps, refs, strict=True)]))
    # Slot positions in the template: 1 garment, 2-3 subject motion, 7-8 camera motion.
    slots = {"garment": slice(1, 2), "motion": slice(2, 4), "camera": slice(7, 9)}
    slot_acc = {
        name: float(np.mean([h[sl] == r[sl] for h, r in zip(hyps, refs, strict=True)]))
        for name, sl in slots.items()
    }
    return {"exact_match": exact, "bleu4": corpus_bleu(hyps, refs), "slot_accuracy": slot_acc}


def train_video_caption(
    epochs: int = 8,
    max_seconds: float | None = 480.0,
    seed: int = 0,
    lr: float = 3e-3,
    batch_size: int = 256,
    checkpoint: Path = CHECKPOINT,
    video_checkpoint: Path = VIDEO_CHECKPOINT,
    progress: bool = True,
) -> Path:
    """States of the frozen video model (cached), train the decoder, evaluate, save."""
    torch.set_num_threads(1)
    # --set checkpoint=... arrives as text
    checkpoint, video_checkpoint = Path(checkpoint), Path(video_checkpoint)
    splits = build_scene_splits(seed=seed)
    states = cached_states(video_checkpoint, splits)
    video, video_ckpt = load_checkpoint(video_checkpoint)
    if not isinstance(video, VideoLSTM):
        raise TypeError(f"{video_checkpoint} does not hold a VideoLSTM")
    cfg = CaptionConfig(context=int(video_ckpt.config["hidden"]))
    torch.manual_seed(seed)
    model = CaptionDecoder(cfg)
    train_cfg = TrainConfig(
        epochs=epochs,
        batch_size=batch_size,
        val_batch_size=1024,
        lr=lr,
        patience=2,
        seed=seed,
        max_seconds=max_seconds,
        progress=progress,
    )
    started = time.monotonic()
    result = fit(
        model,
        caption_loss,
        caption_rows(states["train"], splits["train"]),
        caption_rows(states["val"], splits["val"]),
        train_cfg,
    )
    seconds = time.monotonic() - started
    test = evaluate_captions(model, states["test"], splits["test"])
    val = evaluate_captions(model, states["val"], splits["val"])
    baseline = template_baseline(video, states["test"], splits["test"], splits["train"])
    log.info(
        "video_caption: test exact %.4f BLEU-4 %.4f (val exact %.4f) after %d epochs (%.0f s)",
        test["exact_match"],
        test["bleu4"],
        val["exact_match"],
        result.epochs_run,
        seconds,
    )
    meta: dict[str, Any] = {
        "test": test,
        "val": val,
        "baseline": baseline,
        "test_clips": len(splits["test"]),
        "epochs_run": result.epochs_run,
        "best_epoch": result.best_epoch,
        "train_seconds": round(seconds, 1),
        "history": result.history,
        "seed": seed,
        "parameters": count_parameters(model),
        "video_checkpoint_sha256": sha256_file(video_checkpoint),
        "min_frames": MIN_FRAMES,
    }
    return save_checkpoint(checkpoint, model, cfg, meta)
