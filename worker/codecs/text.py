"""TextCodec: text events -> token-id chunks for the sentiment step model.

Events are JSON ``{"stream": str, "ts": epoch ms, "text": str}``. Route options:

- ``mode=message`` (default): every message is scored on its own, from a zero state
  (``Decoded.fresh_state``), still batched with other messages.
- ``mode=conversation``: the stream's state runs on across its messages, so each
  prediction is the running sentiment of the conversation so far.
- ``clean=html`` (default): HTML line breaks and tags become spaces and entities are
  unescaped (:func:`statecast.contract.text.clean_text`, what the shipped models were
  trained on) before tokenizing; ``clean=none`` feeds the text as it came.

Budgets, each checked before the step it protects (docs/hostile-input.md): ``max_bytes``
per message before parsing (``too_large``); the stream id (``max_stream_bytes``,
``stream_from``: :class:`~statecast.worker.codecs.base.StreamIdentity`); ``ts`` within
int64 ms (``ts_out_of_range``); ``max_chars`` counted AFTER the tokenizer's normalisation
(NFKC turns one U+FDFA into 18 characters: counting before let a 60 KB message become
660,001 tokens) (``too_large``); ``max_tokens`` per message (``too_many_tokens``), which
bounds the waves one message costs to ``max_tokens / max_chunk_tokens``.

The tokenizer named in ``spec.preprocess`` (relative to ``model_dir``, the ONNX file's directory;
pinned by sha256) is the one the model was trained with. A whole poll's texts are tokenized in one
``encode_batch`` call; a text longer than ``max_chunk_tokens`` becomes several steps.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from statecast.contract.spec import ModelSpec
from statecast.contract.text import clean_text
from statecast.worker.codecs.base import (
    REASON_EMPTY,
    REASON_TOO_LARGE,
    REASON_TOO_MANY_TOKENS,
    STREAM_OPTIONS,
    Array,
    Decoded,
    RawRecord,
    Rejected,
    StepInputs,
    StreamIdentity,
    positive_int,
)
from statecast.worker.codecs.text_event import parse_text_event, stack_token_steps

MODES = ("message", "conversation")
DEFAULT_MAX_TEXT_CHARS = 20_000
# JSON may escape a character as 6 bytes (12 for a surrogate pair): 128 KiB holds any text
# within the character budget written plainly, and refuses the rest before parsing.
DEFAULT_MAX_BYTES = 128 * 1024
# English runs about 4 characters per token, so 20,000 characters is ~5,000 tokens; byte-level
# BPE can make 4 tokens of one rare character, which this caps (64 waves of 128 tokens).
DEFAULT_MAX_TOKENS = 8192
CLEANING = ("html", "none")
_OPTIONS = frozenset({"mode", "max_chars", "max_bytes", "max_tokens", "clean"}) | STREAM_OPTIONS


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
        unknown = set(options) - _OPTIONS
        if unknown:
            raise TextCodecError(f"unknown text route options {sorted(unknown)}")
        self.mode = mode
        clean = options.get("clean", "html")
        if clean not in CLEANING:
            raise TextCodecError(f"text route clean must be one of {CLEANING}, got {clean!r}")
        self.clean = clean == "html"
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
        try:
            self.identity = StreamIdentity.from_options(options)
            self.max_bytes = positive_int(options, "max_bytes", DEFAULT_MAX_BYTES)
            self.max_tokens = positive_int(options, "max_tokens", DEFAULT_MAX_TOKENS)
        except ValueError as exc:
            raise TextCodecError(str(exc)) from exc
        normalizer = self.tokenizer.normalizer
        self._normalize = None if normalizer is None else normalizer.normalize_str

    # -- decode: runs in a worker thread --------------------------------------------------

    def _parse(self, rec: RawRecord) -> tuple[str, int, str] | Rejected:
        parsed = parse_text_event(rec, self.max_bytes, self.identity, blank_is_empty=True)
        if isinstance(parsed, Rejected):
            return parsed
        stream, ts_ms, text = parsed
        # Raw length first (cheap), then the length the tokenizer will really see: NFKC
        # can expand one character to 18, so only the normalised count bounds the work.
        if len(text) > self.max_chars:
            return Rejected(REASON_TOO_LARGE, f"'text' has {len(text)} > {self.max_chars} chars")
        if self.clean:
            # The cleaning the shipped models were trained with (linear; never lengthens).
            text = clean_text(text)
        if self._normalize is not None:
            n = len(self._normalize(text))
            if n > self.max_chars:
                return Rejected(
                    REASON_TOO_LARGE, f"'text' has {n} > {self.max_chars} chars once normalised"
                )
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
            if len(ids) > self.max_tokens:
                out.append(
                    Rejected(REASON_TOO_MANY_TOKENS, f"{len(ids)} tokens > {self.max_tokens}")
                )
                continue
            out.append(Decoded(stream=p[0], ts_ms=p[1], steps=self._steps(ids), fresh_state=fresh))
        return out

    # -- stack / predictions: one wave ----------------------------------------------------

    def stack(self, steps: Sequence[StepInputs]) -> dict[str, Array]:
        return stack_token_steps(steps, self.pad_id)

    def predictions(self, outputs: Mapping[str, Array]) -> list[dict[str, Any]]:
        probs = np.asarray(outputs[self.output], dtype=np.float64).reshape(-1)
        return [
            {self.output: p, "label": "positive" if p >= 0.5 else "negative"}
            for p in probs.tolist()
        ]
