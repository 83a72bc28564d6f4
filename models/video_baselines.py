"""Two hand-made baselines for the motion task, each features + a small classifier.

- **image moments**: per frame, the intensity centroid, the spread (second moments) and
  the main-axis orientation; per pair of frames, how they change. This is the baseline
  that matched the CNN+LSTM on the old single-object task.
- **global motion**: per pair of consecutive frames, phase correlation (translation: peak
  shift and height) and phase correlation of the log-polar magnitude spectra
  (Fourier-Mellin: rotation and scale). It measures how the whole picture moves, which is
  what a camera-motion estimator sees.

Clip features after k frames are the mean, the standard deviation and the sum of the pair
features over the first k frames (zeros after one frame), so both baselines answer after
every frame like the served model. The classifier is a one-hidden-layer MLP trained on
every prefix of the training clips and stopped on the validation clips.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

log = logging.getLogger(__name__)

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
U8 = npt.NDArray[np.uint8]
PairFeatures = Callable[[F32], F64]


def moment_pairs(frames: F32) -> F64:
    """``[N, T, H, W]`` -> ``[N, T-1, 6]`` changes of centroid, spread and orientation."""
    _n, _t, h, w = frames.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    mass = frames.sum(axis=(2, 3)).astype(np.float64) + 1e-6
    cx = (frames * xx).sum(axis=(2, 3)) / mass
    cy = (frames * yy).sum(axis=(2, 3)) / mass
    dx = xx[None, None] - cx[..., None, None]
    dy = yy[None, None] - cy[..., None, None]
    mxx = (frames * dx * dx).sum(axis=(2, 3)) / mass
    myy = (frames * dy * dy).sum(axis=(2, 3)) / mass
    mxy = (frames * dx * dy).sum(axis=(2, 3)) / mass
    spread = np.log(mxx + myy + 1e-6)
    theta = 0.5 * np.arctan2(2 * mxy, mxx - myy)  # main axis, defined modulo pi
    dtheta = np.angle(np.exp(2j * np.diff(theta, axis=1))) / 2
    elong = np.sqrt((mxx - myy) ** 2 + 4 * mxy**2) / (mxx + myy + 1e-6)
    out = np.stack(
        [
            np.diff(cx, axis=1),
            np.diff(cy, axis=1),
            np.diff(spread, axis=1),
            dtheta,
            np.diff(elong, axis=1),
            np.diff(np.log(mass), axis=1),
        ],
        axis=-1,
    )
    return out


def _hann(h: int, w: int) -> F64:
    out: F64 = np.outer(np.hanning(h), np.hanning(w))
    return out


def _phase_peak(a: npt.NDArray[np.complex128], b: npt.NDArray[np.complex128]) -> F64:
    """Peak shift (dy, dx, with wrap) and peak height of the phase correlation of a and b."""
    cross = b * np.conj(a)
    cross /= np.abs(cross) + 1e-9
    corr = np.fft.ifft2(cross).real
    n, h, w = corr.shape
    flat = corr.reshape(n, -1)
    k = flat.argmax(axis=1)
    py, px = np.divmod(k, w)
    peak = flat[np.arange(n), k]
    # Sub-pixel: parabola through the peak and its neighbours on each axis.
    rows = np.arange(n)

    def refine(c_minus: F64, c0: F64, c_plus: F64) -> F64:
        den = c_minus - 2 * c0 + c_plus
        out: F64 = np.divide(
            0.5 * (c_minus - c_plus), den, out=np.zeros_like(den), where=np.abs(den) > 1e-9
        )
        return out

    ox = refine(corr[rows, py, (px - 1) % w], peak, corr[rows, py, (px + 1) % w])
    oy = refine(corr[rows, (py - 1) % h, px], peak, corr[rows, (py + 1) % h, px])
    dy = ((py + h // 2) % h - h // 2) + oy
    dx = ((px + w // 2) % w - w // 2) + ox
    out: F64 = np.stack([dy, dx, peak], axis=-1)
    return out


def _log_polar_grid(h: int, w: int, angles: int, radii: int) -> tuple[I64, I64, F64, F64]:
    cy, cx = h / 2.0, w / 2.0
    theta = np.linspace(0, np.pi, angles, endpoint=False)  # magnitude spectra are symmetric
    r = np.exp(np.linspace(0, np.log(min(cy, cx) - 1), radii))
    ys = cy + r[None, :] * np.sin(theta[:, None])
    xs = cx + r[None, :] * np.cos(theta[:, None])
    y0, x0 = np.floor(ys).astype(np.int64), np.floor(xs).astype(np.int64)
    return y0, x0, ys - y0, xs - x0


def global_motion_pairs(frames: F32, angles: int = 32, radii: int = 16) -> F64:
    """``[N, T, H, W]`` -> ``[N, T-1, 6]``: translation (dx, dy, peak) and Fourier-Mellin
    rotation (rad), log-scale change and peak between consecutive frames."""
    n, t, h, w = frames.shape
    win = _hann(h, w)
    x = frames.astype(np.float64)
    x = (x - x.mean(axis=(2, 3), keepdims=True)) * win
    spec = np.fft.fft2(x.reshape(n * t, h, w))
    mag = np.fft.fftshift(np.log1p(np.abs(spec)), axes=(1, 2))
    y0, x0, fy, fx = _log_polar_grid(h, w, angles, radii)
    y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
    lp = (
        mag[:, y0, x0] * (1 - fy) * (1 - fx)
        + mag[:, y0, x1] * (1 - fy) * fx
        + mag[:, y1, x0] * fy * (1 - fx)
        + mag[:, y1, x1] * fy * fx
    )
    lp = (lp - lp.mean(axis=(1, 2), keepdims=True)).reshape(n, t, angles, radii)
    spec = spec.reshape(n, t, h, w)
    lp_spec = np.fft.fft2(lp)
    shift = _phase_peak(spec[:, :-1].reshape(-1, h, w), spec[:, 1:].reshape(-1, h, w))
    rs = _phase_peak(
        lp_spec[:, :-1].reshape(-1, angles, radii), lp_spec[:, 1:].reshape(-1, angles, radii)
    )
    log_step = np.log(min(h, w) / 2.0 - 1) / (radii - 1)
    out = np.stack(
        [
            shift[:, 1],
            shift[:, 0],
            shift[:, 2],
            rs[:, 0] * np.pi / angles,
            rs[:, 1] * log_step,
            rs[:, 2],
        ],
        axis=-1,
    )
    return out.reshape(n, t - 1, 6)


def prefix_features(pairs: F64, max_len: int) -> F64:
    """``[N, T-1, P]`` pair features -> ``[N, T, 3P]`` clip features after k = 1..T frames:
    mean, std and sum of the pairs seen so far (zeros after one frame)."""
    n, _, p = pairs.shape
    s1 = np.concatenate([np.zeros((n, 1, p)), np.cumsum(pairs, axis=1)], axis=1)
    s2 = np.concatenate([np.zeros((n, 1, p)), np.cumsum(pairs**2, axis=1)], axis=1)
    count = np.maximum(np.arange(max_len), 1)[None, :, None]
    mean = s1 / count
    std = np.sqrt(np.maximum(s2 / count - mean**2, 0.0))
    out: F64 = np.concatenate([mean, std, s1], axis=-1)
    return out


def clip_features(frames: U8, pair_fn: PairFeatures, chunk: int = 500) -> F64:
    """Features after every frame, ``[N, T, 3P]``, computed in chunks to bound memory."""
    parts = []
    for lo in range(0, frames.shape[0], chunk):
        x = frames[lo : lo + chunk].astype(np.float32)
        parts.append(prefix_features(pair_fn(x), x.shape[1]))
    return np.concatenate(parts)


@dataclass
class FeatureClassifier:
    """Standardised features -> one hidden layer MLP -> class logits."""

    mean: F64
    std: F64
    net: nn.Module

    def predict(self, feats: F64) -> I64:
        x = torch.from_numpy(((feats - self.mean) / self.std).astype(np.float32))
        self.net.eval()
        with torch.no_grad():
            out: I64 = self.net(x).argmax(-1).numpy().astype(np.int64)
        return out


def _rows(feats: F64, lengths: I64, labels: I64) -> tuple[F64, I64]:
    """Every prefix of every clip (k = 1..length) as one training row."""
    t = feats.shape[1]
    valid = np.arange(t)[None, :] < lengths[:, None]
    targets = np.broadcast_to(labels[:, None], valid.shape)
    return feats[valid], targets[valid]


def fit_classifier(
    train: tuple[F64, I64, I64],
    val: tuple[F64, I64, I64],
    classes: int,
    seed: int = 0,
    hidden: int = 64,
    epochs: int = 30,
    patience: int = 4,
) -> FeatureClassifier:
    """Train on all prefixes of the train clips; keep the epoch with the best val accuracy."""
    torch.manual_seed(seed)
    x, y = _rows(*train)
    vx, vy = _rows(*val)
    mean, std = x.mean(axis=0), x.std(axis=0) + 1e-6
    net = nn.Sequential(nn.Linear(x.shape[1], hidden), nn.ReLU(), nn.Linear(hidden, classes))
    clf = FeatureClassifier(mean, std, net)
    xt = torch.from_numpy(((x - mean) / std).astype(np.float32))
    yt = torch.from_numpy(y.astype(np.int64))
    optim = torch.optim.Adam(net.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(seed)
    best, best_state, stale = -1.0, copy.deepcopy(net.state_dict()), 0
    for _ in range(epochs):
        net.train()
        order = torch.randperm(len(yt), generator=gen)
        for lo in range(0, len(order), 512):
            idx = order[lo : lo + 512]
            optim.zero_grad()
            loss = nn.functional.cross_entropy(net(xt[idx]), yt[idx])
            loss.backward()  # type: ignore[no-untyped-call]
            optim.step()
        acc = float((clf.predict(vx) == vy).mean())
        if acc > best:
            best, best_state, stale = acc, copy.deepcopy(net.state_dict()), 0
        else:
            stale += 1
            if stale >= patience:
                break
    net.load_state_dict(best_state)
    log.info("baseline classifier: val accuracy (all prefixes) %.4f", best)
    return clf


def accuracy_by_frames(pred: I64, labels: I64, lengths: I64) -> tuple[float, list[float]]:
    """``pred [N, T]`` after every frame -> (accuracy after the last frame, after k frames)."""
    n, t = pred.shape
    right = pred == labels[:, None]
    final = float(right[np.arange(n), lengths - 1].mean())
    by = [float(right[lengths >= k, k - 1].mean()) for k in range(1, t + 1)]
    return final, by


BASELINES: dict[str, PairFeatures] = {
    "image_moments": moment_pairs,
    "global_motion": global_motion_pairs,
}


def evaluate_baselines(
    splits: dict[str, tuple[U8, I64, I64]], classes: int, seed: int = 0
) -> dict[str, dict[str, object]]:
    """Each baseline fitted on ``train``, stopped on ``val``, scored on ``test``.

    ``splits`` maps split name -> (frames ``[N, T, H, W]``, lengths, labels).
    """
    out: dict[str, dict[str, object]] = {}
    for name, pair_fn in BASELINES.items():
        feats = {s: clip_features(v[0], pair_fn) for s, v in splits.items()}
        clf = fit_classifier(
            (feats["train"], splits["train"][1], splits["train"][2]),
            (feats["val"], splits["val"][1], splits["val"][2]),
            classes,
            seed=seed,
        )
        f = feats["test"]
        pred = clf.predict(f.reshape(-1, f.shape[-1])).reshape(f.shape[:2])
        final, by = accuracy_by_frames(pred, splits["test"][2], splits["test"][1])
        log.info("baseline %s: test accuracy %.4f", name, final)
        out[name] = {"test_accuracy": final, "test_accuracy_by_frames": by}
    return out
