"""The scene task and its baselines, on synthetic images and a synthetic background video
(the real ones are fetched and decoded only by training)."""

from __future__ import annotations

import numpy as np
import pytest

from statecast.models.video_baselines import (
    accuracy_by_frames,
    global_motion_pairs,
    moment_pairs,
    prefix_features,
)
from statecast.models.video_data import MOTIONS, synthetic_images
from statecast.models.video_scenes import (
    CAMERA_MOTIONS,
    SceneConfig,
    make_scenes,
    object_poses,
    view_backgrounds,
)

pytestmark = pytest.mark.unit


def texture_video(frames: int = 30, h: int = 64, w: int = 96, seed: int = 0) -> np.ndarray:
    """A smooth random texture drifting one pixel per frame: a stand-in background video."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(0, 255, size=(h // 8 + 2, (w + frames) // 8 + 2))
    big = np.kron(base, np.ones((8, 8)))[:h, : w + frames]
    return np.stack([big[:, f : f + w] for f in range(frames)]).astype(np.uint8)


def test_scenes_are_deterministic_padded_and_labelled() -> None:
    images = synthetic_images(40, seed=1)
    garments = np.arange(40, dtype=np.int64) % 10
    cfg = SceneConfig()
    a = make_scenes(images, garments, [texture_video()], 24, seed=3)
    b = make_scenes(images, garments, [texture_video()], 24, seed=3)
    np.testing.assert_array_equal(a.frames, b.frames)
    assert a.frames.shape == (24, cfg.max_len, cfg.canvas, cfg.canvas)
    assert ((a.lengths >= cfg.min_len) & (a.lengths <= cfg.max_len)).all()
    assert ((a.labels >= 0) & (a.labels < len(MOTIONS))).all()
    assert ((a.cameras >= 0) & (a.cameras < len(CAMERA_MOTIONS))).all()
    np.testing.assert_array_equal(a.garments, garments[a.sources])
    for i in range(24):
        assert a.frames[i, a.lengths[i] :].max(initial=0) == 0  # padding
        assert a.frames[i, : a.lengths[i]].reshape(a.lengths[i], -1).max(axis=1).min() > 0


def test_subject_moves_along_its_label_and_starts_anywhere() -> None:
    cfg = SceneConfig()
    rng = np.random.default_rng(0)
    n = 400
    labels = np.repeat(np.arange(len(MOTIONS)), n // len(MOTIONS)).astype(np.int64)
    lengths = np.full(n, cfg.max_len, dtype=np.int64)
    scale, angle, tx, ty = object_poses(labels, lengths, cfg, rng)
    names = np.array(MOTIONS)[labels]
    dx, dy = tx[:, -1] - tx[:, 0], ty[:, -1] - ty[:, 0]
    assert (dx[names == "left"] < -5).all()
    assert (dx[names == "right"] > 5).all()
    assert (dy[names == "up"] < -5).all()
    assert (dy[names == "down"] > 5).all()
    growth = scale[:, -1] / scale[:, 0]
    assert (growth[names == "zoom_in"] > 1.2).all()
    assert (growth[names == "zoom_out"] < 0.85).all()
    turn = angle[:, -1] - angle[:, 0]
    assert (turn[names == "rotate_cw"] > 0.5).all()
    assert (turn[names == "rotate_ccw"] < -0.5).all()
    # Start positions cover the whole (wrapped) canvas, whatever the motion.
    for name in ("left", "right"):
        start = tx[names == name, 0]
        assert start.min() < -cfg.canvas / 4
        assert start.max() > cfg.canvas / 4


def test_speed_varies_within_a_clip() -> None:
    cfg = SceneConfig()
    labels = np.zeros(50, dtype=np.int64)  # all "left"
    _, _, tx, _ = object_poses(labels, np.full(50, 16, np.int64), cfg, np.random.default_rng(1))
    steps = -np.diff(tx, axis=1)
    assert (steps > 0).all()
    assert np.median(steps.max(axis=1) / steps.min(axis=1)) > 1.3


def test_a_still_camera_shows_the_video_and_a_pan_slides_it() -> None:
    video = texture_video()
    n, t = 2, 6
    z = np.ones((n, t))
    roll = np.zeros((n, t))
    # Canvas pixel j sits at centre + (j - 7.5): these centres land samples on whole pixels.
    cx = np.full((n, t), 48.5)
    cy = np.full((n, t), 32.5)
    cx[1] += np.arange(t) * 2.0  # pan right by 2 px per frame
    first = np.zeros(n, dtype=np.int64)
    views = view_backgrounds(video, first, z, roll, cx, cy, canvas=16)
    np.testing.assert_allclose(views[0, 0], video[0, 25:41, 41:57], atol=1e-3)
    np.testing.assert_allclose(views[0, 4], video[4, 25:41, 41:57], atol=1e-3)
    # Frame k of the panned view is frame k of the video seen 2k px further right.
    np.testing.assert_allclose(views[1, 3, :, :-6], views[0, 3, :, 6:], atol=1e-3)


def test_phase_correlation_finds_a_shift_and_moments_follow_the_centroid() -> None:
    img = synthetic_images(1, seed=5, size=32)[0].astype(np.float32)
    frames = np.stack([np.roll(img, (k * 1, k * 2), axis=(0, 1)) for k in range(4)])[None]
    motion = global_motion_pairs(frames)
    np.testing.assert_allclose(motion[0, :, 0], 2.0, atol=0.3)  # dx
    np.testing.assert_allclose(motion[0, :, 1], 1.0, atol=0.3)  # dy
    canvas = np.zeros((1, 3, 32, 32), np.float32)
    for k in range(3):
        canvas[0, k, 10:14, 5 + 3 * k : 9 + 3 * k] = 200.0
    moments = moment_pairs(canvas)
    np.testing.assert_allclose(moments[0, :, 0], 3.0, atol=1e-6)
    np.testing.assert_allclose(moments[0, :, 1], 0.0, atol=1e-6)


def test_prefix_features_use_only_frames_seen() -> None:
    rng = np.random.default_rng(2)
    pairs = rng.normal(size=(3, 5, 2))
    feats = prefix_features(pairs, max_len=6)
    assert feats.shape == (3, 6, 6)
    assert (feats[:, 0] == 0).all()  # one frame: no pair yet
    np.testing.assert_allclose(feats[:, 3, :2], pairs[:, :3].mean(axis=1))
    np.testing.assert_allclose(feats[:, 3, 4:], pairs[:, :3].sum(axis=1))
    changed = pairs.copy()
    changed[:, 3:] += 100.0  # the future must not change what was known after 4 frames
    np.testing.assert_allclose(prefix_features(changed, 6)[:, :4], feats[:, :4])


def test_accuracy_by_frames_counts_only_clips_long_enough() -> None:
    pred = np.array([[0, 1, 1], [2, 2, 0]])
    final, by = accuracy_by_frames(pred, np.array([1, 2]), np.array([3, 2]))
    assert final == 1.0
    assert by == [0.5, 1.0, 1.0]
