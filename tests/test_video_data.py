"""Motion clips: the label is the motion the frames show; splits share no source image.

Runs on synthetic source images (the generator is the same for Fashion-MNIST), so the
tests need no data set installed.
"""

from __future__ import annotations

import gzip
import struct
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from statecast.models.video_data import (
    MOTIONS,
    ClipConfig,
    make_clips,
    read_idx,
    source_pools,
    synthetic_images,
    trajectories,
)

pytestmark = pytest.mark.unit

# No noise, full brightness: measured motion is then the drawn motion.
CLEAN = replace(ClipConfig(), noise=(0.0, 0.0), gain=(1.0, 1.0))


def _centroids(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per frame: intensity centroid x, y (relative to the canvas centre) and mass."""
    _, h, w = frames.shape
    f = frames.astype(np.float64)
    mass = f.sum(axis=(1, 2))
    ys, xs = np.mgrid[0:h, 0:w] - (h - 1) / 2.0
    cx = (f * xs).sum(axis=(1, 2)) / mass
    cy = (f * ys).sum(axis=(1, 2)) / mass
    return cx, cy, mass


def _spread(frames: np.ndarray) -> np.ndarray:
    """Per frame: the number of lit pixels (grows when zooming in)."""
    out: np.ndarray = (frames > 60).sum(axis=(1, 2))
    return out


def test_read_idx_round_trip(tmp_path: Path) -> None:
    data = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = tmp_path / "x-idx3-ubyte.gz"
    with gzip.open(path, "wb") as fh:
        fh.write(bytes([0, 0, 0x08, 3]) + struct.pack(">III", 2, 3, 4) + data.tobytes())
    np.testing.assert_array_equal(read_idx(path), data)


def test_clips_have_the_promised_shape_lengths_and_padding() -> None:
    images = synthetic_images(50, seed=0)
    clips = make_clips(images, 64, seed=1)
    cfg = ClipConfig()
    assert clips.frames.shape == (64, cfg.max_len, cfg.canvas, cfg.canvas)
    assert clips.frames.dtype == np.uint8
    assert clips.lengths.min() >= cfg.min_len
    assert clips.lengths.max() <= cfg.max_len
    assert set(clips.labels.tolist()) <= set(range(len(MOTIONS)))
    assert len(set(clips.labels.tolist())) == len(MOTIONS)  # 64 draws hit all 8 classes
    for i in range(64):
        n = clips.lengths[i]
        assert clips.frames[i, n:].max(initial=0) == 0  # padding is black
        assert (clips.frames[i, :n].reshape(n, -1).max(axis=1) > 50).all()  # object visible
    again = make_clips(images, 64, seed=1)
    np.testing.assert_array_equal(again.frames, clips.frames)  # fixed seed, same clips


def test_translation_labels_match_the_centroid_motion() -> None:
    images = synthetic_images(200, seed=2)
    clips = make_clips(images, 200, seed=3, cfg=CLEAN)
    checked = 0
    for i in range(len(clips)):
        motion = MOTIONS[clips.labels[i]]
        if motion not in ("left", "right", "up", "down"):
            continue
        cx, cy, _ = _centroids(clips.frames[i, : clips.lengths[i]])
        dx, dy = cx[-1] - cx[0], cy[-1] - cy[0]
        along, across = (dx, dy) if motion in ("left", "right") else (dy, dx)
        sign = -1 if motion in ("left", "up") else 1
        assert sign * along > 3.0, (motion, dx, dy)  # at least 0.7 px/frame over >= 7 steps
        assert abs(across) < abs(along) / 2
        checked += 1
    assert checked > 50


def test_zoom_labels_match_the_growth_of_the_object() -> None:
    images = synthetic_images(200, seed=4)
    clips = make_clips(images, 200, seed=5, cfg=CLEAN)
    checked = 0
    for i in range(len(clips)):
        motion = MOTIONS[clips.labels[i]]
        if motion not in ("zoom_in", "zoom_out"):
            continue
        lit = _spread(clips.frames[i, : clips.lengths[i]])
        ratio = lit[-1] / max(lit[0], 1)
        assert ratio > 1.2 if motion == "zoom_in" else ratio < 1 / 1.2, (motion, lit)
        checked += 1
    assert checked > 25


def test_rotation_labels_match_the_turning_direction() -> None:
    images = synthetic_images(300, seed=6)
    clips = make_clips(images, 300, seed=7, cfg=replace(CLEAN, pivot_jitter=0.0))
    checked = 0
    for i in range(len(clips)):
        motion = MOTIONS[clips.labels[i]]
        if motion not in ("rotate_cw", "rotate_ccw"):
            continue
        # The pivot is the canvas centre; the off-centre bar pulls the centroid off it, and
        # its polar angle (screen y points down, so clockwise is increasing) turns with the
        # image.
        cx, cy, _ = _centroids(clips.frames[i, : clips.lengths[i]])
        if np.hypot(cx, cy).min() < 0.3:
            continue  # centroid too close to the pivot to read an angle
        turns = np.angle(np.exp(1j * np.diff(np.arctan2(cy, cx))))
        assert (np.sign(turns.mean()) > 0) == (motion == "rotate_cw"), (motion, turns)
        checked += 1
    assert checked > 20


def test_poses_keep_the_unlabelled_parameters_still() -> None:
    rng = np.random.default_rng(0)
    labels = np.arange(len(MOTIONS) * 20, dtype=np.int64) % len(MOTIONS)
    lengths = rng.integers(8, 17, size=labels.shape[0]).astype(np.int64)
    scale, angle, tx, ty = trajectories(labels, lengths, ClipConfig(), rng)
    for i, label in enumerate(labels):
        n = lengths[i]
        motion = MOTIONS[label]
        moving = {
            "scale": motion.startswith("zoom"),
            "angle": motion.startswith("rotate"),
            "tx": motion in ("left", "right"),
            "ty": motion in ("up", "down"),
        }
        for name, arr in (("scale", scale), ("angle", angle), ("tx", tx), ("ty", ty)):
            steps = np.diff(arr[i, :n])
            if moving[name]:
                assert np.all(np.abs(steps) > 1e-3), (motion, name)
            else:
                np.testing.assert_allclose(steps, 0.0, atol=1e-12, err_msg=f"{motion} {name}")


def test_splits_share_no_source_image() -> None:
    train_images = synthetic_images(120, seed=8)
    test_images = synthetic_images(30, seed=9)
    pools = source_pools(train_images, test_images, seed=0)
    ids = {split: set(pool_ids.tolist()) for split, (_, pool_ids) in pools.items()}
    assert not ids["train"] & ids["val"]
    assert not ids["train"] & ids["test"]
    assert not ids["val"] & ids["test"]
    assert ids["train"] | ids["val"] == set(range(120))
    assert ids["test"] == set(range(120, 150))
    for split, (images, pool_ids) in pools.items():
        clips = make_clips(images, 40, seed=10, ids=pool_ids)
        assert set(clips.sources.tolist()) <= ids[split]
        # The id names the very image: its pixels are the source of the clip's frames.
        all_images = np.concatenate([train_images, test_images])
        np.testing.assert_array_equal(all_images[pool_ids], images)
