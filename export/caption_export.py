"""Export ``video_caption`` as a decoder step model, check its parity, time its decoding.

One step is one word for every caption being written: ``x`` ``[B, 1]`` int64 (the previous
word, ``<bos>`` first), ``context`` ``[B, C]`` float32 (a copy of the camera's
``video_lstm`` state ``h``), ``state_in.h`` / ``state_in.c`` ``[1, B, hidden]`` (zeros
start a caption); outputs ``logits`` ``[B, V]`` over the vocabulary and the next decoder
state. The vocabulary, ``<bos>``/``<eos>`` ids and the caption length limit travel in the
spec's ``preprocess``, so the worker decodes without the training code.

Parity: teacher-forced word sequences from seeded random contexts, run step by step
against the PyTorch decoder over the whole sequence (needs no data set).
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from statecast.contract.manifest import ManifestEntry, upsert_entry
from statecast.contract.paths import PACKAGE_ROOT
from statecast.contract.spec import ModelSpec, OutputSpec, StateSpec, TensorSpec
from statecast.export.parity import check_parity, open_session, step_parity
from statecast.export.step_export import export_step_model, manifest_entry
from statecast.models.caption import (
    BOS,
    EOS,
    MAX_WORDS,
    WORD_ID,
    CaptionDecoder,
    CaptionStep,
)
from statecast.models.trainer import load_checkpoint_as
from statecast.worker.captions import Captioner

log = logging.getLogger(__name__)

NAME = "video_caption"
VERSION = "2"
MODELS_DIR = PACKAGE_ROOT / "models"
ONNX_PATH = MODELS_DIR / "onnx" / f"{NAME}.onnx"
CHECKPOINT_PATH = MODELS_DIR / "checkpoints" / f"{NAME}.pt"
PARITY_SEED = 2718
PARITY_BATCHES = (1, 64)
CONTEXT_MODEL = "video_lstm"

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]


def load_model(path: Path = CHECKPOINT_PATH) -> tuple[CaptionDecoder, dict[str, Any]]:
    model, ckpt = load_checkpoint_as(path, CaptionDecoder)
    return model, ckpt.meta


def build_spec(model: CaptionDecoder) -> ModelSpec:
    cfg = model.cfg
    return ModelSpec(
        name=NAME,
        version=VERSION,
        kind="decoder",
        inputs=(
            TensorSpec("x", "int64", (-1, 1)),
            TensorSpec("context", "float32", (-1, cfg.context)),
        ),
        outputs=(
            OutputSpec(
                "logits",
                unit="logit",
                fields=cfg.vocab,
                description="scores of the next caption word",
            ),
        ),
        states=(StateSpec("h", 1, cfg.hidden), StateSpec("c", 1, cfg.hidden)),
        preprocess={
            "vocab": list(cfg.vocab),
            "bos": WORD_ID[BOS],
            "eos": WORD_ID[EOS],
            "max_words": MAX_WORDS,
            # The context is this state of that model, after a frame, batch axis first.
            "context": {"model": CONTEXT_MODEL, "state": "h", "size": cfg.context},
        },
    )


def parity_inputs(model: CaptionDecoder, batch: int, seed: int = PARITY_SEED) -> tuple[F32, I64]:
    """Seeded contexts ``[B, C]`` (LSTM-state-like, in -1..1) and word ids ``[B, T]``."""
    rng = np.random.default_rng(seed + batch)
    ctx = np.tanh(rng.normal(0, 1.0, size=(batch, model.cfg.context))).astype(np.float32)
    tokens = rng.integers(0, len(model.cfg.vocab), size=(batch, MAX_WORDS)).astype(np.int64)
    tokens[:, 0] = WORD_ID[BOS]
    return ctx, tokens


def parity_video_caption(onnx_path: Path = ONNX_PATH) -> float:
    """Worst abs diff of the logits, step by step vs whole sequence, at batch 1 and 64."""
    model, _ = load_model()
    model.eval()
    worst = 0.0
    for batch in PARITY_BATCHES:
        ctx, tokens = parity_inputs(model, batch)
        with torch.no_grad():
            ref = model(torch.from_numpy(tokens), torch.from_numpy(ctx)).numpy()
        steps: list[dict[str, npt.NDArray[Any]]] = [
            {"x": np.ascontiguousarray(tokens[:, t : t + 1]), "context": ctx}
            for t in range(tokens.shape[1])
        ]
        expected = [{"logits": ref[:, t]} for t in range(tokens.shape[1])]
        diff = step_parity(onnx_path, steps, expected)
        log.info("parity batch %d: %d steps, max abs diff %.3g", batch, len(steps), diff)
        worst = max(worst, diff)
    return worst


def decoding_cost(
    onnx_path: Path = ONNX_PATH, batches: tuple[int, ...] = (1, 16, 64), seconds: float = 1.5
) -> dict[str, float]:
    """Milliseconds per caption, greedy, one intra-op thread, at each batch size."""
    sess, spec = open_session(onnx_path)
    captioner = Captioner(sess, spec)
    rng = np.random.default_rng(0)
    out: dict[str, float] = {}
    for b in batches:
        ctx = np.tanh(rng.normal(size=(b, captioner.context_size))).astype(np.float32)
        captioner.token_ids(ctx)  # warm-up
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            captioner.token_ids(ctx)
            n += b
        out[f"batch_{b}"] = round(1000.0 * (time.perf_counter() - start) / n, 4)
    return out


def export_video_caption() -> ManifestEntry:
    """Write ``models/onnx/video_caption.onnx`` and upsert its manifest entry."""
    model, meta = load_model()
    spec = build_spec(model)
    cfg = model.cfg
    example = (
        torch.zeros(2, 1, dtype=torch.int64),
        torch.zeros(2, cfg.context),
        torch.zeros(1, 2, cfg.hidden),
        torch.zeros(1, 2, cfg.hidden),
    )
    export_step_model(
        CaptionStep(model),
        spec,
        ONNX_PATH,
        inputs=example,
        doc="statecast video_caption: one caption word per step from a camera's video state",
    )
    parity = check_parity(parity_video_caption(), NAME)
    test = meta["test"]
    metrics: dict[str, Any] = {
        "test_exact_match": round(test["exact_match"], 4),
        "test_bleu4": round(test["bleu4"], 4),
        "test_slot_accuracy": {k: round(v, 4) for k, v in test["slot_accuracy"].items()},
        # The language is templated: there is no caption baseline, only chance per slot.
        "chance_slot_accuracy": {"garment": 0.1, "motion": 0.125, "camera": round(1 / 9, 4)},
        "test_clips": meta["test_clips"],
        "split": (
            "the 3,000 video_lstm test clips; context = video_lstm state h after each "
            "clip's last frame; greedy decoding vs the clip's template caption"
        ),
        "decode_ms_per_caption": decoding_cost(),
        "parity_max_abs_diff": parity,
    }
    if "baseline" in meta:  # checkpoints from before the baseline was scored lack it
        base = meta["baseline"]
        metrics["baseline"] = (
            "template from video_lstm's motion class + training-majority garment and camera"
        )
        metrics["baseline_bleu4"] = round(base["bleu4"], 4)
        metrics["baseline_slot_accuracy"] = {
            k: round(v, 4) for k, v in base["slot_accuracy"].items()
        }
    # Manifest paths are relative to the folder above models/ (symlinks resolved).
    entry = manifest_entry(spec, ONNX_PATH, metrics, root=MODELS_DIR.resolve().parent)
    upsert_entry(entry)
    log.info("exported %s (exact %.4f, BLEU-4 %.4f)", ONNX_PATH, test["exact_match"], test["bleu4"])
    return entry


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="video_caption: export, parity, decoding cost")
    parser.add_argument("what", choices=("export", "parity", "cost"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")
    if args.what == "export":
        print(export_video_caption().to_dict())
    elif args.what == "parity":
        print(f"parity max abs diff {parity_video_caption():.3g}")
    else:
        print(decoding_cost())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
