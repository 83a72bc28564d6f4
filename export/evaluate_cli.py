"""``statecast models evaluate [NAME...]``: recompute each shipped model's headline figure
from its ONNX file alone, as an outside evaluator would.

Each evaluator reads the spec from the ONNX metadata, feeds the held-out split the model
card names through onnxruntime, carrying state step by step exactly as the worker does
(zeros for a new stream, ``state_out.*`` fed back as ``state_in.*``), many streams per
call. The project's data loaders supply only the raw data and the split boundaries; no
training code or PyTorch model is used, so a figure that only holds with the training
code's help shows up here. Prints the recomputed figure, the manifest's and the
baseline's; exits 1 when a recomputed figure differs from the manifest beyond tolerance.
"""

from __future__ import annotations

import argparse
import math
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from statecast.contract.manifest import DEFAULT_MANIFEST, ManifestEntry, load_manifest
from statecast.contract.paths import PACKAGE_ROOT
from statecast.contract.spec import ModelSpec
from statecast.worker.inference import build_session

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
Feed = dict[str, npt.NDArray[np.generic]]

# Relative gap allowed between a recomputed figure and the manifest's: float32 ONNX vs
# the float32 PyTorch run moves figures in the 4th-5th significant digit at most.
DEFAULT_TOLERANCE = 2e-3


@dataclass(frozen=True)
class Figure:
    """One model's headline figure, recomputed, beside the manifest's and the baseline's."""

    name: str
    metric: str
    value: float
    manifest: float | None
    baseline: str
    baseline_value: float | None
    lower_is_better: bool
    items: int
    # A figure that depends on a random draw the metadata cannot pin (another library's
    # generator) is held to this absolute gap instead of the relative tolerance.
    abs_tolerance: float | None = None

    def matches(self, tolerance: float) -> bool:
        if self.manifest is None:
            return True
        if self.abs_tolerance is not None:
            return abs(self.value - self.manifest) <= self.abs_tolerance
        scale = max(abs(self.manifest), 1e-12)
        return abs(self.value - self.manifest) <= tolerance * scale

    def beats_baseline(self) -> bool | None:
        if self.baseline_value is None:
            return None
        if self.lower_is_better:
            return self.value < self.baseline_value
        return self.value > self.baseline_value


class Stepper:
    """Runs one step graph over many streams, carrying state as the worker does."""

    def __init__(self, session: ort.InferenceSession, spec: ModelSpec, batch: int) -> None:
        self.session = session
        self.spec = spec
        self.state: Feed = {
            s.input_name: np.zeros((s.layers, batch, s.hidden), np.float32) for s in spec.states
        }
        self.outputs = [o.name for o in spec.outputs]
        self.state_outputs = [s.output_name for s in spec.states]

    def step(self, feed: Feed) -> list[npt.NDArray[np.float32]]:
        res = self.session.run(self.outputs + self.state_outputs, {**feed, **self.state})
        n = len(self.outputs)
        for s, value in zip(self.spec.states, res[n:], strict=True):
            self.state[s.input_name] = value
        return [np.asarray(r, np.float32) for r in res[:n]]


def _meta(entry: ManifestEntry, key: str) -> float | None:
    value = entry.metrics.get(key)
    return float(value) if isinstance(value, (int, float)) else None


def _strongest(entry: ManifestEntry, key: str) -> tuple[str, float | None]:
    """The highest-scoring baseline of an accuracy: ``metrics["baselines"]`` (name ->
    figure) when the manifest lists several, else the one named ``baseline``."""
    named = (str(entry.metrics.get("baseline", "")), _meta(entry, key))
    listed = entry.metrics.get("baselines")
    if not isinstance(listed, dict) or not listed:
        return named
    best = max(listed.items(), key=lambda kv: float(kv[1]))
    if named[1] is not None and named[1] >= float(best[1]):
        return named
    return str(best[0]), float(best[1])


def _softmax_log2(logits: F32, target: I64) -> F64:
    """-log2 P(target) under softmax(logits), per row."""
    z = logits.astype(np.float64)
    z = z - z.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    out: F64 = -logp[np.arange(len(target)), target] / math.log(2.0)
    return out


