"""Fashion-MNIST frames and simple single-object motion clips.

The shared pieces of the video models: :data:`MOTIONS` (the 8 classes), the idx reader for
the Debian ``dataset-fashion-mnist`` files, :func:`render` (an image at a pose on a canvas,
optionally wrapping around), and :func:`make_clips`: one image moving along one motion on a
black canvas. Those simple clips serve parity checks and worker tests (with
:func:`synthetic_images`, no data set needed); ``video_lstm`` version 1 was trained on
them. Version 2 trains on the harder scenes of :mod:`statecast.models.video_scenes`.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")

MOTIONS: tuple[str, ...] = (
    "left",
    "right",
    "up",
    "down",
    "zoom_in",
    "zoom_out",
    "rotate_cw",
    "rotate_ccw",
)

U8 = npt.NDArray[np.uint8]
F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
Split = Literal["train", "val", "test"]
SPLITS: tuple[Split, ...] = ("train", "val", "test")


@dataclass(frozen=True)
class ClipConfig:
    """How clips are drawn. Speeds are per frame; sizes in canvas pixels."""

    canvas: int = 32
    min_len: int = 8
    max_len: int = 16
    # Translation clips: object scale, speed in px/frame.
    move_scale: tuple[float, float] = (0.55, 0.75)
    move_speed: tuple[float, float] = (0.7, 1.6)
    # Zoom clips: scale range the object stays in, and per-frame growth factor.
    zoom_scale: tuple[float, float] = (0.45, 1.1)
    zoom_rate: tuple[float, float] = (1.03, 1.08)
    # Rotation clips: degrees per frame.
    rotate_speed: tuple[float, float] = (6.0, 14.0)
    rotate_scale: tuple[float, float] = (0.7, 0.95)
    # Zoom and rotation clips: the object's centre sits up to this far (px) off the canvas
    # centre, on each axis.
    pivot_jitter: float = 2.0
    # Per clip: brightness gain and the std of Gaussian pixel noise (0-255 units).
    gain: tuple[float, float] = (0.7, 1.0)
    noise: tuple[float, float] = (0.0, 12.0)


@dataclass(frozen=True)
class Clips:
    """Clips padded to ``max_len`` frames; frames past ``lengths[i]`` are zeros."""

    frames: U8  # [N, T, H, W]
    lengths: I64  # [N]
    labels: I64  # [N], index into MOTIONS
    sources: I64  # [N], index of the source image within its split's image pool

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def read_idx(path: Path) -> U8:
    """An idx file (the MNIST container format), gzip-compressed, as a uint8 array."""
    with gzip.open(path, "rb") as fh:
        data = fh.read()
    if data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte idx file")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    return body.reshape(dims)


def load_fashion_mnist(part: Literal["train", "t10k"], root: Path = FASHION_DIR) -> U8:
    """The 28x28 images of one Fashion-MNIST part (60,000 train or 10,000 t10k)."""
    path = root / f"{part}-images-idx3-ubyte.gz"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: install the Debian package dataset-fashion-mnist"
        )
    return read_idx(path)


def _uniform(rng: np.random.Generator, lo_hi: tuple[float, float], n: int) -> F64:
    return rng.uniform(lo_hi[0], lo_hi[1], size=n)


def trajectories(
    labels: I64, lengths: I64, cfg: ClipConfig, rng: np.random.Generator
) -> tuple[F64, F64, F64, F64]:
    """Per-frame pose of every clip: scale, angle (rad), shift x and y (px, +y is down).

    Each array is ``[N, max_len]``; a clip's pose past its length repeats nothing useful.
    Start poses are drawn so the whole path fits the canvas, which makes where the object
    is in one frame only weakly informative of where it is going.
    """
    n, t_max = labels.shape[0], cfg.max_len
    k = np.arange(t_max, dtype=np.float64)[None, :]  # frame index
    span = (lengths - 1).astype(np.float64)[:, None]
    half = cfg.canvas / 2.0
    scale = np.empty((n, t_max))
    angle = np.empty((n, t_max))
    tx = np.empty((n, t_max))
    ty = np.empty((n, t_max))
    names = np.array(MOTIONS)[labels]

    # Translations: left/right move x, up/down move y, at a constant speed.
    move = np.isin(names, ("left", "right", "up", "down"))
    s = _uniform(rng, cfg.move_scale, n)
    reach = half - 11.0 * s  # the centre stays where most of the object is visible
    v_max = np.minimum(cfg.move_speed[1], 2 * reach / span[:, 0])
    v = rng.uniform(cfg.move_speed[0], np.maximum(v_max, cfg.move_speed[0]))
    travel = v * span[:, 0]
    start = rng.uniform(-reach, np.maximum(reach - travel, -reach))
    sign = np.where(np.isin(names, ("left", "up")), -1.0, 1.0)
    # Moving left starts right of centre: mirror the start so the path stays inside.
    along = sign[:, None] * (start[:, None] + v[:, None] * k)
    across = rng.uniform(-reach / 2, reach / 2)[:, None] + 0 * k
    horizontal = np.isin(names, ("left", "right"))[:, None]
    tx_move = np.where(horizontal, along, across)
    ty_move = np.where(horizontal, across, along)
    tilt = np.deg2rad(rng.uniform(-15, 15, size=n))[:, None] + 0 * k
    scale[move] = (s[:, None] + 0 * k)[move]
    angle[move] = tilt[move]
    tx[move] = tx_move[move]
    ty[move] = ty_move[move]

    # Zooms: geometric growth (zoom_in) or shrink (zoom_out) within the scale range.
    zoom = np.isin(names, ("zoom_in", "zoom_out"))
    lo, hi = cfg.zoom_scale
    g_max = np.exp(np.log(hi / lo) / span[:, 0])
    g = rng.uniform(cfg.zoom_rate[0], np.minimum(cfg.zoom_rate[1], g_max))
    grow = np.log(g)[:, None] * k
    s0 = np.exp(rng.uniform(np.log(lo), np.log(hi) - np.log(g) * span[:, 0]))
    zin = s0[:, None] * np.exp(grow)
    zout = s0[:, None] * np.exp(np.log(g)[:, None] * span - grow)
    scale[zoom] = np.where((names == "zoom_in")[:, None], zin, zout)[zoom]
    angle[zoom] = tilt[zoom]
    offset = rng.uniform(-cfg.pivot_jitter, cfg.pivot_jitter, size=(n, 2))
    tx[zoom] = (offset[:, :1] + 0 * k)[zoom]
    ty[zoom] = (offset[:, 1:] + 0 * k)[zoom]

    # Rotations about the centre; screen y points down, so clockwise is +angle.
    rot = np.isin(names, ("rotate_cw", "rotate_ccw"))
    w: F64 = np.deg2rad(_uniform(rng, cfg.rotate_speed, n))
    turn: F64 = np.where(names == "rotate_cw", 1.0, -1.0)
    theta0 = _uniform(rng, (0.0, 2 * np.pi), n)
    angle[rot] = (theta0[:, None] + (turn * w)[:, None] * k)[rot]
    scale[rot] = (_uniform(rng, cfg.rotate_scale, n)[:, None] + 0 * k)[rot]
    tx[rot] = (offset[:, :1] + 0 * k)[rot]
    ty[rot] = (offset[:, 1:] + 0 * k)[rot]
    return scale, angle, tx, ty


def render(
    images: U8, scale: F64, angle: F64, tx: F64, ty: F64, canvas: int, wrap: bool = False
) -> F32:
    """Draw each image at each pose on a ``canvas`` square: bilinear, black background.

    ``images`` is ``[N, h, w]``; poses are ``[N, T]``; the result is ``[N, T, canvas, canvas]``
    in 0-255. The image is centred on the canvas at scale 1 before the pose is applied.
    With ``wrap`` the canvas is a torus: a part pushed off one edge comes back at the
    opposite one, so any shift is valid and position alone says nothing about motion.
    """
    n, h, w = images.shape
    centre = (canvas - 1) / 2.0
    yy, xx = np.meshgrid(np.arange(canvas) - centre, np.arange(canvas) - centre, indexing="ij")
    # Inverse map: canvas point p -> image point R(-angle) (p - shift) / scale.
    px = xx[None, None] - tx[..., None, None]
    py = yy[None, None] - ty[..., None, None]
    if wrap:
        px = np.mod(px + canvas / 2.0, canvas) - canvas / 2.0
        py = np.mod(py + canvas / 2.0, canvas) - canvas / 2.0
    cos, sin = np.cos(angle)[..., None, None], np.sin(angle)[..., None, None]
    sx = (cos * px + sin * py) / scale[..., None, None] + (w - 1) / 2.0
    sy = (-sin * px + cos * py) / scale[..., None, None] + (h - 1) / 2.0
    # Clip to the one-pixel black border of a padded copy: samples outside read zero.
    sx = np.clip(sx, -1.0, w)
    sy = np.clip(sy, -1.0, h)
    x0 = np.floor(sx)
    y0 = np.floor(sy)
    fx = (sx - x0).astype(np.float32)
    fy = (sy - y0).astype(np.float32)
    stride = w + 3  # padded row length: one black column left, two right
    padded = np.zeros((n, h + 3, stride), dtype=np.float32)
    padded[:, 1 : h + 1, 1 : w + 1] = images
    base = np.arange(n, dtype=np.int64)[:, None, None, None] * ((h + 3) * stride)
    flat = base + (y0.astype(np.int64) + 1) * stride + (x0.astype(np.int64) + 1)
    pix = padded.reshape(-1)
    top = pix[flat] * (1 - fx) + pix[flat + 1] * fx
    bottom = pix[flat + stride] * (1 - fx) + pix[flat + stride + 1] * fx
    out: F32 = (top * (1 - fy) + bottom * fy).astype(np.float32)
    return out


def make_clips(
    images: U8,
    n_clips: int,
    seed: int,
    cfg: ClipConfig = ClipConfig(),
    ids: I64 | None = None,
    chunk: int = 512,
) -> Clips:
    """``n_clips`` labelled clips, each from a distinct image of ``images`` when it can.

    ``Clips.sources`` holds ``ids[i]`` of the image each clip shows (its row in ``images``
    when ``ids`` is not given).
    """
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(MOTIONS), size=n_clips).astype(np.int64)
    lengths = rng.integers(cfg.min_len, cfg.max_len + 1, size=n_clips).astype(np.int64)
    replace = n_clips > images.shape[0]
    rows = rng.choice(images.shape[0], size=n_clips, replace=replace).astype(np.int64)
    scale, angle, tx, ty = trajectories(labels, lengths, cfg, rng)
    gain = _uniform(rng, cfg.gain, n_clips).astype(np.float32)
    noise = _uniform(rng, cfg.noise, n_clips).astype(np.float32)
    frames = np.zeros((n_clips, cfg.max_len, cfg.canvas, cfg.canvas), dtype=np.uint8)
    for lo in range(0, n_clips, chunk):
        sl = slice(lo, min(lo + chunk, n_clips))
        drawn = render(images[rows[sl]], scale[sl], angle[sl], tx[sl], ty[sl], cfg.canvas)
        drawn *= gain[sl, None, None, None]
        drawn += rng.standard_normal(drawn.shape, dtype=np.float32) * noise[sl, None, None, None]
        valid = np.arange(cfg.max_len)[None, :] < lengths[sl, None]
        drawn *= valid[:, :, None, None]
        frames[sl] = np.clip(np.rint(drawn), 0, 255).astype(np.uint8)
    sources = rows if ids is None else ids[rows]
    return Clips(frames=frames, lengths=lengths, labels=labels, sources=sources)


def source_pools(train_images: U8, test_images: U8, seed: int) -> dict[Split, tuple[U8, I64]]:
    """Disjoint image pools with global ids (train image i -> i, test image j -> n_train + j).

    Validation takes a random sixth of the training images, training the rest; the test
    split uses only the test images, so no image is seen by two splits.
    """
    n_train = train_images.shape[0]
    order = np.random.default_rng(seed).permutation(n_train).astype(np.int64)
    n_val = n_train // 6
    test_ids = n_train + np.arange(test_images.shape[0], dtype=np.int64)
    return {
        "train": (train_images[order[n_val:]], order[n_val:]),
        "val": (train_images[order[:n_val]], order[:n_val]),
        "test": (test_images, test_ids),
    }


def synthetic_images(n: int, seed: int, size: int = 28) -> U8:
    """Stand-in source images for tests and parity checks that must run without the data
    set: a bright textured ellipse and an off-centre bar, so motion and rotation show."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) - (size - 1) / 2.0
    a = rng.uniform(5, 11, size=(n, 1, 1))
    b = rng.uniform(3, 9, size=(n, 1, 1))
    ellipse = (xx / a) ** 2 + (yy / b) ** 2 <= 1.0
    bar_y = rng.integers(-9, 0, size=(n, 1, 1))
    bar = (np.abs(yy - bar_y) <= 1) & (np.abs(xx) <= rng.uniform(4, 12, size=(n, 1, 1)))
    texture = rng.uniform(120, 255, size=(n, size, size))
    img = np.where(ellipse | bar, texture, 0.0)
    return img.astype(np.uint8)
