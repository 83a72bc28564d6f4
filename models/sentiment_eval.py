"""How the sentiment model is judged: logits over whole texts, calibration, length terciles,
and the running sentiment of conversations read message by message as the worker does.

Everything here takes the PyTorch model; the exported step graph equals it within the
parity tolerance (``statecast models verify``), so these figures hold for what is served.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from scipy.optimize import minimize_scalar

from statecast.models.sentiment import SentimentHybrid
from statecast.models.sentiment_baselines import cached_baselines, mcnemar_z

IdList = Sequence[npt.NDArray[np.int64]]
Floats = npt.NDArray[np.float64]

ECE_BINS = 15
# The step's chunk length, as the exporter sets it (export.sentiment_export.MAX_CHUNK_TOKENS).
CHUNK_TOKENS = 128
MIX_GRID = tuple(round(0.025 * i, 3) for i in range(41))


def _padded(texts: IdList, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([max(len(t), 1) for t in texts])
    tokens = torch.full((len(texts), int(lengths.max())), pad_id, dtype=torch.int64)
    for i, t in enumerate(texts):
        tokens[i, : len(t)] = torch.from_numpy(t)
    return tokens, lengths


def part_logits(
    model: SentimentHybrid, texts: IdList, batch_size: int = 128
) -> tuple[Floats, Floats]:
    """``(z_lstm, z_ngram)`` for every whole text, batched by length to spare padding."""
    order = np.argsort([len(t) for t in texts], kind="stable")
    z_lstm, z_ngram = np.zeros(len(texts)), np.zeros(len(texts))
    model.eval()
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            tokens, lengths = _padded([texts[i] for i in idx], model.config.lstm.pad_id)
            a, b = model.parts(tokens, lengths)
            z_lstm[idx], z_ngram[idx] = a.double().numpy(), b.double().numpy()
    return z_lstm, z_ngram


def _sigmoid(z: Floats) -> Floats:
    out: Floats = 1.0 / (1.0 + np.exp(-z))
    return out


def log_loss(z: Floats, labels: npt.NDArray[np.int64]) -> float:
    """Mean binary cross-entropy of logits ``z`` (computed stably)."""
    y = labels.astype(np.float64)
    return float(np.mean(np.logaddexp(0.0, z) - y * z))


def accuracy(z: Floats, labels: npt.NDArray[np.int64]) -> float:
    return float(((z > 0).astype(np.int64) == labels).mean())


def expected_calibration_error(
    z: Floats, labels: npt.NDArray[np.int64], bins: int = ECE_BINS
) -> float:
    """ECE of P(positive): bins of equal width, |mean prob - share positive| weighted by size."""
    p = _sigmoid(z)
    which = np.minimum((p * bins).astype(np.int64), bins - 1)
    ece = 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            ece += inside.mean() * abs(p[inside].mean() - labels[inside].mean())
    return float(ece)


def fit_temperature(z: Floats, labels: npt.NDArray[np.int64]) -> float:
    """The T minimising the log loss of ``z / T`` (searched over log T in [-3, 3])."""
    res = minimize_scalar(
        lambda log_t: log_loss(z / math.exp(log_t), labels), bounds=(-3.0, 3.0), method="bounded"
    )
    return float(math.exp(res.x))


def fit_mix(
    z_lstm: Floats,
    z_ngram: Floats,
    labels: npt.NDArray[np.int64],
    grid: Sequence[float] = MIX_GRID,
) -> tuple[float, float]:
    """``(mix, temperature)``: the LSTM's share of the logit, then T, by validation log loss.

    For each mix on the grid a temperature is fitted; the pair with the lowest log loss wins
    (log loss, not accuracy: on 4,958 reviews it varies smoothly where accuracy is noisy).
    """
    best: tuple[float, float, float] | None = None
    for mix in grid:
        z = mix * z_lstm + (1 - mix) * z_ngram
        t = fit_temperature(z, labels)
        loss = log_loss(z / t, labels)
        if best is None or loss < best[2]:
            best = (mix, t, loss)
    assert best is not None, "the mix grid is empty"
    return best[0], best[1]


def tercile_accuracy(
    z: Floats, labels: npt.NDArray[np.int64], lengths: npt.NDArray[np.int64]
) -> dict[str, Any]:
    """Accuracy in each third of the texts by token count, with the cut points."""
    cuts = np.quantile(lengths, [1 / 3, 2 / 3])
    groups = np.digitize(lengths, cuts, right=True)
    return {
        "cuts_tokens": [int(c) for c in cuts],
        "accuracy": [accuracy(z[groups == g], labels[groups == g]) for g in range(3)],
    }


def conversation_running(
    model: SentimentHybrid,
    conversations: Sequence[Sequence[npt.NDArray[np.int64]]],
    labels: npt.NDArray[np.int64],
    chunk: int,
    batch_size: int = 256,
) -> dict[str, Any]:
    """Accuracy of the running state after each message, read as the worker reads them.

    Each conversation is a list of messages' token ids; the state runs on across messages
    (``mode=conversation``) and each message is fed in ``chunk``-token steps. Returns the
    accuracy after message k (k = 1..10, over conversations that have k messages), after
    the first 25/50/75/100% of each conversation's messages, and the share of conversations
    whose running label is already final and right after each of those fractions.
    """
    correct_after: list[list[bool]] = []
    for start in range(0, len(conversations), batch_size):
        batch = conversations[start : start + batch_size]
        correct_after.extend(_run_batch(model, batch, labels[start : start + batch_size], chunk))
    by_k = {}
    for k in range(1, 11):
        rows = [c[k - 1] for c in correct_after if len(c) >= k]
        by_k[str(k)] = float(np.mean(rows)) if rows else None
    fractions = (0.25, 0.5, 0.75, 1.0)
    at_fraction, settled = {}, {}
    for f in fractions:
        picks = [c[max(1, math.ceil(f * len(c))) - 1] for c in correct_after]
        at_fraction[str(f)] = float(np.mean(picks))
        # Settled: right from this message to the end of the conversation.
        stays = [all(c[max(1, math.ceil(f * len(c))) - 1 :]) for c in correct_after]
        settled[str(f)] = float(np.mean(stays))
    counts = [len(c) for c in correct_after]
    return {
        "conversations": len(correct_after),
        "messages_median": float(np.median(counts)),
        "accuracy_after_message": by_k,
        "accuracy_after_fraction": at_fraction,
        "right_and_settled_from_fraction": settled,
    }


def _run_batch(
    model: SentimentHybrid,
    batch: Sequence[Sequence[npt.NDArray[np.int64]]],
    labels: npt.NDArray[np.int64],
    chunk: int,
) -> list[list[bool]]:
    """Per conversation, whether the running label is right after each of its messages."""
    hidden, pad = model.config.lstm.hidden, model.config.lstm.pad_id
    h = torch.zeros(1, len(batch), hidden)
    c = torch.zeros(1, len(batch), hidden)
    ng = model.ngrams.zero_state(len(batch))
    out: list[list[bool]] = [[] for _ in batch]
    model.eval()
    with torch.no_grad():
        for k in range(max(len(m) for m in batch)):
            rows = [i for i, msgs in enumerate(batch) if len(msgs) > k]
            ids = [batch[i][k] for i in rows]
            sel = torch.tensor(rows)
            hs, cs, ns = h[:, sel], c[:, sel], ng[:, sel]
            for pos in range(0, max(len(t) for t in ids), chunk):
                parts = [t[pos : pos + chunk] for t in ids]
                live = [j for j, p in enumerate(parts) if len(p) > 0]
                tokens, lengths = _padded([parts[j] for j in live], pad)
                lv = torch.tensor(live)
                h2, c2 = model.lstm.final_state(tokens, lengths, (hs[:, lv], cs[:, lv]))
                hs[:, lv], cs[:, lv] = h2, c2
                ns[:, lv] = model.ngrams.advance(tokens, lengths, ns[:, lv])
            h[:, sel], c[:, sel], ng[:, sel] = hs, cs, ns
            z = model.combine(model.lstm.head(hs[-1]).squeeze(-1), model.ngrams.logit(ns))
            for j, i in enumerate(rows):
                out[i].append(bool(int(z[j] > 0) == int(labels[i])))
    return out


def evaluate_hybrid(
    model: SentimentHybrid,
    enc: Any,
    splits: Any,
    val_parts: tuple[Floats, Floats],
    baselines: bool,
    chunk: int = CHUNK_TOKENS,
) -> dict[str, Any]:
    """Every figure of the model card, on the test split (validation where it says so).

    ``enc`` is the encoded splits (``sentiment_train.EncodedSplits``), ``splits`` the text
    splits (the baselines read text), ``val_parts`` the validation logits of both parts.
    """
    mix, temp = float(model.mix), float(model.temperature)
    y_val, y_test = enc.val[1], enc.test[1]
    a_test, b_test = part_logits(model, enc.test[0])
    raw_test = mix * a_test + (1 - mix) * b_test
    raw_val = mix * val_parts[0] + (1 - mix) * val_parts[1]
    z_test, z_val = raw_test / temp, raw_val / temp
    lengths = np.array([len(t) for t in enc.test[0]], dtype=np.int64)
    pred = (z_test > 0).astype(np.int64)
    meta: dict[str, Any] = {
        "test_accuracy": accuracy(z_test, y_test),
        "val_accuracy": accuracy(z_val, y_val),
        "test_accuracy_lstm_only": accuracy(a_test, y_test),
        "test_accuracy_ngram_only": accuracy(b_test, y_test),
        "val_accuracy_lstm_only": accuracy(val_parts[0], y_val),
        "val_accuracy_ngram_only": accuracy(val_parts[1], y_val),
        "test_ece_before_temperature": expected_calibration_error(raw_test, y_test),
        "test_ece": expected_calibration_error(z_test, y_test),
        "test_log_loss_before_temperature": log_loss(raw_test, y_test),
        "test_log_loss": log_loss(z_test, y_test),
        "test_ece_lstm_only": expected_calibration_error(a_test, y_test),
        "test_ece_ngram_only": expected_calibration_error(b_test, y_test),
        "test_terciles": tercile_accuracy(z_test, y_test, lengths),
        "test_terciles_lstm_only": tercile_accuracy(a_test, y_test, lengths),
        "mcnemar_z_vs_lstm_only": mcnemar_z(y_test, pred, (a_test > 0).astype(np.int64)),
    }
    convs = _conversations(splits.test["text"].tolist())
    meta["test_conversations"] = conversation_running(model, convs, y_test, chunk)
    if baselines:
        for result in cached_baselines():
            meta[f"baseline_{result.name}"] = result.summary()
            other = np.asarray(result.test_predictions, dtype=np.int64)
            meta[f"mcnemar_z_vs_{result.name}"] = mcnemar_z(y_test, pred, other)
    return meta


def _conversations(texts: Sequence[str]) -> list[list[npt.NDArray[np.int64]]]:
    """Each review as the replay tool sends it: sentence-packed messages, tokenized apart."""
    from statecast.loadtest.text_streams import split_messages
    from statecast.models.sentiment_data import encode_texts, load_tokenizer

    messages = [split_messages(t) for t in texts]
    flat = encode_texts(load_tokenizer(), [m for msgs in messages for m in msgs])
    out, pos = [], 0
    for msgs in messages:
        ids = [a for a in flat[pos : pos + len(msgs)] if len(a) > 0]
        out.append(ids)
        pos += len(msgs)
    return out
