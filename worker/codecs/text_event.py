"""The JSON text event ``{"stream": str, "ts": epoch ms, "text": str}`` shared by the text
routes (sentiment's TextCodec, the char model's GenerateCodec).

One parser so both routes refuse the same hostile records with the same reasons, in the
same order (docs/hostile-input.md): the raw size before parsing, then the JSON, the stream
id (:class:`~statecast.worker.codecs.base.StreamIdentity`), the text, the timestamp.
What a codec does with the text afterwards (tokenizing, byte chunks) stays in the codec;
:func:`stack_token_steps` batches the resulting ``{x, lengths}`` steps of one wave.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import orjson

from statecast.worker.codecs.base import (
    REASON_EMPTY,
    REASON_NOT_JSON,
    REASON_SCHEMA,
    REASON_TOO_LARGE,
    REASON_TS_OUT_OF_RANGE,
    REASON_WRONG_TYPE,
    Array,
    RawRecord,
    Rejected,
    StepInputs,
    StreamIdentity,
    in_int64,
)


def parse_text_event(
    rec: RawRecord, max_bytes: int, identity: StreamIdentity, *, blank_is_empty: bool
) -> tuple[str, int, str] | Rejected:
    """``(stream, ts_ms, text)`` of a record, or why it is refused.

    ``blank_is_empty``: whitespace-only text counts as empty (a classifier has nothing to
    score in it; a continuation model still reads the spaces and newlines).
    """
    if not rec.value:
        return Rejected(REASON_EMPTY, "record has no value")
    if len(rec.value) > max_bytes:
        return Rejected(REASON_TOO_LARGE, f"{len(rec.value)} bytes > limit {max_bytes}")
    try:
        event = orjson.loads(rec.value)
    except orjson.JSONDecodeError as exc:
        return Rejected(REASON_NOT_JSON, str(exc)[:200])
    if not isinstance(event, dict):
        return Rejected(REASON_SCHEMA, "event is not a JSON object")
    stream, text, ts = event.get("stream"), event.get("text"), event.get("ts")
    if identity.from_key:
        stream = identity.from_record_key(rec.key)
    elif not isinstance(stream, str) or not stream:
        return Rejected(REASON_SCHEMA, "'stream' must be a non-empty string")
    else:
        stream = identity.resolve(rec.key, stream)
    if isinstance(stream, Rejected):
        return stream
    if "text" not in event:
        return Rejected(REASON_SCHEMA, "event has no 'text'")
    if not isinstance(text, str):
        return Rejected(REASON_WRONG_TYPE, f"'text' is {type(text).__name__}, not a string")
    if not (text.strip() if blank_is_empty else text):
        return Rejected(REASON_EMPTY, "'text' is empty")
    if ts is None:
        ts_ms = rec.timestamp_ms
    elif isinstance(ts, bool) or not isinstance(ts, int | float) or not math.isfinite(ts):
        return Rejected(REASON_WRONG_TYPE, "'ts' must be epoch milliseconds")
    else:
        ts_ms = int(ts)
        if not in_int64(ts_ms):
            return Rejected(REASON_TS_OUT_OF_RANGE, "'ts' is outside int64 milliseconds")
    return stream, ts_ms, text


def stack_token_steps(steps: Sequence[StepInputs], pad_id: int = 0) -> dict[str, Array]:
    """One wave's ``{x [T_i], lengths}`` steps -> ``x [B, max T]`` padded with ``pad_id`` and
    ``lengths [B]`` (at least one column: ONNX refuses an empty axis)."""
    lengths = np.array([int(s["lengths"]) for s in steps], dtype=np.int64)
    x = np.full((len(steps), max(1, int(lengths.max(initial=0)))), pad_id, np.int64)
    for i, s in enumerate(steps):
        x[i, : lengths[i]] = s["x"]
    return {"x": x, "lengths": lengths}
