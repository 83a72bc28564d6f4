"""Input budgets of every codec: each budget refuses with its own reason, just past its limit,
and lets through what is just inside it; stream identity (key vs body) on every route."""

from __future__ import annotations

import io
import re
import tracemalloc
from pathlib import Path
from typing import Any

import orjson
import pytest
from PIL import Image

from statecast.worker.codecs.base import (
    DEFAULT_MAX_STREAM_BYTES,
    INT64_MAX,
    INT64_MIN,
    REASON_KEY_MISMATCH,
    REASON_NO_KEY,
    REASON_PROGRESSIVE,
    REASON_STREAM_TOO_LONG,
    REASON_TOO_LARGE,
    REASON_TOO_MANY_SCANS,
    REASON_TOO_MANY_TOKENS,
    REASON_TS_OUT_OF_RANGE,
    REASON_WRONG_SIZE,
    Decoded,
    RawRecord,
    Rejected,
    StreamIdentity,
)
from statecast.worker.codecs.forecast import ForecastCodec
from statecast.worker.codecs.frames import FrameCodec
from statecast.worker.codecs.jpeg import jpeg_layout
from statecast.worker.codecs.text import TextCodec, TextCodecError
from tests.fixtures.codec_specs import ONNX_DIR, frame_spec, sensor_spec, sentiment_spec

pytestmark = pytest.mark.unit


def forecast_codec(**options: str) -> ForecastCodec:
    return ForecastCodec(sensor_spec(), options, Path("."))


def text_codec(**options: str) -> TextCodec:
    return TextCodec(sentiment_spec(128, 20_000), options, ONNX_DIR)


def frame_codec(**options: str) -> FrameCodec:
    return FrameCodec(frame_spec(), options, Path("."))


def rec(value: bytes | None, key: bytes | None = None, offset: int = 0) -> RawRecord:
    return RawRecord("t", 0, offset, 1_700_000_000_000, key, value)


def sensor(stream: str = "s1", ts: Any = 5, **values: Any) -> bytes:
    vals = {"demand": 1.5, "temperature": 2, "workday": 0} | values
    return orjson.dumps({"stream": stream, "ts": ts, "values": vals})


def review(text: str, stream: str = "c1", ts: Any = 1_700_000_000_000) -> bytes:
    return orjson.dumps({"stream": stream, "ts": ts, "text": text})


def jpeg(size: int, progressive: bool = False, repeat_last_scan: int = 0) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (size, size), 128).save(buf, "JPEG", progressive=progressive)
    data = buf.getvalue()
    if repeat_last_scan:
        last = data[[m.start() for m in re.finditer(rb"\xff\xda", data)][-1] : -2]
        data = data[:-2] + last * repeat_last_scan + data[-2:]
    return data


def reason(out: Decoded | Rejected) -> str:
    assert isinstance(out, Rejected), out
    assert out.detail
    return out.reason


# -- stream identity: the key is the stream id on every route ----------------------------


@pytest.mark.parametrize(
    ("make", "body"),
    [(forecast_codec, sensor("s1")), (text_codec, review("nice film", stream="s1"))],
)
def test_json_routes_take_the_key_as_the_stream(make: Any, body: bytes) -> None:
    codec = make()
    ok, unkeyed, other = codec.decode([rec(body, b"s1"), rec(body, None), rec(body, b"s2")])
    assert isinstance(ok, Decoded)
    assert ok.stream == "s1"
    assert isinstance(unkeyed, Decoded)
    assert unkeyed.stream == "s1"
    assert reason(other) == REASON_KEY_MISMATCH


@pytest.mark.parametrize(
    ("make", "body"),
    [(forecast_codec, sensor("body-name")), (text_codec, review("nice", stream="body-name"))],
)
def test_stream_from_key_ignores_the_body_and_needs_a_key(make: Any, body: bytes) -> None:
    codec = make(stream_from="key")
    keyed, unkeyed = codec.decode([rec(body, b"cam-7"), rec(body, None)])
    assert isinstance(keyed, Decoded)
    assert keyed.stream == "cam-7"
    assert reason(unkeyed) == REASON_NO_KEY
    no_stream = orjson.loads(body)
    del no_stream["stream"]
    (out,) = codec.decode([rec(orjson.dumps(no_stream), b"cam-7")])
    assert isinstance(out, Decoded)
    assert out.stream == "cam-7"


