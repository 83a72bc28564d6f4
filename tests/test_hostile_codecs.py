"""Property: no byte string as a record's value or key makes any codec raise.

Every codec gets arbitrary bytes, near-valid JSON events with hostile field values, and
mutated (truncated, bit-flipped, spliced) PNG and JPEG files, as value and as key; each
record must come back as exactly one Decoded or Rejected, in order.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from statecast.contract.spec import ModelSpec, OutputSpec, StateSpec, TensorSpec
from statecast.worker.codecs.base import Codec, Decoded, RawRecord, Rejected
from statecast.worker.codecs.forecast import ForecastCodec
from statecast.worker.codecs.frames import FrameCodec
from statecast.worker.codecs.generate import GenerateCodec
from statecast.worker.codecs.text import TextCodec
from tests.fixtures.codec_specs import (
    ONNX_DIR,
    SENSOR_FEATURES,
    frame_spec,
    sensor_spec,
    sentiment_spec,
)

pytestmark = pytest.mark.unit


def _forecast(options: dict[str, str]) -> Codec:
    return ForecastCodec(sensor_spec(), options, Path("."))


def _text(options: dict[str, str]) -> Codec:
    return TextCodec(sentiment_spec(16, 2000), options, ONNX_DIR)


def _frames(options: dict[str, str]) -> Codec:
    return FrameCodec(frame_spec(), options, Path("."))


def _generate(options: dict[str, str]) -> Codec:
    spec = ModelSpec(
        name="char_lstm",
        version="test",
        kind="generate",
        inputs=(TensorSpec("x", "int64", (-1, -1)), TensorSpec("lengths", "int64", (-1,))),
        outputs=(OutputSpec("next_byte", "probability"),),
        states=(StateSpec("h", 1, 4),),
        preprocess={"chunk_bytes": 16, "vocab": 256},
    )
    return GenerateCodec(spec, options, Path("."))


CODECS: dict[str, Codec] = {
    "forecast": _forecast({}),
    "forecast-key": _forecast({"stream_from": "key", "max_stream_bytes": "16"}),
    "text-message": _text({"mode": "message", "max_tokens": "64"}),
    "text-conversation": _text({"mode": "conversation", "stream_from": "key"}),
    "frames": _frames({}),
    "frames-strict": _frames({"resize": "0", "progressive": "0", "max_scans": "2"}),
    "generate": _generate({"max_text_bytes": "64"}),
    "generate-key": _generate({"stream_from": "key", "max_stream_bytes": "8"}),
}


def _image(fmt: str, size: int, **save: Any) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (size, size), 90).save(buf, fmt, **save)
    return buf.getvalue()


SEEDS = [
    _image("PNG", 32),
    _image("PNG", 40, optimize=True),
    _image("JPEG", 32),
    _image("JPEG", 48, progressive=True),
]

hostile_numbers = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([1e300, -1e300, 2**63, 2**64 - 1, -(2**63) - 1, 0, -1]),
)
json_values = st.recursive(
    st.none() | st.booleans() | hostile_numbers | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)


@st.composite
def json_events(draw: st.DrawFn) -> bytes:
    event: dict[str, Any] = {}
    if draw(st.booleans()):
        event["stream"] = draw(st.text(max_size=300) | json_values)
    if draw(st.booleans()):
        event["ts"] = draw(hostile_numbers | json_values)
    if draw(st.booleans()):
        event["text"] = draw(
            st.text(max_size=200) | st.just("\ufdfa" * 150) | json_values  # NFKC x18
        )
    if draw(st.booleans()):
        keys = draw(st.lists(st.sampled_from([*SENSOR_FEATURES, "extra"]), max_size=4, unique=True))
        event["values"] = {k: draw(hostile_numbers | json_values) for k in keys}
    try:
        return orjson.dumps(event)
    except (TypeError, orjson.JSONEncodeError):
        return repr(event).encode()  # not JSON: still a byte string to survive


@st.composite
def mutated_images(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 6))):
        op = draw(st.sampled_from(["flip", "truncate", "splice", "repeat"]))
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        if op == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "truncate":
            del data[at:]
        elif op == "splice":
            data[at:at] = draw(st.binary(max_size=16))
        else:
            end = min(len(data), at + draw(st.integers(1, 64)))
            data[at:at] = data[at:end] * draw(st.integers(1, 20))
    return bytes(data)


values = st.one_of(st.none(), st.binary(max_size=512), json_events(), mutated_images())
keys = st.one_of(
    st.none(),
    st.binary(max_size=300),
    st.text(max_size=20).map(str.encode),
    st.sampled_from([b"s1", b"", b"\xff\xfe", "é".encode() * 200]),
)
batches = st.lists(st.tuples(keys, values), min_size=1, max_size=6)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(batch=batches, route=st.sampled_from(sorted(CODECS)))
def test_no_byte_string_makes_a_codec_raise(
    batch: list[tuple[bytes | None, bytes | None]], route: str
) -> None:
    codec = CODECS[route]
    records = [
        RawRecord("t", i % 3, i, 1_700_000_000_000, key, value)
        for i, (key, value) in enumerate(batch)
    ]
    out = codec.decode(records)
    assert len(out) == len(records)
    for res in out:
        assert isinstance(res, Decoded | Rejected)
        if isinstance(res, Rejected):
            assert res.reason
            assert res.reason == res.reason.lower()
        else:
            # A decoded record is one orjson can carry in a prediction.
            orjson.dumps({"stream": res.stream, "ts": res.ts_ms})
            assert len(res.stream.encode("utf-8", "surrogatepass")) <= 256
            assert res.steps