# --- forecasts -----------------------------------------------------------------------------


def eval_sensor(
    entry: ManifestEntry, session: ort.InferenceSession, spec: ModelSpec, limit: int | None
) -> list[Figure]:
    """One-step MAE of p50 at horizon 1 on the test rows (card: 2,628 points), the whole
    year run from a zero state as one stream; a limit starts two days before the test."""
    from statecast.contract.calendar import derive
    from statecast.models.datasets import (
        ELECDEMAND_START_MS,
        HALF_HOUR_MS,
        chronological_split,
        load_elecdemand,
    )

    frame = load_elecdemand()
    raw = frame[list(spec.features)].to_numpy(np.float64)
    n = len(raw)
    split = chronological_split(n)
    ts = ELECDEMAND_START_MS + HALF_HOUR_MS * np.arange(n, dtype=np.int64)
    derived = tuple(str(d) for d in spec.preprocess.get("derived_features", ()))
    x = np.concatenate([raw, derive(derived, ts)], axis=1).astype(np.float32)
    demand = raw[:, list(spec.features).index("demand")]
    start = 0 if limit is None else max(0, split.val_end - 96)
    stop = n - 1 if limit is None else min(n - 1, split.val_end - 1 + limit)
    fields = spec.outputs[0].fields
    mid = fields.index("p50")
    stepper = Stepper(session, spec, 1)
    preds: list[F32] = []
    rows: list[int] = []
    for t in range(start, stop):
        (pred,) = stepper.step({"x": x[t : t + 1]})
        if t >= split.val_end - 1:
            preds.append(pred[0])
            rows.append(t)
    idx = np.asarray(rows, np.int64)
    p = np.stack(preds).astype(np.float64)  # [N, horizon, quantiles]
    mae = float(np.mean(np.abs(p[:, 0, mid] - demand[idx + 1])))
    figures = [
        Figure(
            entry.name,
            "test_mae (one-step, p50 at horizon 1, GW)",
            mae,
            _meta(entry, "test_mae"),
            str(entry.metrics.get("baseline", "")),
            _meta(entry, "baseline_mae"),
            True,
            len(idx),
        )
    ]
    # Multi-horizon figures on origins whose every target lies in the test rows (card).
    horizon = p.shape[1]
    keep = idx + horizon < n
    if not keep.any():
        return figures
    y = demand[idx[keep, None] + np.arange(1, horizon + 1)[None, :]]
    q = np.asarray(spec.preprocess["quantiles"], np.float64)
    err = y[..., None] - p[keep]
    pinball = float(np.maximum(q * err, (q - 1.0) * err).mean())
    lo, hi = fields.index("p10"), fields.index("p90")
    inside = (y >= p[keep][..., lo]) & (y <= p[keep][..., hi])
    base = entry.metrics.get("baseline_pinball", "")
    figures += [
        Figure(
            entry.name,
            "test_mean_pinball (h1-48, p10/p50/p90, GW)",
            pinball,
            _meta(entry, "test_mean_pinball"),
            str(base),
            _meta(entry, "baseline_mean_pinball"),
            True,
            int(keep.sum()),
        ),
        # Coverage has no "better": its bar is a band, so no baseline is compared.
        Figure(
            entry.name,
            "test_coverage80 (p10-p90, all horizons)",
            float(inside.mean()),
            _meta(entry, "test_coverage80"),
            "-",
            None,
            False,
            int(keep.sum()),
        ),
    ]
    return figures


