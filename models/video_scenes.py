"""The harder clip task: two garments over real video under a moving, shaking camera.

Each clip (a *scene*) is composed of three layers, all 32x32 grey, 8-16 frames:

- **background (real video)**: consecutive frames of a real video (``bikes.mp4`` and
  others, see :mod:`statecast.models.video_backgrounds`), seen through a synthetic camera
  that pans, tilts, zooms, rolls or stays still, with hand-held shake;
- **distractor (real image, synthetic motion)**: a smaller Fashion-MNIST garment moving
  along another motion than the label;
- **subject (real image, synthetic motion)**: the larger garment; **its on-screen motion
  is the label** (one of :data:`MOTIONS`).

Position says nothing: objects live on a torus (wrap-around at the edges) and start
anywhere. Speed varies within a clip; brightness drifts; Gaussian pixel noise; the camera
shake moves every layer. So neither one frame, nor global motion (mostly the background's),
nor the intensity centroid (background, two objects, wrap-around) gives the label away: a
model has to find the larger object and follow it.

Every clip also records the subject's garment class and the camera motion, for the
auxiliary heads that make the video state describe the scene (the caption decoder reads
it) and for the caption templates.

Splits share no source: train/val use disjoint halves of the Fashion-MNIST training images
and the train/val videos; test uses the Fashion-MNIST test images and a held-out video.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from statecast.contract.paths import cache_dir
from statecast.models.video_backgrounds import split_backgrounds
from statecast.models.video_data import (
    F32,
    F64,
    FASHION_DIR,
    I64,
    MOTIONS,
    SPLITS,
    U8,
    Split,
    load_fashion_mnist,
    read_idx,
    render,
)

log = logging.getLogger(__name__)

CACHE_DIR = cache_dir() / "video"
GARMENTS: tuple[str, ...] = (
    "t-shirt",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "boot",
)
CAMERA_MOTIONS: tuple[str, ...] = (
    "still",
    "pan_left",
    "pan_right",
    "tilt_up",
    "tilt_down",
    "zoom_in",
    "zoom_out",
    "roll_cw",
    "roll_ccw",
)


@dataclass(frozen=True)
class SceneConfig:
    canvas: int = 32
    min_len: int = 8
    max_len: int = 16
    # Subject scale (x the 28 px image) for moves and turns; zooms stay within zoom_scale.
    subject_scale: tuple[float, float] = (0.6, 0.85)
    zoom_scale: tuple[float, float] = (0.45, 0.95)
    zoom_rate: tuple[float, float] = (1.03, 1.07)
    move_speed: tuple[float, float] = (0.7, 1.6)  # px/frame
    rotate_speed: tuple[float, float] = (6.0, 14.0)  # deg/frame
    # Speed within a clip: v_k = v * (1 + a sin(w k + phase)), a drawn up to this.
    speed_wobble: float = 0.5
    # The distractor's largest scale is this fraction of the subject's smallest.
    distractor_ratio: tuple[float, float] = (0.4, 0.6)
    # Camera: background px per canvas px, pan/tilt speed (bg px/frame), zoom and roll rates.
    view_scale: tuple[float, float] = (1.0, 1.5)
    pan_speed: tuple[float, float] = (0.5, 1.5)
    cam_zoom_rate: tuple[float, float] = (1.02, 1.05)
    roll_speed: tuple[float, float] = (2.0, 6.0)
    shake: tuple[float, float] = (0.0, 0.7)  # std of the per-frame jitter, canvas px
    background_contrast: tuple[float, float] = (0.35, 0.75)
    gain_start: tuple[float, float] = (0.75, 1.1)
    gain_end: tuple[float, float] = (0.75, 1.1)
    noise: tuple[float, float] = (0.0, 10.0)


@dataclass(frozen=True)
class Scenes:
    """Clips padded to ``max_len`` frames; frames past ``lengths[i]`` are zeros."""

    frames: U8  # [N, T, H, W]
    lengths: I64  # [N]
    labels: I64  # [N] subject motion, index into MOTIONS
    garments: I64  # [N] subject garment class, index into GARMENTS
    cameras: I64  # [N] camera motion, index into CAMERA_MOTIONS
    sources: I64  # [N] global id of the subject image

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def load_fashion_labels(part: str, root: Path = FASHION_DIR) -> I64:
    labels: I64 = read_idx(root / f"{part}-labels-idx1-ubyte.gz").astype(np.int64)
    return labels


def _u(rng: np.random.Generator, lo_hi: tuple[float, float], n: int) -> F64:
    return rng.uniform(lo_hi[0], lo_hi[1], size=n)


def _wobble(rng: np.random.Generator, n: int, t: int, amount: float) -> F64:
    """Per-frame speed factors ``[N, T]`` around 1: speed varies within a clip."""
    a = rng.uniform(0.0, amount, size=(n, 1))
    w = rng.uniform(0.2, 0.9, size=(n, 1))
    phase = rng.uniform(0.0, 2 * np.pi, size=(n, 1))
    k = np.arange(t, dtype=np.float64)[None, :]
    out: F64 = 1.0 + a * np.sin(w * k + phase)
    return out


def _cumulative(step: F64) -> F64:
    """Position after k frames from per-frame steps: 0 at frame 0."""
    out = np.zeros_like(step)
    out[:, 1:] = np.cumsum(step[:, :-1], axis=1)
    return out


def object_poses(
    motions: I64, lengths: I64, cfg: SceneConfig, rng: np.random.Generator
) -> tuple[F64, F64, F64, F64]:
    """Scale, angle, shift x, shift y ``[N, T]`` of objects following ``motions`` on a torus."""
    n, t = motions.shape[0], cfg.max_len
    names = np.array(MOTIONS)[motions]
    speed = _wobble(rng, n, t, cfg.speed_wobble)
    half = cfg.canvas / 2.0
    x0 = rng.uniform(-half, half, size=(n, 1))
    y0 = rng.uniform(-half, half, size=(n, 1))
    tilt = np.deg2rad(rng.uniform(-15, 15, size=(n, 1))) + np.zeros((1, t))
    scale = _u(rng, cfg.subject_scale, n)[:, None] + np.zeros((1, t))
    tx = x0 + np.zeros((1, t))
    ty = y0 + np.zeros((1, t))
    angle = tilt.copy()

    v = _u(rng, cfg.move_speed, n)[:, None] * speed
    path = _cumulative(v)
    for name, axis, sign in (
        ("left", tx, -1),
        ("right", tx, 1),
        ("up", ty, -1),
        ("down", ty, 1),
    ):
        m = names == name
        axis[m] += sign * path[m]

    # Zooms: geometric growth at a wobbling rate, kept within zoom_scale over the clip.
    zoom = np.isin(names, ("zoom_in", "zoom_out"))
    lo, hi = cfg.zoom_scale
    span = np.maximum(lengths - 1, 1).astype(np.float64)
    rate = np.log(_u(rng, cfg.zoom_rate, n))
    rate = np.minimum(rate, np.log(hi / lo) / (span * (1 + cfg.speed_wobble)))
    growth = _cumulative(rate[:, None] * speed)
    total = growth[np.arange(n), np.maximum(lengths - 1, 0)]
    s0 = np.exp(rng.uniform(np.log(lo), np.maximum(np.log(hi) - total, np.log(lo))))
    zin = s0[:, None] * np.exp(growth)
    zout = (s0 * np.exp(total))[:, None] * np.exp(-growth)
    scale[zoom] = np.where((names == "zoom_in")[:, None], zin, zout)[zoom]

    # Turns: screen y points down, so clockwise is +angle.
    rot = np.isin(names, ("rotate_cw", "rotate_ccw"))
    w = np.deg2rad(_u(rng, cfg.rotate_speed, n))[:, None] * speed
    turn = np.where(names == "rotate_cw", 1.0, -1.0)[:, None]
    theta0 = rng.uniform(0.0, 2 * np.pi, size=(n, 1))
    angle[rot] = (theta0 + turn * _cumulative(w))[rot]
    return scale, angle, tx, ty


def camera_poses(
    cameras: I64, cfg: SceneConfig, rng: np.random.Generator
) -> tuple[F64, F64, F64, F64]:
    """View scale (bg px per canvas px), roll (rad), centre offset x, y (bg px) ``[N, T]``."""
    n, t = cameras.shape[0], cfg.max_len
    names = np.array(CAMERA_MOTIONS)[cameras]
    speed = _wobble(rng, n, t, cfg.speed_wobble)
    z = _u(rng, cfg.view_scale, n)[:, None] + np.zeros((1, t))
    roll = np.zeros((n, t))
    cx = np.zeros((n, t))
    cy = np.zeros((n, t))
    path = _cumulative(_u(rng, cfg.pan_speed, n)[:, None] * speed)
    # Panning left turns the view left: the scene slides right on screen.
    for name, axis, sign in (
        ("pan_left", cx, -1),
        ("pan_right", cx, 1),
        ("tilt_up", cy, -1),
        ("tilt_down", cy, 1),
    ):
        m = names == name
        axis[m] += sign * path[m]
    # Zooming in shows less of the scene per canvas pixel.
    grow = _cumulative(np.log(_u(rng, cfg.cam_zoom_rate, n))[:, None] * speed)
    zin = names == "zoom_in"
    zout = names == "zoom_out"
    z[zin] = (z * np.exp(-grow))[zin]
    z[zout] = (z * np.exp(grow - grow[:, -1:]))[zout]
    w = np.deg2rad(_u(rng, cfg.roll_speed, n))[:, None] * speed
    turn = np.where(names == "roll_cw", 1.0, -1.0)[:, None]
    rolling = np.isin(names, ("roll_cw", "roll_ccw"))
    roll[rolling] = (turn * _cumulative(w))[rolling]
    return z, roll, cx, cy


def view_backgrounds(
    video: U8,
    first: I64,
    z: F64,
    roll: F64,
    cx: F64,
    cy: F64,
    canvas: int,
) -> F32:
    """``[N, T, canvas, canvas]`` bilinear views of consecutive frames of ``video``.

    Clip i shows frames ``first[i] + k`` (looping) at centre ``(cx, cy)`` (absolute bg
    pixels), scale ``z`` and roll; samples beyond the frame repeat its edge.
    """
    _n, t = z.shape
    f, h, w = video.shape
    c = (canvas - 1) / 2.0
    yy, xx = np.meshgrid(np.arange(canvas) - c, np.arange(canvas) - c, indexing="ij")
    cos, sin = np.cos(roll)[..., None, None], np.sin(roll)[..., None, None]
    zz = z[..., None, None]
    sx = (cos * xx - sin * yy) * zz + cx[..., None, None]
    sy = (sin * xx + cos * yy) * zz + cy[..., None, None]
    sx = np.clip(sx, 0.0, w - 1.001)
    sy = np.clip(sy, 0.0, h - 1.001)
    x0 = np.floor(sx).astype(np.int64)
    y0 = np.floor(sy).astype(np.int64)
    fx = (sx - x0).astype(np.float32)
    fy = (sy - y0).astype(np.float32)
    frame = (first[:, None] + np.arange(t)[None, :]) % f
    base = (frame * (h * w))[..., None, None]
    flat = base + y0 * w + x0
    pix = video.reshape(-1).astype(np.float32)
    top = pix[flat] * (1 - fx) + pix[flat + 1] * fx
    bottom = pix[flat + w] * (1 - fx) + pix[flat + w + 1] * fx
    out: F32 = (top * (1 - fy) + bottom * fy).astype(np.float32)
    return out


def make_scenes(
    images: U8,
    garments: I64,
    videos: list[U8],
    n_clips: int,
    seed: int,
    cfg: SceneConfig = SceneConfig(),
    ids: I64 | None = None,
    chunk: int = 256,
) -> Scenes:
    """``n_clips`` labelled scenes from ``images`` (with their garment classes) over ``videos``."""
    rng = np.random.default_rng(seed)
    t = cfg.max_len
    labels = rng.integers(0, len(MOTIONS), size=n_clips).astype(np.int64)
    # The distractor never moves like the subject.
    other = (labels + rng.integers(1, len(MOTIONS), size=n_clips)) % len(MOTIONS)
    cameras = rng.integers(0, len(CAMERA_MOTIONS), size=n_clips).astype(np.int64)
    lengths = rng.integers(cfg.min_len, cfg.max_len + 1, size=n_clips).astype(np.int64)
    rows = rng.choice(images.shape[0], size=n_clips, replace=n_clips > images.shape[0])
    rows2 = rng.integers(0, images.shape[0], size=n_clips)
    s_pose = object_poses(labels, lengths, cfg, rng)
    d_scale, d_angle, d_tx, d_ty = object_poses(other, lengths, cfg, rng)
    valid = np.arange(t)[None, :] < lengths[:, None]
    s_min = np.where(valid, s_pose[0], np.inf).min(axis=1)
    d_max = np.where(valid, d_scale, 0.0).max(axis=1)
    d_scale = d_scale * (s_min * _u(rng, cfg.distractor_ratio, n_clips) / d_max)[:, None]
    z, roll, cx, cy = camera_poses(cameras, cfg, rng)
    shake = _u(rng, cfg.shake, n_clips)[:, None, None] * rng.standard_normal((n_clips, t, 2))
    which = rng.integers(0, len(videos), size=n_clips)
    contrast = _u(rng, cfg.background_contrast, n_clips).astype(np.float32)
    gain = np.linspace(_u(rng, cfg.gain_start, n_clips), _u(rng, cfg.gain_end, n_clips), t).T
    noise = _u(rng, cfg.noise, n_clips).astype(np.float32)
    first = np.zeros(n_clips, dtype=np.int64)
    bx = np.zeros(n_clips)
    by = np.zeros(n_clips)
    for v, video in enumerate(videos):
        m = which == v
        f, h, w = video.shape
        first[m] = rng.integers(0, f, size=int(m.sum()))
        bx[m] = rng.uniform(0.3 * w, 0.7 * w, size=int(m.sum()))
        by[m] = rng.uniform(0.35 * h, 0.65 * h, size=int(m.sum()))

    frames = np.zeros((n_clips, t, cfg.canvas, cfg.canvas), dtype=np.uint8)
    # Shake moves the whole picture: the view centre one way (bg px), objects with it.
    jx = cx + bx[:, None] - shake[:, :, 0] * z
    jy = cy + by[:, None] - shake[:, :, 1] * z
    for lo in range(0, n_clips, chunk):
        sl = slice(lo, min(lo + chunk, n_clips))
        bg = np.zeros((sl.stop - lo, t, cfg.canvas, cfg.canvas), dtype=np.float32)
        for v, video in enumerate(videos):
            idx = lo + np.flatnonzero(which[sl] == v)
            bg[idx - lo] = view_backgrounds(
                video, first[idx], z[idx], roll[idx], jx[idx], jy[idx], cfg.canvas
            )
        sx, sy = shake[sl, :, 0], shake[sl, :, 1]
        dist = render(
            images[rows2[sl]],
            d_scale[sl],
            d_angle[sl],
            d_tx[sl] + sx,
            d_ty[sl] + sy,
            cfg.canvas,
            wrap=True,
        )
        subj = render(
            images[rows[sl]],
            s_pose[0][sl],
            s_pose[1][sl],
            s_pose[2][sl] + sx,
            s_pose[3][sl] + sy,
            cfg.canvas,
            wrap=True,
        )
        out = bg * contrast[sl, None, None, None]
        for layer in (dist, subj):
            # Fashion-MNIST garments sit on black: their own brightness is their mask.
            alpha = np.clip(layer / 60.0, 0.0, 1.0)
            out = out * (1 - alpha) + layer * alpha
        out *= gain[sl, :, None, None].astype(np.float32)
        out += rng.standard_normal(out.shape, dtype=np.float32) * noise[sl, None, None, None]
        out *= valid[sl, :, None, None]
        frames[sl] = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    source_ids = rows.astype(np.int64) if ids is None else ids[rows]
    return Scenes(
        frames=frames,
        lengths=lengths,
        labels=labels,
        garments=garments[rows].astype(np.int64),
        cameras=cameras,
        sources=source_ids,
    )


@dataclass(frozen=True)
class SceneSizes:
    train: int = 12_000
    val: int = 1_500
    test: int = 3_000


def build_scene_splits(
    seed: int = 0, sizes: SceneSizes = SceneSizes(), cfg: SceneConfig = SceneConfig()
) -> dict[Split, Scenes]:
    """The three scene sets, cached under ``.cache/video`` (generation is deterministic)."""
    digest = hashlib.sha256(repr(("scenes-1", seed, sizes, cfg)).encode()).hexdigest()[:12]
    path = CACHE_DIR / f"scenes-{digest}.npz"
    fields = ("frames", "lengths", "labels", "garments", "cameras", "sources")
    if path.is_file():
        with np.load(path) as z:
            return {s: Scenes(*(z[f"{s}_{f}"] for f in fields)) for s in SPLITS}
    train_img = load_fashion_mnist("train")
    test_img = load_fashion_mnist("t10k")
    train_lab = load_fashion_labels("train")
    test_lab = load_fashion_labels("t10k")
    n_train = train_img.shape[0]
    order = np.random.default_rng(seed).permutation(n_train).astype(np.int64)
    n_val = n_train // 6
    pools: dict[Split, tuple[U8, I64, I64]] = {
        "train": (train_img[order[n_val:]], train_lab[order[n_val:]], order[n_val:]),
        "val": (train_img[order[:n_val]], train_lab[order[:n_val]], order[:n_val]),
        "test": (test_img, test_lab, n_train + np.arange(test_img.shape[0], dtype=np.int64)),
    }
    counts: dict[Split, int] = {"train": sizes.train, "val": sizes.val, "test": sizes.test}
    out: dict[Split, Scenes] = {}
    for i, split in enumerate(SPLITS):
        images, garments, ids = pools[split]
        videos = split_backgrounds(split)
        out[split] = make_scenes(
            images, garments, videos, counts[split], seed=seed * 1000 + 7 + i, cfg=cfg, ids=ids
        )
        log.info("built %d %s scenes", counts[split], split)
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    np.savez(path, **{f"{s}_{f}": getattr(c, f) for s, c in out.items() for f in fields})
    return out
