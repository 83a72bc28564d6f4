"""Train the sentiment model on IMDB: the LSTM, then the running n-gram term, then the mix.

Stage 1, the LSTM (version 1 of ``sentiment_lstm``), uses the shared loop
(``statecast.models.trainer.fit``) on each review's *last* ``max_len`` tokens (a review's
verdict tends to sit at its end, and the cut bounds an epoch's cost on a shared CPU), in
length-bucketed batches. Stage 2 fits the hashed n-gram term with scikit-learn
(``sentiment_ngram``); stage 3 fits the mix and temperature on validation and evaluates
on the test split (``sentiment_eval``). Evaluation scores *whole* reviews, as the worker
does.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn
from torch.utils.data import Dataset

from statecast.contract.manifest import sha256_file
from statecast.contract.paths import PACKAGE_ROOT
from statecast.models import sentiment_data as data
from statecast.models import sentiment_eval as ev
from statecast.models.sentiment import HybridConfig, SentimentConfig, SentimentHybrid, SentimentLSTM
from statecast.models.sentiment_ngram import fit_ngram_weights, ngram_matrix
from statecast.models.trainer import (
    TrainConfig,
    fit,
    load_checkpoint,
    save_checkpoint,
    seed_everything,
)

log = logging.getLogger(__name__)

MODEL_NAME = "sentiment_lstm"
CHECKPOINT_PATH = PACKAGE_ROOT / "models" / "checkpoints" / f"{MODEL_NAME}.pt"

# The n-gram term (stage 2): hashed table size, length exponent and the C values tried.
NGRAM_BUCKETS = 1_048_573
NGRAM_ALPHA = 0.5
NGRAM_C_GRID = (10.0, 30.0)

IdList = list[npt.NDArray[np.int64]]
Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class EncodedSplits:
    train: tuple[IdList, npt.NDArray[np.int64]]
    val: tuple[IdList, npt.NDArray[np.int64]]
    test: tuple[IdList, npt.NDArray[np.int64]]


def pad_batch(seqs: Sequence[npt.NDArray[np.int64]], pad_id: int = data.PAD_ID) -> Batch:
    """``(tokens [B, T], lengths [B], unused [B])``: right-padded with ``pad_id``."""
    lengths = np.array([len(s) for s in seqs], dtype=np.int64)
    tokens = np.full((len(seqs), max(1, int(lengths.max()))), pad_id, dtype=np.int64)
    for i, s in enumerate(seqs):
        tokens[i, : len(s)] = s
    return torch.from_numpy(tokens), torch.from_numpy(lengths), torch.zeros(len(seqs))


class BucketedBatches(Dataset[Batch]):
    """Pre-made batches of similar length; each item is one whole batch.

    Used with the shared loop at ``batch_size=1`` (the loop shuffles batch order). Texts
    longer than ``max_len`` keep their last ``max_len`` tokens.
    """

    def __init__(
        self,
        ids: IdList,
        labels: npt.NDArray[np.int64],
        batch_size: int,
        max_len: int | None,
        seed: int,
    ) -> None:
        seqs = [s[-max_len:] if max_len else s for s in ids]
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(seqs))
        # Sort within pools of 50 batches: near-uniform lengths, still a varied mix.
        pool = batch_size * 50
        self.batches: list[Batch] = []
        for p in range(0, len(order), pool):
            chunk = sorted(order[p : p + pool], key=lambda i: len(seqs[i]))
            for b in range(0, len(chunk), batch_size):
                idx = chunk[b : b + batch_size]
                tokens, lengths, _ = pad_batch([seqs[i] for i in idx])
                self.batches.append((tokens, lengths, torch.from_numpy(labels[idx]).float()))

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> Batch:
        return self.batches[i]


def bce_loss(model: nn.Module, batch: Batch) -> torch.Tensor:
    """The loss for the shared loop; the loader adds a leading axis of 1 to each batch."""
    tokens, lengths, labels = (t.squeeze(0) for t in batch)
    logits = model(tokens, lengths)
    return nn.functional.binary_cross_entropy_with_logits(logits, labels)


def bag_accuracy(
    weights: torch.Tensor, bias: float, ids: IdList, labels: npt.NDArray[np.int64]
) -> float:
    """Accuracy of the bag-of-words regression over whole texts."""
    w = weights.numpy()
    scores = np.array([w[s].sum() + bias for s in ids])
    return float(((scores > 0).astype(np.int64) == labels).mean())


def accuracy(
    model: SentimentLSTM,
    ids: IdList,
    labels: npt.NDArray[np.int64],
    max_len: int | None = None,
    batch_size: int = 128,
) -> float:
    """Share of texts whose predicted class matches; whole texts unless ``max_len``."""
    model.eval()
    correct = 0
    with torch.no_grad():
        for tokens, lengths, y in BucketedBatches(ids, labels, batch_size, max_len, seed=0).batches:
            correct += int(((model(tokens, lengths) > 0).long() == y.long()).sum())
    return correct / len(ids)


def fit_token_weights(
    ids: IdList,
    labels: npt.NDArray[np.int64],
    vocab_size: int,
    max_len: int | None,
    epochs: int = 4,
    batch_size: int = 256,
    lr: float = 0.02,
    seed: int = 0,
) -> tuple[torch.Tensor, float]:
    """A logistic regression on the *sum* of per-token weights: ``(weights [V], bias)``.

    Cheap (an ``EmbeddingBag``), and a sum is what an LSTM cell can accumulate, so it
    warm-starts the LSTM (see :func:`warm_start`).
    """
    gen = torch.Generator().manual_seed(seed)
    bag = nn.EmbeddingBag(vocab_size, 1, mode="sum", padding_idx=data.PAD_ID)
    nn.init.zeros_(bag.weight)
    bias = nn.Parameter(torch.zeros(1))
    optim = torch.optim.AdamW([*bag.parameters(), bias], lr=lr, weight_decay=1e-4)
    seqs = [torch.from_numpy(s[-max_len:] if max_len else s) for s in ids]
    y = torch.tensor(labels, dtype=torch.float32)
    for _ in range(epochs):
        perm = torch.randperm(len(seqs), generator=gen)
        for start in range(0, len(seqs), batch_size):
            idx = perm[start : start + batch_size]
            batch = [seqs[i] for i in idx.tolist()]
            offsets = torch.tensor([0] + [len(b) for b in batch[:-1]]).cumsum(0)
            logits = bag(torch.cat(batch), offsets).squeeze(-1) + bias
            loss = nn.functional.binary_cross_entropy_with_logits(logits, y[idx])
            optim.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            optim.step()
    return bag.weight.detach()[:, 0].clone(), float(bias.detach())


# Gate pre-activation that saturates a sigmoid to ~1 (sigmoid(8) = 0.99966: the
# accumulator keeps 92% of its content over 256 tokens).
_OPEN = 8.0


def warm_start(model: SentimentLSTM, weights: torch.Tensor, bias: float) -> None:
    """Make LSTM unit 0 sum the tokens' regression weights, and the head read it.

    Embedding dimension 0 holds each token's weight; unit 0's input, forget and output
    gates are held open and its cell candidate is ``tanh(weight)``, so its cell state is a
    bag-of-words score over the text read so far. Every other weight keeps its random
    initialisation; training then refines the whole network. It only changes where
    gradient descent starts (a compute budget of a few CPU-minutes rules out learning
    this from scratch), not what the model is.
    """
    h = model.config.hidden
    with torch.no_grad():
        model.embed.weight[:, 0] = weights
        model.embed.weight[model.config.pad_id].zero_()
        params = dict(model.lstm.named_parameters())
        w_ih, w_hh = params["weight_ih_l0"], params["weight_hh_l0"]
        b_ih, b_hh = params["bias_ih_l0"], params["bias_hh_l0"]
        rows = [0, h, 2 * h, 3 * h]  # unit 0 of the gates i, f, g, o (PyTorch order)
        w_ih[rows] = 0.0
        w_hh[rows] = 0.0
        b_ih[rows] = torch.tensor([_OPEN, _OPEN, 0.0, _OPEN])
        b_hh[rows] = 0.0
        w_ih[2 * h, 0] = 1.0
        model.head.weight.zero_()
        model.head.weight[0, 0] = 4.0
        model.head.bias.fill_(bias)


def encode_splits(
    splits: data.Splits, tok_path: Path, cache_dir: Path = data.CACHE_DIR
) -> EncodedSplits:
    """Token ids of every split, cached by tokenizer digest (encoding 50k texts is slow)."""
    cache = cache_dir / f"encoded-{sha256_file(tok_path)[:16]}.npz"
    frames = {"train": splits.train, "val": splits.val, "test": splits.test}
    if not cache.is_file():
        tok = data.load_tokenizer(tok_path)
        arrays: dict[str, npt.NDArray[np.int64]] = {}
        for name, df in frames.items():
            enc = data.encode_texts(tok, df["text"].tolist())
            arrays[f"{name}_ids"] = np.concatenate(enc)
            arrays[f"{name}_offsets"] = np.cumsum([0] + [len(e) for e in enc])
        cache_dir.mkdir(parents=True, exist_ok=True)
        np.savez(cache, **arrays)  # type: ignore[arg-type]
    loaded = np.load(cache)
    out: dict[str, tuple[IdList, npt.NDArray[np.int64]]] = {}
    for name, df in frames.items():
        flat, offs = loaded[f"{name}_ids"], loaded[f"{name}_offsets"]
        ids = [flat[offs[i] : offs[i + 1]] for i in range(len(offs) - 1)]
        out[name] = (ids, df["label"].to_numpy(dtype=np.int64))
    return EncodedSplits(**out)


def train_lstm_stage(
    enc: EncodedSplits,
    vocab_size: int,
    epochs: int,
    max_len: int,
    batch_size: int,
    lr: float,
    embed_dim: int,
    hidden: int,
    dropout: float,
    max_seconds: float | None,
    steps_per_epoch: int | None,
    patience: int,
    val_size: int,
    seed: int,
    progress: bool,
    warm: bool,
) -> tuple[SentimentLSTM, dict[str, Any]]:
    """Stage 1: the LSTM alone (version 1 of the model), with its own figures."""
    seed_everything(seed)
    config = SentimentConfig(
        vocab_size=vocab_size, embed_dim=embed_dim, hidden=hidden, dropout=dropout
    )
    model = SentimentLSTM(config)
    if warm:
        tw, tb = fit_token_weights(*enc.train, config.vocab_size, max_len, seed=seed)
        warm_start(model, tw, tb)
        log.info(
            "warm start: bag-of-words val accuracy %.4f (LSTM before training %.4f)",
            bag_accuracy(tw, tb, *enc.val),
            accuracy(model, enc.val[0][:val_size], enc.val[1][:val_size], max_len=max_len),
        )
    train_ds = BucketedBatches(*enc.train, batch_size, max_len, seed=seed)
    # Early stopping watches a fixed slice of validation; the whole split is scored at the end.
    val_ds = BucketedBatches(enc.val[0][:val_size], enc.val[1][:val_size], 256, max_len, seed)
    cfg = TrainConfig(
        epochs=epochs,
        batch_size=1,
        val_batch_size=1,
        lr=lr,
        patience=patience,
        grad_clip=1.0,
        seed=seed,
        max_seconds=max_seconds,
        progress=progress,
        # Short "epochs" (a slice of the shuffled batches) so early stopping and the time
        # budget are checked every few minutes on a busy CPU.
        steps_per_epoch=steps_per_epoch,
    )
    result = fit(model, bce_loss, train_ds, val_ds, cfg)
    log.info("LSTM stage: %d epochs in %.0f s", result.epochs_run, result.seconds)
    meta: dict[str, Any] = {
        "best_val_loss": result.best_val_loss,
        "best_epoch": result.best_epoch,
        "epochs_run": result.epochs_run,
        "train_seconds": round(result.seconds, 1),
        "history": result.history,
        "max_len": max_len,
        "batch_size": batch_size,
        "steps_per_epoch": steps_per_epoch,
        "warm_start": "bag-of-words" if warm else None,
        "lr": lr,
        "seed": seed,
    }
    return model, meta


def load_lstm(path: Path) -> tuple[SentimentLSTM, dict[str, Any]]:
    """The LSTM of a version-1 (``SentimentLSTM``) or version-2 (hybrid) checkpoint."""
    model, ckpt = load_checkpoint(path)
    if isinstance(model, SentimentHybrid):
        return model.lstm, dict(ckpt.meta.get("lstm_stage", {}))
    if isinstance(model, SentimentLSTM):
        return model, dict(ckpt.meta)
    raise TypeError(f"{path} holds neither a SentimentLSTM nor a SentimentHybrid")


def train_sentiment_lstm(
    epochs: int = 40,
    max_len: int = 256,
    batch_size: int = 64,
    lr: float = 1e-3,
    embed_dim: int = 64,
    hidden: int = 128,
    dropout: float = 0.2,
    max_seconds: float | None = None,
    steps_per_epoch: int | None = 100,
    patience: int = 4,
    val_size: int = 2000,
    seed: int = 0,
    retrain_tokenizer: bool = False,
    checkpoint: Path | str = CHECKPOINT_PATH,
    progress: bool = True,
    threads: int | None = 1,
    warm: bool = True,
    lstm_from: str | None = None,
    buckets: int = NGRAM_BUCKETS,
    alpha: float = NGRAM_ALPHA,
    ngram_c: Sequence[float] = NGRAM_C_GRID,
    baselines: bool = True,
) -> Path:
    """Train all stages; write the checkpoint with its figures.

    1. the LSTM (skipped with ``lstm_from``: a checkpoint whose LSTM is reused as is);
    2. the hashed n-gram term: a logistic regression on NB-scaled n-gram columns (NBSVM),
       fitted with scikit-learn, ``C`` chosen on validation accuracy;
    3. the mix of the LSTM and n-gram logits and a temperature, fitted on validation;
    4. evaluation on the test split beside the TF-IDF + LR and naive Bayes baselines.

    ``max_seconds`` (stage 1 only) defaults to no limit: early stopping ends the run, and a
    wall-clock cut would make the result depend on the machine's load.
    """
    started = time.monotonic()
    checkpoint = Path(checkpoint)  # `statecast train --set checkpoint=...` passes a string
    if threads is not None:
        # On a CPU shared with other jobs, intra-op threads spin against each other: one
        # thread measured 3x more batches per CPU-second than two.
        torch.set_num_threads(threads)
    splits = data.load_splits()
    if retrain_tokenizer or not data.TOKENIZER_PATH.is_file():
        log.info("training the tokenizer on %d train reviews", len(splits.train))
        data.save_tokenizer(data.train_tokenizer(splits.train["text"].tolist()))
    tok = data.load_tokenizer()
    enc = encode_splits(splits, data.TOKENIZER_PATH)
    log.info("data ready in %.0f s", time.monotonic() - started)

    if lstm_from:
        lstm, lstm_meta = load_lstm(Path(lstm_from))
        lstm_meta = {**lstm_meta, "reused_from": str(lstm_from)}
        log.info("LSTM stage reused from %s", lstm_from)
    else:
        lstm, lstm_meta = train_lstm_stage(
            enc, tok.get_vocab_size(), epochs, max_len, batch_size, lr, embed_dim, hidden,
            dropout, max_seconds, steps_per_epoch, patience, val_size, seed, progress, warm,
        )  # fmt: skip
    if lstm.config.vocab_size != tok.get_vocab_size():
        raise ValueError("the LSTM's vocabulary does not match the tokenizer")

    model = SentimentHybrid(HybridConfig(lstm=lstm.config, buckets=buckets, alpha=alpha))
    model.lstm.load_state_dict(lstm.state_dict())
    model.eval()
    z_lstm_val = ev.part_logits(model, enc.val[0])[0]

    stage2 = time.monotonic()
    vocab = lstm.config.vocab_size
    x_train = ngram_matrix(enc.train[0], vocab, buckets, alpha)
    x_val = ngram_matrix(enc.val[0], vocab, buckets, alpha)
    log.info("n-gram features: %d x %d, %d non-zeros", *x_train.shape, x_train.nnz)
    ngram = fit_ngram_weights(
        x_train, enc.train[1], x_val, enc.val[1], vocab, buckets, ngram_c, nb_scaled=True
    )
    del x_train, x_val
    mix, temperature = ev.fit_mix(z_lstm_val, ngram.val_logits, enc.val[1])
    with torch.no_grad():
        model.ngrams.uni.copy_(torch.from_numpy(ngram.uni))
        model.ngrams.bi.copy_(torch.from_numpy(ngram.bi))
        model.ngrams.tri.copy_(torch.from_numpy(ngram.tri))
        model.ngrams.bias.fill_(ngram.bias)
        model.mix.fill_(mix)
        model.temperature.fill_(temperature)
    log.info(
        "n-gram stage %.0f s; mix %.3f (LSTM share), temperature %.3f",
        time.monotonic() - stage2,
        mix,
        temperature,
    )
    val_parts = (z_lstm_val, ngram.val_logits)

    meta = ev.evaluate_hybrid(model, enc, splits, val_parts, baselines)
    meta.update(
        {
            "stages_seconds": round(time.monotonic() - started, 1),
            "lstm_stage": lstm_meta,
            "ngram": {
                "buckets": buckets,
                "alpha": alpha,
                **ngram.summary(),
                "C_grid": list(ngram_c),
            },
            "mix": mix,
            "temperature": temperature,
            "config": model.config.to_dict(),
            "seed": seed,
            "split_seed": data.SPLIT_SEED,
            "split_sizes": {k: len(getattr(enc, k)[0]) for k in ("train", "val", "test")},
            "tokenizer_sha256": sha256_file(data.TOKENIZER_PATH),
            "data": f"{data.WHEEL_NAME}=={data.WHEEL_VERSION}:{data.CSV_MEMBER}",
        }
    )
    log.info(
        "test accuracy %.4f (LSTM alone %.4f, n-grams alone %.4f); val %.4f; %.0f s in all",
        meta["test_accuracy"],
        meta["test_accuracy_lstm_only"],
        meta["test_accuracy_ngram_only"],
        meta["val_accuracy"],
        meta["stages_seconds"],
    )
    return save_checkpoint(checkpoint, model, model.config, meta)