def eval_price(
    entry: ManifestEntry, session: ort.InferenceSession, spec: ModelSpec, limit: int | None
) -> Figure:
    """Pooled Gaussian NLL of the next return on every ticker's test days (card: 1,792),
    each ticker's whole history one stream, all tickers in one batch."""
    from statecast.models.datasets import STOCK_TICKERS, chronological_split, load_stock_prices

    frames = load_stock_prices(STOCK_TICKERS)
    series = [f["log_return"].to_numpy(np.float64) for f in frames.values()]
    # The card's split: chronological 70/15/15 per ticker.
    splits = [chronological_split(len(r)) for r in series]
    longest = max(len(r) for r in series)
    grid = np.zeros((len(series), longest), np.float32)
    for i, r in enumerate(series):
        grid[i, : len(r)] = r  # padding after a ticker's end is run but never scored
    stepper = Stepper(session, spec, len(series))
    fields = spec.outputs[0].fields
    mean_i, lv_i = fields.index("mean"), fields.index("log_var")
    preds = np.zeros((len(series), longest, 2), np.float64)
    for t in range(longest - 1):
        (pred,) = stepper.step({"x": grid[:, t : t + 1]})
        preds[:, t, 0] = pred[:, mean_i]
        preds[:, t, 1] = pred[:, lv_i]
    nll: list[F64] = []
    for i, (r, sp) in enumerate(zip(series, splits, strict=True)):
        rows = np.arange(sp.val_end - 1, sp.n - 1, dtype=np.int64)  # targets in test
        if limit is not None:
            rows = rows[:limit]
        m, lv, y = preds[i, rows, 0], preds[i, rows, 1], r[rows + 1]
        nll.append(0.5 * (math.log(2 * math.pi) + lv + (y - m) ** 2 * np.exp(-lv)))
    scores = np.concatenate(nll)
    return Figure(
        entry.name,
        "test_nll (pooled Gaussian NLL, log-return units)",
        float(scores.mean()),
        _meta(entry, "test_nll"),
        # The strongest GARCH family member fitted, not only the one named "baseline".
        str(entry.metrics.get("best_garch", entry.metrics.get("baseline", ""))),
        _meta(entry, "best_garch_nll") or _meta(entry, "baseline_nll"),
        True,
        len(scores),
    )


# --- frames and video ----------------------------------------------------------------------


def eval_frame_cnn(
    entry: ManifestEntry, session: ort.InferenceSession, spec: ModelSpec, limit: int | None
) -> Figure:
    """Accuracy on the Fashion-MNIST t10k images (raw 0-255 pixels, as the codec sends)."""
    from statecast.models.video_data import load_fashion_mnist
    from statecast.models.video_scenes import load_fashion_labels

    images = load_fashion_mnist("t10k")[:limit]
    labels = load_fashion_labels("t10k")[:limit]
    stepper = Stepper(session, spec, 0)
    hits = 0
    for lo in range(0, len(images), 1000):
        x = images[lo : lo + 1000, None].astype(np.float32)
        (probs,) = stepper.step({"x": x})
        hits += int((probs.argmax(axis=1) == labels[lo : lo + 1000]).sum())
    name, value = _strongest(entry, "baseline_accuracy")
    return Figure(
        entry.name,
        "test_accuracy",
        hits / len(labels),
        _meta(entry, "test_accuracy"),
        name,
        value,
        False,
        len(labels),
    )


def eval_video(
    entry: ManifestEntry, session: ort.InferenceSession, spec: ModelSpec, limit: int | None
) -> Figure:
    """Accuracy after each clip's last frame on the 3,000 test scenes, all clips in one
    batch, one frame a step (raw 0-255 grey pixels)."""
    from statecast.models.video_scenes import build_scene_splits

    test = build_scene_splits()["test"]
    frames, lengths, labels = test.frames[:limit], test.lengths[:limit], test.labels[:limit]
    stepper = Stepper(session, spec, len(labels))
    final = np.zeros((len(labels), len(spec.outputs[0].fields)), np.float32)
    for t in range(int(lengths.max())):
        (probs,) = stepper.step({"x": frames[:, t, None].astype(np.float32)})
        last = lengths == t + 1
        final[last] = probs[last]
    acc = float((final.argmax(axis=1) == labels).mean())
    return Figure(
        entry.name,
        "test_accuracy (after the last frame)",
        acc,
        _meta(entry, "test_accuracy"),
        str(entry.metrics.get("baseline", "")),
        _meta(entry, "baseline_accuracy"),
        False,
        len(labels),
    )


