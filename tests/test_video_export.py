"""The shipped video_lstm step model: contract, manifest figures vs both baselines, parity
over whole clips, the frame counter and previous-frame states."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch

from statecast.contract.manifest import check_digest, load_manifest
from statecast.contract.spec import ModelSpec
from statecast.export.parity import (
    PARITY_TOLERANCE,
    open_session,
    run_steps,
    sequence_steps,
    step_parity,
)
from statecast.export.step_export import export_step_model, read_spec
from statecast.export.video_export import (
    CHECKPOINT_PATH,
    NAME,
    ONNX_PATH,
    build_spec,
    load_model,
    parity_clips,
    parity_video_lstm,
    reference_probs,
)
from statecast.models.video import VideoConfig, VideoLSTM, VideoStep
from statecast.models.video_data import MOTIONS, ClipConfig
from statecast.models.video_scenes import SceneConfig

pytestmark = pytest.mark.unit


def test_shipped_file_carries_the_step_contract() -> None:
    spec = read_spec(ONNX_PATH)
    assert (spec.name, spec.kind) == (NAME, "video")
    (x,) = spec.inputs
    assert (x.name, x.dtype) == ("x", "float32")
    assert x.shape[0] == -1
    assert x.shape[1:] == (1, spec.preprocess["height"], spec.preprocess["width"])
    assert [o.name for o in spec.outputs] == ["probs"]
    assert spec.outputs[0].fields == MOTIONS
    assert [s.name for s in spec.states] == ["h", "c", "n", "prev"]
    sess = ort.InferenceSession(str(ONNX_PATH), providers=["CPUExecutionProvider"])
    names = ("h", "c", "n", "prev")
    assert {i.name for i in sess.get_inputs()} == {"x", *(f"state_in.{n}" for n in names)}
    assert {o.name for o in sess.get_outputs()} == {"probs", *(f"state_out.{n}" for n in names)}


def test_the_step_counts_frames_and_keeps_the_last_one() -> None:
    spec = read_spec(ONNX_PATH)
    sess, _ = open_session(ONNX_PATH)
    frames = parity_clips(ClipConfig(canvas=int(spec.preprocess["height"])), batch=2)[:, :5]
    outs = run_states(sess, spec, frames)
    for t, state in enumerate(outs):
        np.testing.assert_array_equal(state["n"], np.full((1, 2, 1), t + 1.0))
        np.testing.assert_array_equal(state["prev"], frames[:, t].reshape(1, 2, -1))


def test_manifest_entry_matches_the_file_and_reaches_the_target() -> None:
    entry = load_manifest()[NAME]
    assert check_digest(entry) == ONNX_PATH
    assert entry.kind == "video"
    # The bar: the CNN+LSTM beats both baselines on the same held-out clips.
    assert set(entry.metrics["baselines"]) == {"image_moments", "global_motion"}
    for baseline in entry.metrics["baselines"].values():
        assert entry.metrics["test_accuracy"] > baseline
    assert entry.metrics["baseline_accuracy"] == max(entry.metrics["baselines"].values())
    assert entry.metrics["parity_max_abs_diff"] <= PARITY_TOLERANCE
    _, meta = load_model(CHECKPOINT_PATH)
    assert meta["test_accuracy"] == entry.metrics["test_accuracy"]
    assert len(meta["test_accuracy_by_frames"]) == SceneConfig().max_len


def test_parity_over_whole_clips_at_batch_1_and_64() -> None:
    assert parity_video_lstm() <= PARITY_TOLERANCE


def test_streams_in_one_batch_do_not_mix() -> None:
    """Row i of a batched run equals camera i run alone: the batch axis is independent."""
    model, _ = load_model()
    frames = parity_clips(ClipConfig(canvas=model.cfg.height), batch=5)
    sess, spec = open_session(ONNX_PATH)

    def run(x: np.ndarray) -> np.ndarray:
        return np.stack([o["probs"] for o in run_steps(sess, spec, sequence_steps("x", x))], 1)

    together = run(frames)
    np.testing.assert_allclose(together.sum(axis=-1), 1.0, atol=1e-5)
    for i in range(frames.shape[0]):
        np.testing.assert_allclose(run(frames[i : i + 1])[0], together[i], atol=1e-5)


def test_export_of_a_fresh_model_meets_parity(tmp_path: Path) -> None:
    torch.manual_seed(3)
    model = VideoLSTM(VideoConfig(conv1=4, conv2=8, features=16, hidden=12)).eval()
    spec = build_spec(model)
    path = tmp_path / "video.onnx"
    export_step_model(VideoStep(model), spec, path)
    assert read_spec(path) == spec
    frames = parity_clips(ClipConfig(), batch=3)
    diff = step_parity(path, sequence_steps("x", frames), reference_probs(model, frames))
    assert diff <= PARITY_TOLERANCE


def run_states(sess: Any, spec: ModelSpec, frames: np.ndarray) -> list[dict[str, np.ndarray]]:
    """The state after every frame of ``frames`` ``[B, T, 1, H, W]`` from zeros."""
    b = frames.shape[0]
    state = {s.name: np.zeros((s.layers, b, s.hidden), np.float32) for s in spec.states}
    out = []
    for t in range(frames.shape[1]):
        feeds = {"x": frames[:, t], **{s.input_name: state[s.name] for s in spec.states}}
        nxt = sess.run([s.output_name for s in spec.states], feeds)
        state = {s.name: a for s, a in zip(spec.states, nxt, strict=True)}
        out.append(state)
    return out
