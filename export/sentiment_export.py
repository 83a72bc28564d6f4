"""Export the sentiment model (LSTM + running n-gram term) as a step model; check its parity.

The step graph (``statecast.models.sentiment.HybridStep``) takes ``x`` ``[B, T]`` int64 token
ids and ``lengths`` ``[B]`` int64, carries ``state_in.h`` / ``state_in.c`` (the LSTM) and
``state_in.ngram`` ``[1, B, 4]`` (running n-gram sum, token count, last two token ids) and
outputs ``positive`` ``[B, 1]``, the tempered mix of both parts' logits. ``spec.preprocess``
tells the worker which tokenizer to load (path relative to the ONNX file's directory, pinned
by sha256) and the longest chunk one step takes.

Parity is checked over whole texts cut into chunks: at every step each row's output must
equal the PyTorch model's score of that row's text read so far, for texts of mixed
lengths in one batch (rows whose text has ended run on with length 0 and keep their state).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import torch

from statecast.contract.manifest import Artefact, ManifestEntry, sha256_file, upsert_entry
from statecast.contract.paths import PACKAGE_ROOT
from statecast.contract.spec import ModelSpec, OutputSpec, StateSpec, TensorSpec
from statecast.export.parity import check_parity, chunk_steps, step_parity
from statecast.export.step_export import export_step_model, manifest_entry
from statecast.models.sentiment import NGRAM_STATE, HybridStep, SentimentHybrid
from statecast.models.trainer import load_checkpoint_as

log = logging.getLogger(__name__)

NAME = "sentiment_lstm"
VERSION = "2"
MODELS_DIR = PACKAGE_ROOT / "models"
ONNX_PATH = MODELS_DIR / "onnx" / f"{NAME}.onnx"
CHECKPOINT_PATH = MODELS_DIR / "checkpoints" / f"{NAME}.pt"
TOKENIZER_PATH = MODELS_DIR / "tokenizer" / f"{NAME}.json"
# The longest chunk one step consumes; longer texts run as several steps.
MAX_CHUNK_TOKENS = 128
# Texts longer than this (characters) are refused before tokenization.
MAX_TEXT_CHARS = 20_000

PARITY_SEED = 1234
PARITY_CHUNKS = (MAX_CHUNK_TOKENS, 37)
PARITY_MAX_TOKENS = 700
PARITY_BATCHES = (1, 64)


def load_model(path: Path = CHECKPOINT_PATH) -> tuple[SentimentHybrid, dict[str, Any]]:
    model, ckpt = load_checkpoint_as(path, SentimentHybrid)
    return model, ckpt.meta


def build_spec(model: SentimentHybrid, tokenizer: Path = TOKENIZER_PATH) -> ModelSpec:
    cfg = model.config.lstm
    return ModelSpec(
        name=NAME,
        version=VERSION,
        kind="sentiment",
        inputs=(
            TensorSpec("x", "int64", (-1, -1)),
            TensorSpec("lengths", "int64", (-1,)),
        ),
        outputs=(
            OutputSpec(
                "positive",
                unit="probability",
                description="P(positive sentiment) of the text read so far",
            ),
        ),
        states=(
            StateSpec("h", 1, cfg.hidden),
            StateSpec("c", 1, cfg.hidden),
            # Running n-gram sum, token count, second-last and last token id (exact as
            # float32 below 2**24): the n-gram term's whole memory.
            StateSpec("ngram", 1, NGRAM_STATE),
        ),
        preprocess={
            # Relative to the ONNX file's directory: the worker hands codecs that directory.
            "tokenizer": Path(os.path.relpath(tokenizer, ONNX_PATH.parent)).as_posix(),
            "tokenizer_sha256": sha256_file(tokenizer),
            "max_chunk_tokens": MAX_CHUNK_TOKENS,
            "max_text_chars": MAX_TEXT_CHARS,
            "pad_id": cfg.pad_id,
            "vocab_size": cfg.vocab_size,
        },
    )


def reference_outputs(
    model: SentimentHybrid, texts: list[npt.NDArray[np.int64]], chunk: int
) -> list[dict[str, npt.NDArray[np.float32]]]:
    """Per step, the PyTorch model's score of every row's prefix read so far."""
    n_steps = max(-(-len(t) // chunk) for t in texts)
    out = []
    model.eval()
    with torch.no_grad():
        for k in range(n_steps):
            prefixes = [t[: (k + 1) * chunk] for t in texts]
            lengths = torch.tensor([len(p) for p in prefixes])
            tokens = torch.full((len(texts), int(lengths.max())), model.config.lstm.pad_id)
            for i, p in enumerate(prefixes):
                tokens[i, : len(p)] = torch.from_numpy(p)
            prob = torch.sigmoid(model(tokens, lengths)).unsqueeze(-1)
            out.append({"positive": prob.numpy().astype(np.float32)})
    return out


def parity_texts(
    vocab_size: int, batch: int, seed: int = PARITY_SEED
) -> list[npt.NDArray[np.int64]]:
    """Deterministic token sequences of mixed lengths (1 .. PARITY_MAX_TOKENS).

    Parity is a numerical property of the graph, so seeded ids serve as well as reviews and
    keep ``models verify`` free of the 50 MB data download.
    """
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, PARITY_MAX_TOKENS + 1, size=batch)
    lengths[0] = PARITY_MAX_TOKENS  # the longest always present: many chunks
    return [rng.integers(1, vocab_size, size=int(n)).astype(np.int64) for n in lengths]


def parity_sentiment_lstm(
    onnx_path: Path = ONNX_PATH, batches: tuple[int, ...] = PARITY_BATCHES
) -> float:
    """Worst abs diff over ``batches`` and two chunk sizes (within 1e-4 required)."""
    model, _ = load_model()
    worst = 0.0
    for batch in batches:
        texts = parity_texts(model.config.lstm.vocab_size, batch, seed=PARITY_SEED + batch)
        for chunk in PARITY_CHUNKS:
            steps = chunk_steps(texts, chunk, model.config.lstm.pad_id)
            expected = reference_outputs(model, texts, chunk)
            diff = step_parity(onnx_path, cast(Any, steps), cast(Any, expected))
            log.info(
                "parity batch %d chunk %d: %d steps, max abs diff %.3g",
                batch,
                chunk,
                len(steps),
                diff,
            )
            worst = max(worst, diff)
    return worst


def manifest_metrics(meta: dict[str, Any]) -> dict[str, Any]:
    """Test-split figures for the manifest: the model beside its baselines, same split."""
    tfidf = meta.get("baseline_tfidf-lr", {})
    nb = meta.get("baseline_naive-bayes", {})
    return {
        "test_accuracy": meta["test_accuracy"],
        "baseline": "tfidf-lr",
        "baseline_accuracy": tfidf.get("test_accuracy"),
        "baseline_naive_bayes_accuracy": nb.get("test_accuracy"),
        "previous_lstm_accuracy": meta.get("test_accuracy_lstm_only"),
        "ngram_only_accuracy": meta.get("test_accuracy_ngram_only"),
        "mcnemar_z_vs_baseline": meta.get("mcnemar_z_vs_tfidf-lr"),
        "val_accuracy": meta.get("val_accuracy"),
        "test_ece": meta.get("test_ece"),
        "test_ece_before_temperature": meta.get("test_ece_before_temperature"),
        "temperature": meta.get("temperature"),
        "test_tercile_accuracy": meta.get("test_terciles", {}).get("accuracy"),
        "split_sizes": meta.get("split_sizes"),
    }


def export_sentiment_lstm() -> ManifestEntry:
    """Write ``models/onnx/sentiment_lstm.onnx`` from the checkpoint; upsert the manifest."""
    model, meta = load_model()
    if meta.get("tokenizer_sha256") != sha256_file(TOKENIZER_PATH):
        raise ValueError("the shipped tokenizer is not the one the checkpoint was trained with")
    spec = build_spec(model)
    step = HybridStep(model).eval()
    hidden = model.config.lstm.hidden
    example = (
        torch.ones(2, 8, dtype=torch.int64),
        torch.tensor([8, 3]),
        torch.zeros(1, 2, hidden),
        torch.zeros(1, 2, hidden),
        torch.zeros(1, 2, NGRAM_STATE),
    )
    export_step_model(step, spec, ONNX_PATH, inputs=example, doc=__doc__ or "")
    diff = check_parity(parity_sentiment_lstm(), NAME)
    metrics = manifest_metrics(meta)
    metrics["parity_max_abs_diff"] = diff
    # Resolved: in a checkout statecast/models is a link to the top-level models/ folder.
    root = MODELS_DIR.resolve().parent
    entry = manifest_entry(spec, ONNX_PATH, metrics, root=root)
    tok_rel = TOKENIZER_PATH.resolve().relative_to(root).as_posix()
    entry = dataclasses.replace(
        entry, artefacts={"tokenizer": Artefact(tok_rel, sha256_file(TOKENIZER_PATH))}
    )
    upsert_entry(entry)
    log.info("exported %s: test accuracy %.4f, parity %.3g", NAME, meta["test_accuracy"], diff)
    return entry