# --- text ----------------------------------------------------------------------------------


def eval_char(
    entry: ManifestEntry, session: ort.InferenceSession, spec: ModelSpec, limit: int | None
) -> Figure:
    """Bits per byte on the first 500,000 bytes of the IMDB test split cut into 16
    contiguous slices (card), one byte a step, every byte after each slice's first scored."""
    from statecast.models.charrnn_data import imdb_bytes, parallel_streams

    eval_bytes = int(entry.metrics.get("eval_bytes", 500_000))
    grid = parallel_streams(imdb_bytes("test", eval_bytes), 16)
    steps = grid.shape[1] - 1 if limit is None else min(grid.shape[1] - 1, limit)
    stepper = Stepper(session, spec, grid.shape[0])
    ones = np.ones(grid.shape[0], np.int64)
    total = 0.0
    for t in range(steps):
        (logits,) = stepper.step({"x": grid[:, t : t + 1], "lengths": ones})
        total += float(_softmax_log2(logits, grid[:, t + 1]).sum())
    count = steps * grid.shape[0]
    return Figure(
        entry.name,
        "test_bpc (bits per byte)",
        total / count,
        _meta(entry, "test_bpc"),
        str(entry.metrics.get("baseline", "")),
        _meta(entry, "baseline_test_bpc"),
        True,
        count,
    )


def eval_sentiment(
    entry: ManifestEntry, session: ort.InferenceSession, spec: ModelSpec, limit: int | None
) -> Figure:
    """Accuracy (P(positive) > 0.5 after the whole text) on the IMDB test split, each text
    tokenised with the tokenizer the spec names and fed in chunks of max_chunk_tokens."""
    from tokenizers import Tokenizer

    from statecast.models.sentiment_data import load_splits

    pre = spec.preprocess
    # Relative to the ONNX file's directory, normalised lexically as the text codec does.
    tok_path = os.path.normpath((PACKAGE_ROOT / entry.onnx).parent / str(pre["tokenizer"]))
    tok = Tokenizer.from_file(tok_path)
    chunk, pad = int(pre["max_chunk_tokens"]), int(pre.get("pad_id", 0))
    test = load_splits().test
    texts = [str(t) for t in test["text"].tolist()][:limit]
    labels = np.asarray(test["label"].tolist(), np.int64)[:limit]
    ids = [np.asarray(e.ids, np.int64) for e in tok.encode_batch(texts)]
    # Texts of a similar length share a batch so few steps feed empty chunks.
    order = np.argsort([len(i) for i in ids], kind="stable")
    prob = np.zeros(len(ids), np.float64)
    for lo in range(0, len(order), 256):
        rows = order[lo : lo + 256]
        n_chunks = [max(1, math.ceil(len(ids[r]) / chunk)) for r in rows]
        stepper = Stepper(session, spec, len(rows))
        for k in range(max(n_chunks)):
            x = np.full((len(rows), chunk), pad, np.int64)
            lengths = np.zeros(len(rows), np.int64)
            for j, r in enumerate(rows):
                part = ids[r][k * chunk : (k + 1) * chunk]
                x[j, : len(part)] = part
                lengths[j] = len(part)
            (p,) = stepper.step({"x": x, "lengths": lengths})
            for j, r in enumerate(rows):
                if n_chunks[j] == k + 1:
                    prob[r] = float(p[j, 0])
    acc = float(((prob > 0.5).astype(np.int64) == labels).mean())
    # The n-gram term alone is an NBSVM, the classic simple baseline on IMDB: when the
    # manifest records it and it scores higher than the named baseline, it is the bar.
    named, ngram = _meta(entry, "baseline_accuracy"), _meta(entry, "ngram_only_accuracy")
    strongest = (
        ("n-gram term alone (NBSVM)", ngram)
        if ngram is not None and (named is None or ngram > named)
        else (str(entry.metrics.get("baseline", "")), named)
    )
    return Figure(
        entry.name,
        "test_accuracy",
        acc,
        _meta(entry, "test_accuracy"),
        strongest[0],
        strongest[1],
        False,
        len(labels),
    )


