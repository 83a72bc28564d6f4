"""Train ``char_lstm`` on IMDB training reviews; report bits per character against n-grams.

Training is truncated back-propagation through time over ``batch`` parallel slices of one
byte stream: each row carries its (detached) state from one ``seq``-byte chunk to the next,
so the model learns to use a long-running state as the worker keeps one per stream. One
pass over ``train_bytes`` bytes, Adam with a cosine learning-rate decay, a fixed number of
steps (so a run is reproducible whatever the machine's speed; ``max_seconds`` is only a
safety net and is recorded when it cut a run short).

Evaluation scores the val and test byte streams the same way (state carried) in bits per
character, and fits the interpolated Kneser-Ney n-gram baseline (orders 3-5) on exactly the
bytes the RNN was trained on; the order with the best validation score is the baseline.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from statecast.contract.paths import PACKAGE_ROOT
from statecast.models import charrnn_data as data
from statecast.models.charrnn import CONTEXT, PAD_BYTE, CharConfig, CharLSTM, State
from statecast.models.charrnn_ngram import KneserNey
from statecast.models.trainer import (
    count_parameters,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
    seed_everything,
)

log = logging.getLogger(__name__)

MODEL_NAME = "char_lstm"
CHECKPOINT_PATH = PACKAGE_ROOT / "models" / "checkpoints" / f"{MODEL_NAME}.pt"
NGRAM_ORDERS = (3, 4, 5)
LN2 = math.log(2.0)


def _detach(state: State) -> State:
    return state[0].detach(), state[1].detach()


def _history(grid: torch.Tensor, start: int) -> torch.Tensor:
    """The ``CONTEXT`` bytes before column ``start`` of each row (newlines before 0)."""
    if start >= CONTEXT:
        return grid[:, start - CONTEXT : start]
    pad = torch.full((grid.shape[0], CONTEXT - start), PAD_BYTE, dtype=grid.dtype)
    return torch.cat([pad, grid[:, :start]], dim=1)


def bits_per_char(
    model: CharLSTM, stream: np.ndarray[Any, Any], rows: int = 16, seq: int = 256
) -> float:
    """Mean bits per byte of ``stream`` under ``model``, state carried, every byte after
    the first of each of ``rows`` slices scored once."""
    model.eval()
    grid = torch.from_numpy(data.parallel_streams(stream, rows))
    state: State | None = None
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, grid.shape[1] - 1, seq):
            x = grid[:, start : start + seq]
            y = grid[:, start + 1 : start + seq + 1]
            x = x[:, : y.shape[1]]
            logits, state = model(x, _history(grid, start), state)
            loss = nn.functional.cross_entropy(
                logits.reshape(-1, 256), y.reshape(-1), reduction="sum"
            )
            total += float(loss)
            count += y.numel()
    return total / count / LN2


def ngram_baseline(
    train: np.ndarray[Any, Any], val: np.ndarray[Any, Any], test: np.ndarray[Any, Any]
) -> dict[str, Any]:
    """Kneser-Ney orders 3-5 fitted on ``train``; the best on ``val`` is the baseline."""
    by_order: dict[str, float] = {}
    best: tuple[float, int, float] | None = None
    for order in NGRAM_ORDERS:
        lm = KneserNey.fit(train, order)
        val_bpc = lm.bits_per_char(val)
        by_order[str(order)] = round(val_bpc, 4)
        log.info("Kneser-Ney order %d: val %.4f bpc", order, val_bpc)
        if best is None or val_bpc < best[0]:
            best = (val_bpc, order, lm.bits_per_char(test))
    assert best is not None
    return {
        "baseline": f"interpolated Kneser-Ney {best[1]}-gram (orders 3-5, best on val)",
        "baseline_order": best[1],
        "baseline_val_bpc": round(best[0], 4),
        "baseline_test_bpc": round(best[2], 4),
        "baseline_val_bpc_by_order": by_order,
    }


def train_char_lstm(
    epochs: int = 2,
    seed: int = 0,
    max_seconds: float | None = None,
    progress: bool = True,
    train_bytes: int = data.DEFAULT_TRAIN_BYTES,
    eval_bytes: int = data.DEFAULT_EVAL_BYTES,
    batch: int = 64,
    seq: int = 128,
    lr: float = 3e-3,
    hidden: int = 256,
    embed_dim: int = 64,
    ngram_buckets: int = 65_536,
    ngram_dim: int = 24,
    checkpoint: Path = CHECKPOINT_PATH,
) -> Path:
    torch.set_num_threads(1)
    seed_everything(seed)
    train = data.imdb_bytes("train", train_bytes)
    grid = torch.from_numpy(data.parallel_streams(train, batch))
    steps_per_epoch = (grid.shape[1] - 1) // seq
    total_steps = steps_per_epoch * epochs
    config = CharConfig(
        embed_dim=embed_dim, hidden=hidden, ngram_buckets=ngram_buckets, ngram_dim=ngram_dim
    )
    model = CharLSTM(config)
    optim = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        optim, lambda s: 0.5 * (1.0 + math.cos(math.pi * min(s, total_steps) / total_steps))
    )
    log.info(
        "char_lstm: %d parameters, %d steps of %dx%d bytes",
        count_parameters(model),
        total_steps,
        batch,
        seq,
    )
    start = time.monotonic()
    done, cut_short = 0, False
    bar = tqdm(total=total_steps, desc="char_lstm", unit="step", disable=not progress)
    running = 0.0
    for _ in range(epochs):
        state: State | None = None
        model.train()
        for s in range(steps_per_epoch):
            x = grid[:, s * seq : (s + 1) * seq]
            y = grid[:, s * seq + 1 : (s + 1) * seq + 1]
            logits, new_state = model(x, _history(grid, s * seq), state)
            loss = nn.functional.cross_entropy(logits.reshape(-1, 256), y.reshape(-1))
            optim.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optim.step()
            sched.step()
            state = _detach(new_state)
            done += 1
            bpc = float(loss.detach()) / LN2
            running = 0.98 * running + 0.02 * bpc if done > 1 else bpc
            bar.update(1)
            if done % 50 == 0:
                bar.set_postfix(bpc=f"{running:.3f}")
            if max_seconds is not None and time.monotonic() - start > max_seconds:
                cut_short = True
                break
        if cut_short:
            break
    bar.close()
    seconds = time.monotonic() - start
    val = data.imdb_bytes("val", eval_bytes)
    test = data.imdb_bytes("test", eval_bytes)
    meta: dict[str, Any] = {
        "seed": seed,
        "train_bytes": len(train),
        "bytes_seen": int(done * batch * seq),  # short of train_bytes by the slices' tails
        "steps": done,
        "planned_steps": total_steps,
        "cut_short": cut_short,
        "train_seconds": round(seconds, 1),
        "batch": batch,
        "seq": seq,
        "lr": lr,
        "parameters": count_parameters(model),
        "eval_bytes": eval_bytes,
        "val_bpc": round(bits_per_char(model, val), 4),
        "test_bpc": round(bits_per_char(model, test), 4),
    }
    log.info(
        "char_lstm: val %.4f bpc, test %.4f bpc after %.0f s",
        meta["val_bpc"],
        meta["test_bpc"],
        seconds,
    )
    save_checkpoint(checkpoint, model, config, meta)
    add_baseline(checkpoint)
    return checkpoint


def add_baseline(checkpoint: Path = CHECKPOINT_PATH) -> dict[str, Any]:
    """Fit the n-gram baseline on the checkpoint's training bytes and store its figures."""
    model, ckpt = load_checkpoint(checkpoint)
    meta = dict(ckpt.meta)
    train = data.imdb_bytes("train", int(meta["train_bytes"]))
    val = data.imdb_bytes("val", int(meta["eval_bytes"]))
    test = data.imdb_bytes("test", int(meta["eval_bytes"]))
    meta.update(ngram_baseline(train, val, test))
    save_checkpoint(checkpoint, model, read_checkpoint_config(checkpoint), meta)
    return meta


def read_checkpoint_config(checkpoint: Path) -> CharConfig:
    return CharConfig.from_dict(read_checkpoint(checkpoint).config)
