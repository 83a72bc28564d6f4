"""One model-agnostic training loop and the checkpoint format every model shares.

Usage (any model kind)::

    result = fit(
        model,                      # any nn.Module
        loss_fn,                    # (model, batch) -> scalar loss tensor (a mean)
        train_data, val_data,       # torch Datasets; batches come from the default collate
        TrainConfig(epochs=30, seed=0),
    )
    save_checkpoint(path, model, config, meta={"test_mae": ...})
    model, ckpt = load_checkpoint(path)   # rebuilds the module from the file alone

``fit`` seeds torch/numpy/python and the DataLoader, shows a tqdm bar (one tick per epoch,
train and validation loss as postfix), stops early when the validation loss has not
improved for ``patience`` epochs, and leaves the model holding its best weights.

A checkpoint is a ``torch.save`` dict of plain types only (loaded with
``weights_only=True``): the model class and config class as ``"module:Name"`` strings,
the config as a dict (a config class may define ``to_dict``/``from_dict``; otherwise
``dataclasses.asdict`` and ``cls(**d)`` are used, so keep config fields plain), the
state dict, and a free ``meta`` dict (figures, data split, seed).
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1
M = TypeVar("M", bound=nn.Module)
Batch = Any  # whatever the default collate makes of one Dataset item (tensors, tuples)
LossFn = Callable[[nn.Module, Batch], Tensor]


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 30
    batch_size: int = 32
    val_batch_size: int = 1
    lr: float = 1e-3
    weight_decay: float = 0.0
    # Epochs without a validation improvement before stopping.
    patience: int = 5
    # An improvement smaller than this (relative) does not reset the patience counter.
    min_rel_improvement: float = 1e-3
    grad_clip: float | None = 1.0
    seed: int = 0
    # Wall-clock budget; the loop stops after the epoch that crosses it.
    max_seconds: float | None = None
    progress: bool = True
    # Batches per epoch (None: the whole training set once).
    steps_per_epoch: int | None = None


@dataclass
class TrainResult:
    best_epoch: int
    best_val_loss: float
    epochs_run: int
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    gen = torch.Generator()
    gen.manual_seed(seed)
    return gen


def evaluate_loss(model: nn.Module, loss_fn: LossFn, loader: DataLoader[Any]) -> float:
    """Mean of ``loss_fn`` over the batches of ``loader`` in eval mode, without gradients."""
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in loader:
            total += float(loss_fn(model, batch))
            count += 1
    return total / max(count, 1)


def fit(
    model: nn.Module,
    loss_fn: LossFn,
    train_data: Dataset[Any],
    val_data: Dataset[Any],
    config: TrainConfig,
) -> TrainResult:
    """Train ``model`` in place; on return it holds the weights of its best validation epoch."""
    gen = seed_everything(config.seed)
    train_loader = DataLoader(train_data, batch_size=config.batch_size, shuffle=True, generator=gen)
    val_loader = DataLoader(val_data, batch_size=config.val_batch_size, shuffle=False)
    optim = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)

    best_val = math.inf
    best_state = copy.deepcopy(model.state_dict())
    best_epoch, stale = -1, 0
    history: list[dict[str, float]] = []
    start = time.monotonic()
    bar = tqdm(range(config.epochs), desc="train", unit="epoch", disable=not config.progress)
    epoch = -1
    for epoch in bar:
        train_loss = _train_epoch(model, loss_fn, train_loader, optim, config)
        val_loss = evaluate_loss(model, loss_fn, val_loader)
        history.append({"epoch": float(epoch), "train_loss": train_loss, "val_loss": val_loss})
        bar.set_postfix(train=f"{train_loss:.4f}", val=f"{val_loss:.4f}", best=f"{best_val:.4f}")
        log.debug("epoch %d train %.5f val %.5f", epoch, train_loss, val_loss)
        if val_loss < best_val - abs(best_val) * config.min_rel_improvement or best_epoch < 0:
            best_val, best_epoch, stale = val_loss, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            stale += 1
            if stale >= config.patience:
                log.info("early stop at epoch %d (best %d, val %.5f)", epoch, best_epoch, best_val)
                break
        if config.max_seconds is not None and time.monotonic() - start > config.max_seconds:
            log.info("time budget of %.0f s spent after epoch %d", config.max_seconds, epoch)
            break
    bar.close()
    model.load_state_dict(best_state)
    model.eval()
    return TrainResult(
        best_epoch=best_epoch,
        best_val_loss=best_val,
        epochs_run=epoch + 1,
        seconds=time.monotonic() - start,
        history=history,
    )


def _train_epoch(
    model: nn.Module,
    loss_fn: LossFn,
    loader: DataLoader[Any],
    optim: torch.optim.Optimizer,
    config: TrainConfig,
) -> float:
    model.train()
    total, count = 0.0, 0
    for batch in loader:
        optim.zero_grad(set_to_none=True)
        loss = loss_fn(model, batch)
        loss.backward()  # type: ignore[no-untyped-call]
        if config.grad_clip is not None:
            nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optim.step()
        total += float(loss.detach())
        count += 1
        if config.steps_per_epoch is not None and count >= config.steps_per_epoch:
            break
    return total / max(count, 1)


# --- checkpoints -------------------------------------------------------------------------


@dataclass(frozen=True)
class Checkpoint:
    model_class: str
    config_class: str
    config: dict[str, Any]
    state_dict: dict[str, Tensor]
    meta: dict[str, Any]


_SUBPACKAGES = frozenset({"worker", "models", "export", "loadtest"})


def _qualname(obj: type) -> str:
    return f"{obj.__module__}:{obj.__qualname__}"


def import_object(ref: str) -> Any:
    """``"package.module:Name"`` -> the object (used for checkpoints and the registry)."""
    module_name, _, attr = ref.partition(":")
    if not module_name or not attr:
        raise ValueError(f"expected 'module:name', got {ref!r}")
    if module_name.split(".")[0] in _SUBPACKAGES:
        # Checkpoints written before the one-package layout name "models.forecast".
        module_name = f"statecast.{module_name}"
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def _config_to_dict(config: Any) -> dict[str, Any]:
    to_dict = getattr(config, "to_dict", None)
    if callable(to_dict):
        return dict(to_dict())
    return dataclasses.asdict(config)


def save_checkpoint(
    path: Path, model: nn.Module, config: Any, meta: dict[str, Any] | None = None
) -> Path:
    """Write ``model`` (built as ``type(model)(config)``) with its config and ``meta``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "model_class": _qualname(type(model)),
        "config_class": _qualname(type(config)),
        "config": _config_to_dict(config),
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "meta": dict(meta or {}),
    }
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
    return path


