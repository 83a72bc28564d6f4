"""The frame route's caption option, without a broker: which codec a route gets, which records
are captioned, that captions come batched from the state copies, and refused options."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from statecast.contract.manifest import load_manifest
from statecast.contract.paths import PACKAGE_ROOT
from statecast.contract.spec import ModelSpec
from statecast.export.step_export import read_spec
from statecast.worker.captions import Captioner
from statecast.worker.codecs import codec_for
from statecast.worker.codecs.base import Finished, generates
from statecast.worker.codecs.frames import FrameCodec
from statecast.worker.codecs.video_captions import CaptioningFrameCodec

pytestmark = pytest.mark.unit

MODEL_DIR = PACKAGE_ROOT / "models" / "onnx"


@pytest.fixture(scope="module")
def spec() -> ModelSpec:
    return read_spec(load_manifest()["video_lstm"].onnx_path())


class NoRunner:
    """Captions never run the routed model's step: only the decoder's."""

    def run(self, feeds: object) -> dict[str, np.ndarray]:
        raise AssertionError("the video step must not run for captions")


def finished(spec: ModelSpec, count: float, seed: int) -> Finished:
    rng = np.random.default_rng(seed)
    states = {s.name: rng.normal(size=(s.layers, s.hidden)).astype(np.float32) for s in spec.states}
    states["h"] = np.tanh(states["h"])
    states["n"] = np.full((1, 1), count, np.float32)
    return Finished(f"frames/0/{seed}", {"probs": np.full(8, 0.125, np.float32)}, states)


def test_plain_route_gets_the_plain_frame_codec(spec: ModelSpec) -> None:
    codec = codec_for(spec, {"max_bytes": "1000"}, MODEL_DIR)
    assert type(codec) is FrameCodec
    assert not generates(codec)


def test_caption_every_n_frames_from_the_state_copies(spec: ModelSpec) -> None:
    codec = codec_for(spec, {"caption_every": "4", "max_bytes": "1000"}, MODEL_DIR)
    assert isinstance(codec, CaptioningFrameCodec)
    assert generates(codec)
    assert codec.max_bytes == 1000  # the frame options still apply
    counts = [1, 4, 7, 8, 12, 0, 3, float("nan"), -4, 1e30]  # the last three: not ours
    records = [finished(spec, n, seed) for seed, n in enumerate(counts)]
    before = [{k: v.copy() for k, v in f.states.items()} for f in records]
    out = codec.generate(records, NoRunner())
    assert [bool(o) for o in out] == [False, True, False, True, True] + [False] * 5
    due = [1, 3, 4]
    captioner = Captioner.load(load_manifest()["video_caption"].onnx_path())
    want = captioner.captions(np.stack([records[i].states["h"].reshape(-1) for i in due]))
    assert [out[i]["caption"] for i in due] == want
    assert [out[i]["frames_seen"] for i in due] == [4, 8, 12]
    for f, b in zip(records, before, strict=True):  # the copies were read, never written
        for k in b:
            np.testing.assert_array_equal(f.states[k], b[k])


def test_a_route_to_the_decoder_itself_is_refused() -> None:
    decoder = read_spec(load_manifest()["video_caption"].onnx_path())
    with pytest.raises(ValueError, match="caption_every"):
        codec_for(decoder, {}, MODEL_DIR)


def test_bad_caption_options_are_refused(spec: ModelSpec, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="caption_every"):
        codec_for(spec, {"caption_every": "0"}, MODEL_DIR)
    with pytest.raises(ValueError, match="not in the manifest"):
        codec_for(spec, {"caption_every": "4", "caption_model": "nope"}, MODEL_DIR)
    with pytest.raises(ValueError, match="not 'decoder'"):
        codec_for(spec, {"caption_every": "4", "caption_model": "video_lstm"}, MODEL_DIR)
    with pytest.raises(ValueError, match="unknown options"):
        codec_for(spec, {"caption_every": "4", "colour": "1"}, MODEL_DIR)
    # A decoder whose file does not match its manifest digest is refused.
    models = tmp_path / "models"
    (models / "onnx").mkdir(parents=True)
    shutil.copyfile(PACKAGE_ROOT / "models" / "manifest.json", models / "manifest.json")
    cap = load_manifest()["video_caption"]
    (tmp_path / cap.onnx).write_bytes(cap.onnx_path().read_bytes() + b"x")
    with pytest.raises(ValueError, match="sha256"):
        codec_for(spec, {"caption_every": "4"}, models / "onnx")