def _corpus_bleu4(hyps: list[list[int]], refs: list[list[int]]) -> float:
    """Corpus BLEU-4, one reference each, no smoothing (the card's definition)."""
    matched, total = [0] * 4, [0] * 4
    hyp_len = sum(len(h) for h in hyps)
    ref_len = sum(len(r) for r in refs)
    for hyp, ref in zip(hyps, refs, strict=True):
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


def _words_until_eos(ids: npt.ArrayLike, eos: int) -> list[int]:
    out: list[int] = []
    for i in np.asarray(ids).tolist():
        if i == eos:
            break
        out.append(int(i))
    return out


def eval_caption(
    entry: ManifestEntry, session: ort.InferenceSession, spec: ModelSpec, limit: int | None
) -> Figure:
    """Corpus BLEU-4 of greedy captions on the 3,000 test scenes: the context is the
    ``video_lstm`` state the spec names after each clip's last frame; the reference is the
    clip's template caption (motion, garment, camera labels)."""
    from statecast.models.caption import caption_ids
    from statecast.models.video_scenes import build_scene_splits

    ctx_spec = spec.preprocess["context"]
    ctx_entry = load_manifest()[str(ctx_spec["model"])]
    video = build_session(PACKAGE_ROOT / ctx_entry.onnx)
    vspec = ModelSpec.from_metadata(video.get_modelmeta().custom_metadata_map)
    scenes = build_scene_splits()
    test = scenes["test"]
    frames, lengths = test.frames[:limit], test.lengths[:limit]
    n = len(lengths)
    # Video first: the state the worker stores after each camera's latest frame.
    vstep = Stepper(video, vspec, n)
    state_name = "state_in." + str(ctx_spec["state"])
    context = np.zeros((n, int(ctx_spec["size"])), np.float32)
    motion = np.zeros(n, np.int64)
    for t in range(int(lengths.max())):
        (probs,) = vstep.step({"x": frames[:, t, None].astype(np.float32)})
        last = lengths == t + 1
        context[last] = vstep.state[state_name][-1][last]
        motion[last] = probs[last].argmax(axis=1)
    bos, eos = int(spec.preprocess["bos"]), int(spec.preprocess["eos"])
    stepper = Stepper(session, spec, n)
    tok = np.full((n, 1), bos, np.int64)
    words = []
    for _ in range(int(spec.preprocess["max_words"])):
        (logits,) = stepper.step({"x": tok, "context": context})
        tok = logits.argmax(axis=1).astype(np.int64)[:, None]
        words.append(tok[:, 0])
    hyps = [_words_until_eos(row, eos) for row in np.stack(words, axis=1)]
    refs = [
        _words_until_eos(caption_ids(int(m), int(g), int(c)), eos)
        for m, g, c in zip(
            test.labels[:limit], test.garments[:limit], test.cameras[:limit], strict=True
        )
    ]
    # Baseline: the template filled with video_lstm's motion class and the training
    # clips' most frequent garment and camera motion (no decoder at all).
    train = scenes["train"]
    garment = int(np.bincount(train.garments).argmax())
    camera = int(np.bincount(train.cameras).argmax())
    base = [_words_until_eos(caption_ids(int(m), garment, camera), eos) for m in motion]
    return Figure(
        entry.name,
        "test_bleu4 (corpus, greedy)",
        _corpus_bleu4(hyps, refs),
        _meta(entry, "test_bleu4"),
        "template from video_lstm's class + majority garment and camera (computed here)",
        _corpus_bleu4(base, refs),
        False,
        n,
    )


