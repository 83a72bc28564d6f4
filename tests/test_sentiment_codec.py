"""TextCodec: decoding text events into token chunks, rejects, stacking, predictions."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import orjson
import pytest

from statecast.contract.paths import PACKAGE_ROOT
from statecast.contract.spec import ModelSpec
from statecast.models.sentiment_data import TOKENIZER_PATH, load_tokenizer
from statecast.worker.codecs import codec_for
from statecast.worker.codecs.base import Decoded, RawRecord, Rejected
from statecast.worker.codecs.text import TextCodec, TextCodecError
from tests.fixtures.codec_specs import sentiment_spec

pytestmark = pytest.mark.unit

MODEL_DIR = PACKAGE_ROOT / "models" / "onnx"


def make_spec(max_chunk: int = 8, sha: str | None = None, max_chars: int = 2000) -> ModelSpec:
    return sentiment_spec(max_chunk, max_chars, sha)


def record(value: bytes | None, offset: int = 0, ts: int = 1_000) -> RawRecord:
    return RawRecord("text", 0, offset, ts, None, value)  # unkeyed: the body names the stream


def text_event(text: object, stream: object = "conv-1", ts: object = 1_700_000_000_000) -> bytes:
    return orjson.dumps({"stream": stream, "ts": ts, "text": text})


def codec(mode: str = "message", max_chunk: int = 8) -> TextCodec:
    return TextCodec(make_spec(max_chunk=max_chunk), {"mode": mode}, MODEL_DIR)


def test_codec_for_picks_the_text_codec() -> None:
    assert isinstance(codec_for(make_spec(), {"mode": "conversation"}, MODEL_DIR), TextCodec)


def test_long_text_becomes_chunks_that_concatenate_to_its_tokens() -> None:
    text = "An utterly wonderful film, with a cast that never once puts a foot wrong. Bravo!"
    ids = load_tokenizer().encode(text).ids
    assert len(ids) > 16  # three chunks of at most 8
    (dec,) = codec(max_chunk=8).decode([record(text_event(text))])
    assert isinstance(dec, Decoded)
    assert dec.stream == "conv-1"
    assert dec.ts_ms == 1_700_000_000_000
    assert [int(s["lengths"]) for s in dec.steps] == [len(s["x"]) for s in dec.steps]
    assert all(len(s["x"]) <= 8 for s in dec.steps)
    assert len(dec.steps) == -(-len(ids) // 8)
    assert np.concatenate([s["x"] for s in dec.steps]).tolist() == ids


def test_mode_decides_fresh_state() -> None:
    raw = [record(text_event("fine"))]
    (per_message,) = codec("message").decode(raw)
    (per_conversation,) = codec("conversation").decode(raw)
    assert isinstance(per_message, Decoded)
    assert per_message.fresh_state
    assert isinstance(per_conversation, Decoded)
    assert not per_conversation.fresh_state


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (None, "empty"),
        (b"", "empty"),
        (b"{not json", "not_json"),
        (b"\xff\xfe", "not_json"),
        (b'["a list"]', "schema"),
        (orjson.dumps({"ts": 1, "text": "no stream"}), "schema"),
        (orjson.dumps({"stream": "", "ts": 1, "text": "empty stream"}), "schema"),
        (orjson.dumps({"stream": "s", "ts": 1}), "schema"),
        (text_event(42), "wrong_type"),
        (text_event(["a", "b"]), "wrong_type"),
        (text_event(None), "wrong_type"),
        (text_event(""), "empty"),
        (text_event(" \n\t "), "empty"),
        (text_event("x" * 2001), "too_large"),
        (text_event("fine", ts="yesterday"), "wrong_type"),
        (text_event("fine", ts=True), "wrong_type"),
    ],
)
def test_bad_input_is_rejected_with_a_reason(value: bytes | None, reason: str) -> None:
    (out,) = codec().decode([record(value)])
    assert isinstance(out, Rejected)
    assert out.reason == reason
    assert out.detail


def test_a_mixed_batch_keeps_record_order() -> None:
    raws = [
        record(text_event("good", stream="a"), 0),
        record(b"nope", 1),
        record(text_event("bad", stream="b"), 2),
        record(text_event(""), 3),
        record(orjson.dumps({"stream": "c", "text": "no ts"}), 4, ts=777),
    ]
    out = codec().decode(raws)
    kinds = [type(o).__name__ for o in out]
    assert kinds == ["Decoded", "Rejected", "Decoded", "Rejected", "Decoded"]
    assert [o.stream for o in out if isinstance(o, Decoded)] == ["a", "b", "c"]
    last = out[4]
    assert isinstance(last, Decoded)
    assert last.ts_ms == 777


def test_stack_pads_ragged_steps_and_keeps_lengths() -> None:
    c = codec()
    steps = [
        {"x": np.array([5, 6, 7], np.int64), "lengths": np.asarray(3, np.int64)},
        {"x": np.array([9], np.int64), "lengths": np.asarray(1, np.int64)},
    ]
    feeds = c.stack(steps)
    assert feeds["x"].dtype == np.int64
    assert feeds["lengths"].dtype == np.int64
    assert feeds["x"].tolist() == [[5, 6, 7], [9, 0, 0]]
    assert feeds["lengths"].tolist() == [3, 1]


def test_predictions_one_per_row() -> None:
    out = codec().predictions({"positive": np.array([[0.9], [0.2]], np.float32)})
    assert [round(p["positive"], 5) for p in out] == [0.9, 0.2]
    assert [p["label"] for p in out] == ["positive", "negative"]


def test_options_and_artefact_are_checked(tmp_path: Path) -> None:
    with pytest.raises(TextCodecError, match="mode"):
        TextCodec(make_spec(), {"mode": "paragraph"}, MODEL_DIR)
    with pytest.raises(TextCodecError, match="unknown"):
        TextCodec(make_spec(), {"colour": "blue"}, MODEL_DIR)
    with pytest.raises(TextCodecError, match="sha256"):
        TextCodec(make_spec(sha="0" * 64), {}, MODEL_DIR)
    with pytest.raises(TextCodecError, match="cannot be read"):
        TextCodec(make_spec(), {}, tmp_path / "onnx")
    # The same file beside another model directory works: paths are relative to it.
    (tmp_path / "tokenizer").mkdir()
    shutil.copy(TOKENIZER_PATH, tmp_path / "tokenizer" / "sentiment_lstm.json")
    c = TextCodec(make_spec(), {"max_chars": "10"}, tmp_path / "onnx")
    (out,) = c.decode([record(text_event("eleven chars"))])
    assert isinstance(out, Rejected)
    assert out.reason == "too_large"


def _ids(c: TextCodec, text: str) -> list[int]:
    (dec,) = c.decode([record(text_event(text))])
    assert isinstance(dec, Decoded)
    return [int(t) for s in dec.steps for t in s["x"][: int(s["lengths"])]]


def test_route_cleans_markup_as_the_model_was_trained_unless_told_not_to() -> None:
    raw = "Great film.<br /><br />Really &amp; truly <i>good</i> acting."
    trained_on = "Great film. Really & truly good acting."
    tok = load_tokenizer()
    cleaned = TextCodec(make_spec(max_chunk=64), {}, MODEL_DIR)
    as_is = TextCodec(make_spec(max_chunk=64), {"clean": "none"}, MODEL_DIR)
    assert _ids(cleaned, raw) == tok.encode(trained_on).ids
    assert _ids(as_is, raw) == tok.encode(raw).ids
    assert _ids(as_is, raw) != _ids(cleaned, raw)
    assert _ids(cleaned, "plain text") == tok.encode("plain text").ids
    with pytest.raises(TextCodecError, match="clean"):
        TextCodec(make_spec(), {"clean": "strip"}, MODEL_DIR)