def read_checkpoint(path: Path) -> Checkpoint:
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a statecast checkpoint (format {CHECKPOINT_FORMAT})")
    return Checkpoint(
        model_class=str(payload["model_class"]),
        config_class=str(payload["config_class"]),
        config=dict(payload["config"]),
        state_dict=dict(payload["state_dict"]),
        meta=dict(payload["meta"]),
    )


def build_config(ckpt: Checkpoint) -> Any:
    config_cls = import_object(ckpt.config_class)
    from_dict = getattr(config_cls, "from_dict", None)
    if callable(from_dict):
        return from_dict(ckpt.config)
    return config_cls(**ckpt.config)


def load_checkpoint(path: Path) -> tuple[nn.Module, Checkpoint]:
    """Rebuild the module from the checkpoint alone, in eval mode, and return it with the file."""
    ckpt = read_checkpoint(path)
    model = import_object(ckpt.model_class)(build_config(ckpt))
    if not isinstance(model, nn.Module):
        raise ValueError(f"{ckpt.model_class} did not build an nn.Module")
    model.load_state_dict(ckpt.state_dict)
    model.eval()
    return model, ckpt


def load_checkpoint_as(path: Path, cls: type[M]) -> tuple[M, Checkpoint]:
    """:func:`load_checkpoint` for a caller that needs one model class: a checkpoint of any
    other class is a ``TypeError`` (an exporter handed the wrong file must not export it)."""
    model, ckpt = load_checkpoint(path)
    if not isinstance(model, cls):
        raise TypeError(f"{path} holds a {type(model).__name__}, not a {cls.__name__}")
    return model, ckpt


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
