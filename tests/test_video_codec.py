"""FrameCodec: PNG/JPEG frames keyed by camera -> grey pixel steps; bad frames -> reasons."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from statecast.contract.spec import ModelSpec
from statecast.export.video_export import build_spec
from statecast.models.video import VideoConfig, VideoLSTM
from statecast.worker.codecs import codec_for
from statecast.worker.codecs.base import (
    REASON_EMPTY,
    REASON_SCHEMA,
    REASON_TOO_LARGE,
    REASON_UNDECODABLE,
    REASON_WRONG_SIZE,
    Decoded,
    RawRecord,
    Rejected,
)
from statecast.worker.codecs.frames import REASON_NO_KEY, FrameCodec

pytestmark = pytest.mark.unit

H = W = 32


@pytest.fixture(scope="module")
def spec() -> ModelSpec:
    return build_spec(VideoLSTM(VideoConfig(height=H, width=W)))


def encode(pixels: np.ndarray, fmt: str = "PNG", mode: str | None = None) -> bytes:
    img = Image.fromarray(pixels) if mode is None else Image.fromarray(pixels).convert(mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def rec(value: bytes | None, key: bytes | None = b"cam-1", offset: int = 0) -> RawRecord:
    return RawRecord("frames", 0, offset, 1_700_000_000_000 + offset, key, value)


def gradient(h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    out: np.ndarray = ((xx * 255 // max(w - 1, 1) + yy) % 256).astype(np.uint8)
    return out


def test_png_frame_of_model_size_is_passed_through_exactly(spec: ModelSpec) -> None:
    pixels = gradient(H, W)
    codec = FrameCodec(spec, {}, Path("."))
    (out,) = codec.decode([rec(encode(pixels), key=b"lobby", offset=7)])
    assert isinstance(out, Decoded)
    assert out.stream == "lobby"
    assert out.ts_ms == 1_700_000_000_007
    x = out.steps[0]["x"]
    assert x.dtype == np.float32
    assert x.shape == (1, H, W)
    np.testing.assert_array_equal(x[0], pixels.astype(np.float32))


def test_colour_jpeg_is_greyed_and_resized(spec: ModelSpec) -> None:
    rng = np.random.default_rng(0)
    big = np.zeros((272, 640, 3), np.uint8)
    big[:, 320:] = (200, 200, 200)  # right half bright, left half dark
    big += rng.integers(0, 20, size=big.shape, dtype=np.uint8)
    codec = FrameCodec(spec, {}, Path("."))
    (out,) = codec.decode([rec(encode(big, "JPEG"))])
    assert isinstance(out, Decoded)
    x = out.steps[0]["x"][0]
    assert x.shape == (H, W)
    assert x[:, : W // 2 - 2].mean() < 40
    assert x[:, W // 2 + 2 :].mean() > 170


def test_rgb_png_is_converted_to_grey(spec: ModelSpec) -> None:
    grey = gradient(H, W)
    codec = FrameCodec(spec, {}, Path("."))
    (out,) = codec.decode([rec(encode(np.stack([grey] * 3, axis=-1)))])
    assert isinstance(out, Decoded)
    np.testing.assert_allclose(out.steps[0]["x"][0], grey, atol=1)


def _reason(codec: FrameCodec, record: RawRecord) -> str:
    (out,) = codec.decode([record])
    assert isinstance(out, Rejected), out
    return out.reason


def test_bad_frames_are_rejected_with_their_reason(spec: ModelSpec) -> None:
    codec = FrameCodec(spec, {"max_bytes": "5000", "max_pixels": "10000"}, Path("."))
    good = encode(gradient(H, W))
    noise = np.random.default_rng(1).integers(0, 256, size=(80, 80), dtype=np.uint8)
    gif = encode(gradient(H, W), "GIF")
    assert _reason(codec, rec(good, key=None)) == REASON_NO_KEY
    assert _reason(codec, rec(good, key=b"")) == REASON_NO_KEY
    assert _reason(codec, rec(good, key=b"\xff\xfe")) == REASON_SCHEMA
    assert _reason(codec, rec(None)) == REASON_EMPTY
    assert _reason(codec, rec(b"")) == REASON_EMPTY
    assert _reason(codec, rec(encode(noise))) == REASON_TOO_LARGE
    assert _reason(codec, rec(b"definitely not an image")) == REASON_UNDECODABLE
    assert _reason(codec, rec(gif)) == REASON_UNDECODABLE
    assert _reason(codec, rec(good[: len(good) // 2])) == REASON_UNDECODABLE
    assert _reason(codec, rec(encode(np.zeros((200, 60), np.uint8)))) == REASON_WRONG_SIZE


def test_small_file_claiming_a_huge_image_is_refused_before_decoding(spec: ModelSpec) -> None:
    # A flat 4000x4000 PNG compresses to a few KB: the header check stops it.
    flat = encode(np.zeros((4000, 4000), np.uint8))
    assert len(flat) < 100_000
    assert _reason(FrameCodec(spec, {}, Path(".")), rec(flat)) == REASON_WRONG_SIZE


def test_without_resize_only_the_model_size_is_accepted(spec: ModelSpec) -> None:
    codec = FrameCodec(spec, {"resize": "0"}, Path("."))
    assert _reason(codec, rec(encode(gradient(28, 28)))) == REASON_WRONG_SIZE
    (ok,) = codec.decode([rec(encode(gradient(H, W)))])
    assert isinstance(ok, Decoded)


def test_batch_keeps_record_order_and_mixes_rejects(spec: ModelSpec) -> None:
    codec = codec_for(spec, {}, Path("."))
    frames = [gradient(H, W) // (i + 1) for i in range(5)]
    records = [rec(encode(f), key=f"cam-{i}".encode(), offset=i) for i, f in enumerate(frames)]
    records.insert(2, rec(b"junk", offset=99))
    out = codec.decode(records)
    assert [type(o).__name__ for o in out] == ["Decoded"] * 2 + ["Rejected"] + ["Decoded"] * 3
    decoded = [o for o in out if isinstance(o, Decoded)]
    assert [d.stream for d in decoded] == [f"cam-{i}" for i in range(5)]
    batch = codec.stack([d.steps[0] for d in decoded])
    assert batch["x"].shape == (5, 1, H, W)
    np.testing.assert_array_equal(batch["x"][3, 0], frames[3].astype(np.float32))


def test_predictions_name_the_best_class(spec: ModelSpec) -> None:
    codec = FrameCodec(spec, {}, Path("."))
    classes = spec.outputs[0].fields
    probs = np.full((2, len(classes)), 0.01, np.float32)
    probs[0, 4] = 0.93
    probs[1, 1] = 0.93
    preds = codec.predictions({"probs": probs})
    assert [p["class"] for p in preds] == [classes[4], classes[1]]
    assert preds[0]["confidence"] == pytest.approx(0.93)
    assert set(preds[1]["probs"]) == set(classes)


def test_unknown_option_is_an_error(spec: ModelSpec) -> None:
    with pytest.raises(ValueError, match="unknown options"):
        FrameCodec(spec, {"max_byte": "10"}, Path("."))