@pytest.mark.parametrize("make", [forecast_codec, text_codec])
def test_stream_id_budget_counts_utf8_bytes(make: Any) -> None:
    codec = make()
    fits = "é" * (DEFAULT_MAX_STREAM_BYTES // 2)  # 2 bytes each: exactly the budget
    over = fits + "x"
    body = sensor if make is forecast_codec else (lambda s: review("ok", stream=s))
    inside, outside = codec.decode([rec(body(fits)), rec(body(over))])
    assert isinstance(inside, Decoded)
    assert reason(outside) == REASON_STREAM_TOO_LONG
    (short,) = make(max_stream_bytes="4").decode([rec(body("abcde"))])
    assert reason(short) == REASON_STREAM_TOO_LONG


def test_frame_key_budget_is_checked_before_decoding_the_key() -> None:
    png = io.BytesIO()
    Image.new("L", (32, 32)).save(png, "PNG")
    codec = frame_codec(max_stream_bytes="8")
    ok, long_key, no_key = codec.decode(
        [rec(png.getvalue(), b"cam-1"), rec(png.getvalue(), b"\xff" * 9), rec(png.getvalue())]
    )
    assert isinstance(ok, Decoded)
    assert ok.stream == "cam-1"
    assert reason(long_key) == REASON_STREAM_TOO_LONG
    assert reason(no_key) == REASON_NO_KEY


def test_bad_stream_options_are_refused() -> None:
    with pytest.raises(ValueError, match="stream_from"):
        StreamIdentity.from_options({"stream_from": "header"})
    with pytest.raises(ValueError, match="max_stream_bytes"):
        forecast_codec(max_stream_bytes="0")
    with pytest.raises(TextCodecError, match="max_tokens"):
        text_codec(max_tokens="lots")


# -- timestamps ----------------------------------------------------------------------------


@pytest.mark.parametrize("ts", [INT64_MAX + 1, 2**64 - 1])
def test_forecast_ts_outside_int64_ms_is_refused(ts: int) -> None:
    # orjson parses integers up to 2**64 - 1 as int (beyond that as float: wrong_type).
    (out,) = forecast_codec().decode([rec(sensor(ts=ts))])
    assert reason(out) == REASON_TS_OUT_OF_RANGE


def test_forecast_ts_at_the_int64_edges_is_accepted() -> None:
    outs = forecast_codec().decode([rec(sensor(ts=INT64_MAX)), rec(sensor(ts=INT64_MIN))])
    assert [o.ts_ms for o in outs if isinstance(o, Decoded)] == [INT64_MAX, INT64_MIN]


@pytest.mark.parametrize("ts", [1e300, -1e300, float(INT64_MAX) * 2])
def test_text_ts_outside_int64_ms_is_refused(ts: float) -> None:
    # {"ts": 1e300} once became a 997-digit int that crashed the prediction's JSON encoding.
    (out,) = text_codec().decode([rec(review("hi", ts=ts))])
    assert reason(out) == REASON_TS_OUT_OF_RANGE


# -- bytes before parsing ------------------------------------------------------------------


def test_every_route_refuses_bytes_over_its_budget_before_parsing() -> None:
    # Not JSON at all: a parser that ran first would say not_json.
    blob = b"x" * 5000
    assert reason(forecast_codec().decode([rec(blob)])[0]) == REASON_TOO_LARGE
    assert reason(text_codec(max_bytes="4096").decode([rec(blob)])[0]) == REASON_TOO_LARGE
    assert reason(frame_codec(max_bytes="4096").decode([rec(blob, b"c")])[0]) == REASON_TOO_LARGE


def test_text_default_byte_budget_holds_a_maximal_plain_text() -> None:
    codec = text_codec()
    (out,) = codec.decode([rec(review("word " * 3999))])
    assert isinstance(out, Decoded)


# -- text: characters after normalisation, tokens ------------------------------------------


def test_text_length_is_counted_after_normalisation() -> None:
    # U+FDFA is one character that NFKC turns into 18: 1,200 of them are 21,600 characters.
    codec = text_codec()
    ligature = "\ufdfa" * 1200
    (out,) = codec.decode([rec(review(ligature))])
    assert reason(out) == REASON_TOO_LARGE
    assert "normalised" in out.detail  # type: ignore[union-attr]
    # 19,800 characters fit the character budget; their ~36,000 tokens do not fit the
    # default token budget, which is the next line of defence.
    (fits,) = text_codec(max_tokens="100000").decode([rec(review("\ufdfa" * 1100))])
    assert isinstance(fits, Decoded)
    (tokens,) = codec.decode([rec(review("\ufdfa" * 1100))])
    assert reason(tokens) == REASON_TOO_MANY_TOKENS


def test_text_token_budget_bounds_the_waves_of_one_message() -> None:
    codec = text_codec(max_tokens="256")
    inside, outside = codec.decode(
        [rec(review("good " * 200)), rec(review("good " * 300))]  # ~1 token per word
    )
    assert isinstance(inside, Decoded)
    assert len(inside.steps) <= 256 // 128
    assert reason(outside) == REASON_TOO_MANY_TOKENS


# -- frames: scans, progressive, pixels before decoding ------------------------------------


def test_jpeg_layout_reads_size_progressive_and_scans_from_markers() -> None:
    base = jpeg_layout(jpeg(64))
    prog = jpeg_layout(jpeg(64, progressive=True))
    bomb = jpeg_layout(jpeg(64, progressive=True, repeat_last_scan=500))
    assert base is not None
    assert (base.width, base.height, base.progressive) == (64, 64, False)
    assert base.scans == 1
    assert prog is not None
    assert prog.progressive
    assert 1 < prog.scans <= 16
    assert bomb is not None
    assert bomb.scans == prog.scans + 500
    assert jpeg_layout(b"\x89PNG\r\n") is None
    assert jpeg_layout(b"\xff\xd8\x00garbage") is None


def test_progressive_jpeg_with_too_many_scans_is_refused_before_decoding() -> None:
    codec = frame_codec()
    ok, bomb = codec.decode(
        [
            rec(jpeg(64, progressive=True), b"cam"),
            rec(jpeg(2048, progressive=True, repeat_last_scan=1000), b"cam"),
        ]
    )
    assert isinstance(ok, Decoded)
    assert reason(bomb) == REASON_TOO_MANY_SCANS


def test_a_route_may_refuse_progressive_jpeg_altogether() -> None:
    codec = frame_codec(progressive="0")
    base, prog = codec.decode([rec(jpeg(64), b"cam"), rec(jpeg(64, progressive=True), b"cam")])
    assert isinstance(base, Decoded)
    assert reason(prog) == REASON_PROGRESSIVE


def test_jpeg_pixels_are_read_from_its_frame_header() -> None:
    codec = frame_codec(max_pixels=str(1000 * 1000))
    (out,) = codec.decode([rec(jpeg(1001), b"cam")])
    assert reason(out) == REASON_WRONG_SIZE


# -- memory: parsed objects do not outlive their record ------------------------------------


def test_forecast_batch_does_not_hold_every_parsed_event() -> None:
    # 4 KB of "[[],[],...]" parses into ~1,365 lists (~80 KB); 500 of them held at once
    # would be ~40 MB. One at a time, the peak stays near one record's worth.
    blob = b"[" + b"[]," * 1364 + b"[]]"
    codec = forecast_codec()
    tracemalloc.start()
    try:
        outs = codec.decode([rec(blob, offset=i) for i in range(500)])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert all(isinstance(o, Rejected) for o in outs)
    assert peak < 5 * 1024 * 1024, peak
