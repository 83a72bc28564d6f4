"""The shipped video_lstm step model: contract, manifest figures, parity over whole clips."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from statecast.contract.manifest import check_digest, load_manifest
from statecast.export.parity import PARITY_TOLERANCE
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
    assert [s.name for s in spec.states] == ["h", "c"]
    sess = ort.InferenceSession(str(ONNX_PATH), providers=["CPUExecutionProvider"])
    assert {i.name for i in sess.get_inputs()} == {"x", "state_in.h", "state_in.c"}
    assert {o.name for o in sess.get_outputs()} == {"probs", "state_out.h", "state_out.c"}


def test_manifest_entry_matches_the_file_and_reaches_the_target() -> None:
    entry = load_manifest()[NAME]
    assert check_digest(entry) == ONNX_PATH
    assert entry.kind == "video"
    assert entry.metrics["test_accuracy"] >= 0.95
    assert entry.metrics["test_accuracy"] > entry.metrics["baseline_accuracy"]
    assert entry.metrics["parity_max_abs_diff"] <= PARITY_TOLERANCE
    _, meta = load_model(CHECKPOINT_PATH)
    assert meta["test_accuracy"] == entry.metrics["test_accuracy"]
    assert len(meta["test_accuracy_by_frames"]) == ClipConfig().max_len


def test_parity_over_whole_clips_at_batch_1_and_64() -> None:
    assert parity_video_lstm() <= PARITY_TOLERANCE


def test_streams_in_one_batch_do_not_mix() -> None:
    """Row i of a batched run equals camera i run alone: the batch axis is independent."""
    model, _ = load_model()
    frames = parity_clips(ClipConfig(canvas=model.cfg.height), batch=5)
    sess = ort.InferenceSession(str(ONNX_PATH), providers=["CPUExecutionProvider"])
    hid = model.cfg.hidden

    def run(x: np.ndarray) -> np.ndarray:
        b = x.shape[0]
        h = c = np.zeros((1, b, hid), np.float32)
        out = []
        for t in range(x.shape[1]):
            probs, h, c = sess.run(None, {"x": x[:, t], "state_in.h": h, "state_in.c": c})
            out.append(probs)
        return np.stack(out, axis=1)

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
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    h = c = np.zeros((1, 3, 12), np.float32)
    for t, want in enumerate(reference_probs(model, frames)):
        probs, h, c = sess.run(None, {"x": frames[:, t], "state_in.h": h, "state_in.c": c})
        np.testing.assert_allclose(probs, want["probs"], atol=PARITY_TOLERANCE)
