"""TextCodec: text events -> token-id chunks for the sentiment step model.

Events are JSON ``{"stream": str, "ts": epoch ms, "text": str}``. Route options:

- ``mode=message`` (default): every message is scored on its own, from a zero state
  (``Decoded.fresh_state``), still batched with other messages.
- ``mode=conversation``: the stream's state runs on across its messages, so each
  prediction is the running sentiment of the conversation so far.

The tokenizer named in ``spec.preprocess`` (relative to ``model_dir``, the ONNX file's directory;
pinned by sha256) is the one the model was trained with. A whole poll's texts are tokenized in one
``encode_batch`` call; a text longer than ``max_chunk_tokens`` becomes several steps.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from tokenizers import Tokenizer

from statecast.contract.spec import ModelSpec
from statecast.worker.codecs.base import (
    REASON_EMPTY,
    REASON_NOT_JSON,
    REASON_SCHEMA,
    REASON_TOO_LARGE,
    REASON_WRONG_TYPE,
    Array,
    Decoded,
    RawRecord,
    Rejected,
    StepInputs,
)

MODES = ("message", "conversation")
DEFAULT_MAX_TEXT_CHARS = 20_000


class TextCodecError(ValueError):
    """The route options or the model's tokenizer artefact are unusable."""


def _load_tokenizer(path: Path, sha256: str | None) -> Tokenizer:
    try:
        blob = path.read_bytes()
    except OSError as exc:
        raise TextCodecError(f"tokenizer {path} cannot be read: {exc}") from exc
    if sha256 is not None and hashlib.sha256(blob).hexdigest() != sha256:
        raise TextCodecError(f"tokenizer {path} does not match the model's sha256 {sha256}")
    return Tokenizer.from_str(blob.decode())


class TextCodec:
    def __init__(self, spec: ModelSpec, options: Mapping[str, str], model_dir: Path) -> None:
        self.spec = spec
        mode = options.get("mode", "message")
        if mode not in MODES:
            raise TextCodecError(f"text route mode must be one of {MODES}, got {mode!r}")
        unknown = set(options) - {"mode", "max_chars"}
        if unknown:
            raise TextCodecError(f"unknown text route options {sorted(unknown)}")
        self.mode = mode
        pre = spec.preprocess
        try:
            tok_rel = str(pre["tokenizer"])
            self.max_chunk = int(pre["max_chunk_tokens"])
        except KeyError as exc:
            raise TextCodecError(f"{spec.ref}: spec.preprocess lacks {exc}") from exc
        sha = pre.get("tokenizer_sha256")
        # Lexical normalisation: "../tokenizer/x.json" must not need model_dir to exist.
        tok_path = Path(os.path.normpath(model_dir / tok_rel))
        self.tokenizer = _load_tokenizer(tok_path, None if sha is None else str(sha))
        self.pad_id = int(pre.get("pad_id", 0))
        self.max_chars = int(
            options.get("max_chars", pre.get("max_text_chars", DEFAULT_MAX_TEXT_CHARS))
        )
        self.output = spec.outputs[0].name
        if self.max_chunk < 1 or self.max_chars < 1:
            raise TextCodecError("max_chunk_tokens and max_chars must be positive")

    # -- decode: runs in a worker thread --------------------------------------------------

    def _parse(self, rec: RawRecord) -> tuple[str, int, str] | Rejected:
        if not rec.value:
            return Rejected(REASON_EMPTY, "record has no value")
        try:
            event = orjson.loads(rec.value)
        except orjson.JSONDecodeError as exc:
            return Rejected(REASON_NOT_JSON, str(exc)[:200])
        if not isinstance(event, dict):
            return Rejected(REASON_SCHEMA, "event is not a JSON object")
        stream, text, ts = event.get("stream"), event.get("text"), event.get("ts")
        if not isinstance(stream, str) or not stream:
            return Rejected(REASON_SCHEMA, "'stream' must be a non-empty string")
        if "text" not in event:
            return Rejected(REASON_SCHEMA, "event has no 'text'")
        if not isinstance(text, str):
            return Rejected(REASON_WRONG_TYPE, f"'text' is {type(text).__name__}, not a string")
        if not text.strip():
            return Rejected(REASON_EMPTY, "'text' is empty")
        if len(text) > self.max_chars:
            return Rejected(REASON_TOO_LARGE, f"'text' has {len(text)} > {self.max_chars} chars")
        if ts is None:
            ts_ms = rec.timestamp_ms
        elif isinstance(ts, bool) or not isinstance(ts, int | float) or not math.isfinite(ts):
            return Rejected(REASON_WRONG_TYPE, "'ts' must be epoch milliseconds")
        else:
            ts_ms = int(ts)
        return stream, ts_ms, text

    def _steps(self, ids: list[int]) -> tuple[StepInputs, ...]:
        arr = np.asarray(ids, dtype=np.int64)
        return tuple(
            {"x": chunk, "lengths": np.asarray(len(chunk), dtype=np.int64)}
            for chunk in (arr[i : i + self.max_chunk] for i in range(0, len(arr), self.max_chunk))
        )

    def decode(self, records: Sequence[RawRecord]) -> list[Decoded | Rejected]:
        parsed = [self._parse(r) for r in records]
        valid = [p for p in parsed if not isinstance(p, Rejected)]
        encodings = iter(self.tokenizer.encode_batch([p[2] for p in valid]))
        fresh = self.mode == "message"
        out: list[Decoded | Rejected] = []
        for p in parsed:
            if isinstance(p, Rejected):
                out.append(p)
                continue
            ids = next(encodings).ids
            if not ids:
                out.append(Rejected(REASON_EMPTY, "'text' has no tokens"))
                continue
            out.append(Decoded(stream=p[0], ts_ms=p[1], steps=self._steps(ids), fresh_state=fresh))
        return out

    # -- stack / predictions: one wave ----------------------------------------------------

    def stack(self, steps: Sequence[StepInputs]) -> dict[str, Array]:
        lengths = np.array([int(s["lengths"]) for s in steps], dtype=np.int64)
        x = np.full((len(steps), max(1, int(lengths.max(initial=0)))), self.pad_id, np.int64)
        for i, s in enumerate(steps):
            x[i, : lengths[i]] = s["x"]
        return {"x": x, "lengths": lengths}

    def predictions(self, outputs: Mapping[str, Array]) -> list[dict[str, Any]]:
        probs = np.asarray(outputs[self.output], dtype=np.float64).reshape(-1)
        return [
            {self.output: p, "label": "positive" if p >= 0.5 else "negative"}
            for p in probs.tolist()
        ]
