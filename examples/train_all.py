"""Train the tutorials' Keras 3 models briefly on the project's real data; save them here.

    KERAS_BACKEND=torch python examples/train_all.py [name ...]

Each example writes ``examples/<name>.keras`` (the model, as a user would hand it to us),
``examples/<name>.import.json`` (the ``statecast import`` options it needs: kind, mode,
feature names and the scaler the model was trained behind) and ``examples/<name>.sample.npy``
(a few real held-out inputs, the second parity check at import). The models are the ones
the Keras tutorials build; they are trained for a minute or two, to be realistic inputs for
the importer, not to be good forecasters (``frame_cnn`` is the exception: it is shipped).

Everything is seeded (``keras.utils.set_random_seed``) and single-threaded.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("KERAS_BACKEND", "torch")

import keras
import numpy as np
import torch

HERE = Path(__file__).resolve().parent
L = keras.layers
SEED = 0
Array = np.ndarray[Any, Any]


def _save(name: str, model: Any, options: dict[str, Any], sample: Array) -> None:
    from statecast.export.keras.frame_cnn import save_weights_only_model

    save_weights_only_model(model, HERE / f"{name}.keras")
    (HERE / f"{name}.import.json").write_text(json.dumps(options, indent=2) + "\n")
    np.save(HERE / f"{name}.sample.npy", sample)


def _windows(series: Array, target: Array, w: int) -> tuple[Array, Array]:
    idx = np.arange(len(series) - w)
    x = np.stack([series[i : i + w] for i in idx]).astype(np.float32)
    return x, target[idx + w].astype(np.float32)


def _elec(name: str, build: Callable[[int], Any], w: int = 24) -> dict[str, float]:
    """A window forecaster of next half-hour demand from (demand, temperature, workday)."""
    from statecast.models.datasets import chronological_split, load_elecdemand

    df = load_elecdemand()
    raw = df[["demand", "temperature", "workday"]].to_numpy(np.float64)
    bounds = chronological_split(len(raw))
    train = raw[: bounds.train_end]
    mean, std = train.mean(0), train.std(0)
    z = (raw - mean) / std
    x, y = _windows(z, z[:, 0:1], w)
    tr = slice(0, bounds.train_end - w)
    te = slice(bounds.val_end - w, None)
    model = build(w)
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="mse")
    model.fit(x[tr], y[tr], epochs=3, batch_size=128, verbose=0, shuffle=True)
    pred = model.predict(x[te], verbose=0)[:, 0] * std[0] + mean[0]
    truth = y[te][:, 0] * std[0] + mean[0]
    last = x[te][:, -1, 0] * std[0] + mean[0]
    options = {
        "kind": "forecast",
        "mode": "window",
        "features": ["demand", "temperature", "workday"],
        "targets": ["demand_next"],
        "input_mean": mean.tolist(),
        "input_std": std.tolist(),
        "output_mean": [float(mean[0])],
        "output_std": [float(std[0])],
    }
    start = bounds.val_end
    _save(name, model, options, raw[start : start + 4 * 40].reshape(4, 40, 3).astype(np.float32))
    return {
        "test_mae": float(np.abs(pred - truth).mean()),
        "naive_mae": float(np.abs(last - truth).mean()),
    }


def elec_simplernn() -> dict[str, float]:
    return _elec(
        "elec_simplernn",
        lambda w: keras.Sequential([keras.Input((w, 3)), L.SimpleRNN(32), L.Dense(1)]),
    )


def elec_lstm() -> dict[str, float]:
    return _elec(
        "elec_lstm",
        lambda w: keras.Sequential(
            [
                keras.Input((w, 3)),
                L.LSTM(32, return_sequences=True),
                L.Dropout(0.1),
                L.LSTM(16),
                L.Dense(1),
            ]
        ),
    )


def stock_gru() -> dict[str, float]:
    """A GRU over daily log returns (x100) of AAPL, predicting the next day's absolute return
    (a volatility proxy); served stateful, so its state runs over the whole price history."""
    from statecast.models.datasets import load_stock_prices

    r = load_stock_prices(["AAPL"])["AAPL"]["log_return"].to_numpy(np.float64)[1:] * 100.0
    n_train = int(len(r) * 0.8)
    w = 30
    x, y = _windows(r[:, None], np.abs(r)[:, None], w)
    mean, std = float(r[:n_train].mean()), float(r[:n_train].std())
    y_mean, y_std = float(np.abs(r[:n_train]).mean()), float(np.abs(r[:n_train]).std())
    xz = (x - mean) / std
    yz = (y - y_mean) / y_std
    model = keras.Sequential([keras.Input((None, 1)), L.GRU(16), L.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mae")
    model.fit(xz[: n_train - w], yz[: n_train - w], epochs=20, batch_size=64, verbose=0)
    te = slice(n_train, None)
    pred = model.predict(xz[te], verbose=0)[:, 0] * y_std + y_mean
    truth = y[te][:, 0]
    hist = np.abs(x[te][:, :, 0]).mean(1)  # baseline: mean absolute return of the window
    options = {
        "kind": "forecast",
        "mode": "stateful",
        "features": ["log_return_pct"],
        "targets": ["abs_return_next_pct"],
        "input_mean": [mean],
        "input_std": [std],
        "output_mean": [y_mean],
        "output_std": [y_std],
    }
    sample = r[n_train : n_train + 4 * 25].reshape(4, 25, 1).astype(np.float32)
    _save("stock_gru", model, options, sample)
    return {
        "test_mae": float(np.abs(pred - truth).mean()),
        "window_mean_mae": float(np.abs(hist - truth).mean()),
    }


def imdb_lstm() -> dict[str, float]:
    """Embedding(mask_zero) -> LSTM -> Dense(sigmoid) on IMDB with the worker's tokenizer,
    trained on pre-padded reviews (pad_sequences style); streamed stateful, chunk by chunk."""
    from statecast.models.sentiment_data import encode_texts, load_splits, load_tokenizer

    tok = load_tokenizer()
    splits = load_splits()
    vocab = tok.get_vocab_size()
    maxlen = 120
    rng = np.random.default_rng(SEED)

    def pad(texts: list[str]) -> Array:
        out = np.zeros((len(texts), maxlen), np.int64)
        for i, ids in enumerate(encode_texts(tok, texts)):
            ids = ids[-maxlen:]
            out[i, maxlen - len(ids) :] = ids
        return out

    tr = splits.train.sample(4000, random_state=SEED)
    te = splits.test.sample(1000, random_state=SEED)
    x_tr, y_tr = pad(tr["text"].tolist()), tr["label"].to_numpy(np.float32)
    x_te, y_te = pad(te["text"].tolist()), te["label"].to_numpy(np.float32)
    model = keras.Sequential(
        [
            keras.Input((None,), dtype="int32"),
            L.Embedding(vocab, 16, mask_zero=True),
            L.LSTM(16),
            L.Dense(1, activation="sigmoid"),
        ]
    )
    model.compile(optimizer=keras.optimizers.Adam(5e-3), loss="binary_crossentropy")
    model.fit(x_tr, y_tr, epochs=2, batch_size=64, verbose=0)
    acc = float(((model.predict(x_te, verbose=0)[:, 0] >= 0.5) == (y_te == 1)).mean())
    # Real sample: the first 100 ids of 3 held-out reviews (right-padded with 0, as the
    # importer expects); short, so the parity check at import stays quick.
    ids = [i[:100] for i in encode_texts(tok, te["text"].tolist()[:3])]
    sample = np.zeros((3, max(len(i) for i in ids)), np.int64)
    for i, row in enumerate(ids):
        sample[i, : len(row)] = row
    options = {
        "kind": "sentiment",
        "mode": "stateful",
        "tokenizer": "models/tokenizer/sentiment_lstm.json",
        "chunk": 32,
    }
    _save("imdb_lstm", model, options, sample)
    del rng
    return {"test_accuracy_1000": acc}


def fashion_cnn() -> dict[str, float]:
    """The MNIST tutorial's CNN on Fashion-MNIST; the shipped ``frame_cnn`` (see its card)."""
    from statecast.export.keras.frame_cnn import FASHION_CLASSES, load_fashion, train

    path = train()
    metrics: dict[str, float] = json.loads(path.with_suffix(".metrics.json").read_text())
    x_te, _ = load_fashion("t10k")
    options = {"kind": "classify", "classes": list(FASHION_CLASSES)}
    (HERE / "fashion_cnn.import.json").write_text(json.dumps(options, indent=2) + "\n")
    np.save(HERE / "fashion_cnn.sample.npy", x_te[:8].astype(np.float32))
    return metrics