def eval_gan(
    entry: ManifestEntry, session: ort.InferenceSession, spec: ModelSpec, limit: int | None
) -> Figure:
    """Two-sample accuracy (logistic regression, 5-fold CV x10) of the 73 held-out days vs
    one synthetic day each for the same conditions. The card's noise comes from torch's
    generator (seed 1234), which the metadata cannot pin: numpy's standard normal (same
    seed) is drawn here, so the figure is held to an absolute gap of 0.05."""
    from statecast.models.gan_data import load_days, split_days
    from statecast.models.gan_realism import two_sample_accuracy

    _, held = split_days(load_days())
    cond = held.conditions().astype(np.float32)[:limit]
    noise_dim = int(spec.preprocess["noise_dim"])
    z = np.random.default_rng(1234).standard_normal((len(cond), noise_dim)).astype(np.float32)
    (synth,) = Stepper(session, spec, len(cond)).step({"x": cond, "z": z})
    repeats = 10 if limit is None else 1
    acc = two_sample_accuracy(held.demand[:limit], synth.astype(np.float64), repeats=repeats)
    two = entry.metrics.get("two_sample_accuracy")
    manifest = float(two["logistic"]) if isinstance(two, dict) else None
    return Figure(
        entry.name,
        "two-sample accuracy, logistic (0.5 = indistinguishable)",
        float(acc["logistic"]),
        manifest,
        "none in the manifest",
        None,
        True,
        len(cond),
        abs_tolerance=0.05,
    )


Evaluator = Callable[
    [ManifestEntry, ort.InferenceSession, ModelSpec, int | None], Figure | list[Figure]
]

EVALUATORS: dict[str, Evaluator] = {
    "sensor_lstm": eval_sensor,
    "sensor_rnn": eval_sensor,
    "price_gru": eval_price,
    "frame_cnn": eval_frame_cnn,
    "video_lstm": eval_video,
    "char_lstm": eval_char,
    "sentiment_lstm": eval_sentiment,
    "video_caption": eval_caption,
    "gan_demand": eval_gan,
}


def evaluate(entry: ManifestEntry, root: Path, limit: int | None) -> list[Figure]:
    """The recomputed figures of one entry (headline first); empty without an evaluator."""
    fn = EVALUATORS.get(entry.name)
    if fn is None:
        return []
    session = build_session(root / entry.onnx)
    spec = ModelSpec.from_metadata(session.get_modelmeta().custom_metadata_map)
    out = fn(entry, session, spec, limit)
    return out if isinstance(out, list) else [out]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``models evaluate`` (added beside ``models list|verify``'s own)."""
    parser.add_argument(
        "--limit",
        type=int,
        default=None,
        help="evaluate a small slice only (code path check; no comparison with the manifest)",
    )
    parser.add_argument(
        "--tolerance",
        type=float,
        default=DEFAULT_TOLERANCE,
        help=f"relative gap allowed from the manifest figure (default {DEFAULT_TOLERANCE:g})",
    )


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.6g}"


def run_evaluate(
    entries: list[ManifestEntry], root: Path, limit: int | None, tolerance: float
) -> int:
    failed = 0
    for entry in entries:
        figures = evaluate(entry, root, limit)
        if not figures:
            print(f"skip {entry.name}: no evaluator (headline figure not recomputable alone)")
            continue
        for fig in figures:
            verdict = "ok  "
            if limit is None and not fig.matches(tolerance):
                verdict = "FAIL"
                failed += 1
            print(
                f"{verdict} {fig.name}: {fig.metric} model={_fmt(fig.value)} "
                f"manifest={_fmt(fig.manifest)} "
                f"baseline[{fig.baseline}]={_fmt(fig.baseline_value)} "
                f"beats_baseline={fig.beats_baseline()} n={fig.items}"
                + (" (slice)" if limit is not None else "")
            )
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry (``python -m statecast.export.evaluate_cli``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*")
    parser.add_argument("--manifest", type=Path, default=DEFAULT_MANIFEST)
    add_arguments(parser)
    args = parser.parse_args(argv)
    entries = load_manifest(args.manifest)
    chosen = [entries[n] for n in sorted(entries) if not args.names or n in args.names]
    return run_evaluate(chosen, args.manifest.resolve().parent.parent, args.limit, args.tolerance)


if __name__ == "__main__":
    raise SystemExit(main())
