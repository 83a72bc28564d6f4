"""The frame codec feeds a colour model RGB planes, channels first, and a grey model one
plane; any other channel count is refused when the route starts."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from statecast.contract.spec import ModelSpec, OutputSpec, TensorSpec
from statecast.worker.codecs.base import Decoded, RawRecord
from statecast.worker.codecs.frames import FrameCodec

pytestmark = pytest.mark.unit


def codec(channels: int) -> FrameCodec:
    spec = ModelSpec(
        name="cnn",
        version="test",
        kind="classify",
        inputs=(TensorSpec("x", "float32", (-1, channels, 4, 6)),),
        outputs=(OutputSpec("probs", "probability", ("a", "b")),),
        states=(),
        preprocess={"channels": channels, "height": 4, "width": 6},
    )
    return FrameCodec(spec, {}, Path("."))


def png(pixels: np.ndarray[tuple[int, ...], np.dtype[np.uint8]]) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


def decode_x(c: FrameCodec, value: bytes) -> np.ndarray[tuple[int, ...], np.dtype[np.float32]]:
    (out,) = c.decode([RawRecord("frames", 0, 0, 1, b"cam", value)])
    assert isinstance(out, Decoded)
    x = out.steps[0]["x"]
    assert x.dtype == np.float32
    return x


def test_rgb_model_gets_the_red_green_and_blue_planes_channels_first() -> None:
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, size=(4, 6, 3), dtype=np.uint8)
    x = decode_x(codec(3), png(rgb))
    assert x.shape == (3, 4, 6)
    np.testing.assert_array_equal(x, rgb.transpose(2, 0, 1).astype(np.float32))
    assert codec(3).stack([{"x": x}, {"x": x}])["x"].shape == (2, 3, 4, 6)


def test_grey_model_gets_one_plane_of_a_colour_frame() -> None:
    rgb = np.zeros((4, 6, 3), np.uint8)
    rgb[..., 0] = 255  # pure red: ITU-R 601 luma 76
    x = decode_x(codec(1), png(rgb))
    assert x.shape == (1, 4, 6)
    assert np.all(x == 76.0)


def test_other_channel_counts_are_refused_at_route_start() -> None:
    with pytest.raises(ValueError, match="1 \\(grey\\) or 3 \\(RGB\\)"):
        codec(4)