def motion_td_lstm() -> dict[str, float]:
    """TimeDistributed(CNN) -> LSTM -> Dense(softmax) on motion clips of real Fashion-MNIST
    images (models/video_data.py); streamed stateful, one frame per event."""
    from statecast.models.video_data import (
        MOTIONS,
        ClipConfig,
        load_fashion_mnist,
        make_clips,
        source_pools,
    )

    frames_n = 8
    cfg = ClipConfig(min_len=frames_n, max_len=frames_n)
    pools = source_pools(load_fashion_mnist("train"), load_fashion_mnist("t10k"), SEED)
    tr = make_clips(pools["train"][0], 3000, seed=1, cfg=cfg)
    te = make_clips(pools["test"][0], 500, seed=2, cfg=cfg)
    canvas = cfg.canvas
    cnn = keras.Sequential(
        [
            keras.Input((canvas, canvas, 1)),
            L.Conv2D(8, 3, activation="relu"),
            L.MaxPooling2D(),
            L.Conv2D(16, 3, activation="relu"),
            L.MaxPooling2D(),
            L.Flatten(),
        ]
    )
    model = keras.Sequential(
        [
            keras.Input((None, canvas, canvas, 1)),
            L.TimeDistributed(cnn),
            L.LSTM(32),
            L.Dense(len(MOTIONS), activation="softmax"),
        ]
    )
    model.compile(optimizer=keras.optimizers.Adam(2e-3), loss="sparse_categorical_crossentropy")
    x_tr = tr.frames[..., None].astype(np.float32) / 255.0
    model.fit(x_tr, tr.labels, epochs=4, batch_size=32, verbose=0)
    x_te = te.frames[..., None].astype(np.float32) / 255.0
    acc = float((model.predict(x_te, verbose=0).argmax(1) == te.labels).mean())
    options = {"kind": "video", "mode": "stateful", "classes": list(MOTIONS)}
    _save("motion_td_lstm", model, options, te.frames[:2].astype(np.float32))
    return {"test_accuracy": acc}


EXAMPLES: dict[str, Callable[[], dict[str, float]]] = {
    "elec_simplernn": elec_simplernn,
    "elec_lstm": elec_lstm,
    "stock_gru": stock_gru,
    "imdb_lstm": imdb_lstm,
    "fashion_cnn": fashion_cnn,
    "motion_td_lstm": motion_td_lstm,
}


def main(names: list[str]) -> int:
    torch.set_num_threads(1)
    for name in names or list(EXAMPLES):
        keras.utils.set_random_seed(SEED)
        started = time.perf_counter()
        metrics = EXAMPLES[name]()
        took = time.perf_counter() - started
        size = (HERE / f"{name}.keras").stat().st_size
        print(f"{name}: {took:.0f} s, {size / 1024:.0f} KiB, {json.dumps(metrics)}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
