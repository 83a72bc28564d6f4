"""The frame codec: encoded images (PNG or JPEG) keyed by camera -> grey pixel frames.

Record: value = the encoded image, key = the camera (stream) id, timestamp = the record's.
Decoding and resizing use Pillow for the whole poll batch inside :meth:`FrameCodec.decode`,
which the worker runs in a thread; Pillow's decoders release the GIL.

Checks, in order, each a dead letter with its reason code:

- no key -> ``no_key``; a key over ``max_stream_bytes`` -> ``stream_too_long``; a key that
  is not UTF-8 -> ``schema``; no value -> ``empty``; more than ``max_bytes`` -> ``too_large``;
- a JPEG whose markers (read by :mod:`~statecast.worker.codecs.jpeg`, before Pillow sees
  it) say it is progressive when the route refuses that (``progressive=0``) ->
  ``progressive``, or that it has more than ``max_scans`` scans -> ``too_many_scans``:
  each scan of a progressive JPEG costs a pass over every block, so a small file with one
  scan repeated a thousand times took seconds; the dimensions in its frame header over
  ``max_pixels`` -> ``wrong_size``;
- not a PNG or JPEG, or a truncated one -> ``undecodable``;
- dimensions read from the header (before any pixel is decoded, so a small file that
  claims a huge image costs nothing) over ``max_pixels``, or, with ``resize=0``, other
  than the model's ``height`` x ``width`` -> ``wrong_size``.

Frames are converted to 8-bit grey (or RGB for a model whose spec says ``channels: 3``)
and resized to the model's input size (Pillow's bilinear filter, with JPEG's DCT-domain
downscaling when the image is much larger). The model takes raw 0-255 values (its graph
scales them), so ``x`` is the pixels as float32, ``[C, H, W]``.

Prediction: ``{"class": <best class>, "confidence": p, "probs": {class: p, ...}}``.

Route options (``frames=video_lstm?max_bytes=65536&resize=0``):
``max_bytes`` (default 262144), ``max_pixels`` (default 4194304), ``resize`` (1/0,
default 1), ``max_scans`` (default 16: libjpeg writes 10 scans for a colour progressive
file, 6 for grey; 16 scans of a 4-megapixel frame decode in about 0.1 s),
``progressive`` (1/0, default 1), ``max_stream_bytes`` (default 256).
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from statecast.contract.spec import ModelSpec
from statecast.worker.codecs.base import (
    REASON_EMPTY,
    REASON_NO_KEY,
    REASON_PROGRESSIVE,
    REASON_TOO_LARGE,
    REASON_TOO_MANY_SCANS,
    REASON_UNDECODABLE,
    REASON_WRONG_SIZE,
    Array,
    Decoded,
    RawRecord,
    Rejected,
    StepInputs,
    StreamIdentity,
    positive_int,
)
from statecast.worker.codecs.jpeg import is_jpeg, jpeg_layout
from statecast.worker.settings import parse_flag

__all__ = ["REASON_NO_KEY", "FrameCodec"]

DEFAULT_MAX_BYTES = 256 * 1024
DEFAULT_MAX_PIXELS = 4 * 1024 * 1024
DEFAULT_MAX_SCANS = 16
FORMATS = ("PNG", "JPEG")
_OPTIONS = frozenset(
    {"max_bytes", "max_pixels", "resize", "max_scans", "progressive", "max_stream_bytes"}
)


class FrameCodec:
    def __init__(self, spec: ModelSpec, options: Mapping[str, str], model_dir: Path) -> None:
        unknown = set(options) - _OPTIONS
        if unknown:
            raise ValueError(f"frame route: unknown options {sorted(unknown)}")
        pre = spec.preprocess
        channels = int(pre.get("channels", 1))
        if channels not in (1, 3):
            raise ValueError(f"{spec.name}: frame models take 1 (grey) or 3 (RGB) channels")
        self.spec = spec
        self.channels = channels
        self._mode = "L" if channels == 1 else "RGB"
        self.height = int(pre["height"])
        self.width = int(pre["width"])
        self.max_bytes = int(options.get("max_bytes", DEFAULT_MAX_BYTES))
        self.max_pixels = int(options.get("max_pixels", DEFAULT_MAX_PIXELS))
        self.resize = parse_flag(options.get("resize", "1"))
        self.max_scans = positive_int(options, "max_scans", DEFAULT_MAX_SCANS)
        self.progressive = parse_flag(options.get("progressive", "1"))
        # The frame is the whole value: the key is the only place a camera id can be.
        self.identity = StreamIdentity.from_options(
            {k: v for k, v in options.items() if k == "max_stream_bytes"}, from_key=True
        )
        if self.max_bytes <= 0 or self.max_pixels <= 0:
            raise ValueError("max_bytes and max_pixels must be positive")
        out = spec.outputs[0]
        if not out.fields:
            raise ValueError(f"{spec.name}: output {out.name!r} must name its classes (fields)")
        self._output = out.name
        self._classes = out.fields

    def decode(self, records: Sequence[RawRecord]) -> list[Decoded | Rejected]:
        out: list[Decoded | Rejected] = []
        for rec in records:
            result = self._decode_one(rec)
            if isinstance(result, Rejected):
                out.append(result)
                continue
            stream, pixels = result
            out.append(Decoded(stream=stream, ts_ms=rec.timestamp_ms, steps=({"x": pixels},)))
        return out

    def _decode_one(self, rec: RawRecord) -> tuple[str, Array] | Rejected:
        stream = self.identity.from_record_key(rec.key)
        if isinstance(stream, Rejected):
            return stream
        value = rec.value
        if not value:
            return Rejected(REASON_EMPTY, "record has no value")
        if len(value) > self.max_bytes:
            return Rejected(REASON_TOO_LARGE, f"{len(value)} bytes > limit {self.max_bytes}")
        if is_jpeg(value):
            refused = self._jpeg_budget(value)
            if refused is not None:
                return refused
        try:
            # open() reads only the header: size and format are known before decoding.
            img = Image.open(io.BytesIO(value), formats=FORMATS)
        except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError) as e:
            return Rejected(REASON_UNDECODABLE, f"not a PNG or JPEG image: {str(e)[:160]}")
        with img:
            w, h = img.size
            if w * h > self.max_pixels or w < 1 or h < 1:
                return Rejected(REASON_WRONG_SIZE, f"{w}x{h} exceeds {self.max_pixels} pixels")
            target = (self.width, self.height)
            if not self.resize and (w, h) != target:
                return Rejected(
                    REASON_WRONG_SIZE, f"{w}x{h}, the model takes {target[0]}x{target[1]}"
                )
            try:
                if img.format == "JPEG":
                    # Lets libjpeg decode at 1/2..1/8 scale: far less work for big frames.
                    img.draft(self._mode, target)
                frame = img.convert(self._mode)
                if frame.size != target:
                    frame = frame.resize(target, Image.Resampling.BILINEAR)
                pixels = np.asarray(frame, dtype=np.float32)
            except (OSError, ValueError, SyntaxError) as exc:
                return Rejected(REASON_UNDECODABLE, f"image data is broken: {str(exc)[:160]}")
        if self.channels == 1:
            return stream, pixels.reshape(1, self.height, self.width)
        return stream, np.ascontiguousarray(pixels.transpose(2, 0, 1))  # HWC -> CHW

    def _jpeg_budget(self, value: bytes) -> Rejected | None:
        """Scans and pixels from the JPEG's markers, before libjpeg decodes anything."""
        layout = jpeg_layout(value)
        if layout is None:
            return None  # broken markers: Pillow refuses it as undecodable
        if layout.progressive and not self.progressive:
            return Rejected(REASON_PROGRESSIVE, "progressive JPEG refused by this route")
        if layout.scans > self.max_scans:
            return Rejected(
                REASON_TOO_MANY_SCANS, f"{layout.scans} JPEG scans > limit {self.max_scans}"
            )
        if layout.width * layout.height > self.max_pixels:
            return Rejected(
                REASON_WRONG_SIZE,
                f"{layout.width}x{layout.height} exceeds {self.max_pixels} pixels",
            )
        return None

    def stack(self, steps: Sequence[StepInputs]) -> dict[str, Array]:
        return {"x": np.stack([s["x"] for s in steps])}

    def predictions(self, outputs: Mapping[str, Array]) -> list[dict[str, Any]]:
        probs = np.asarray(outputs[self._output], dtype=np.float64)
        best = probs.argmax(axis=1).tolist()
        classes = self._classes
        preds: list[dict[str, Any]] = []
        for row, k in zip(probs.tolist(), best, strict=True):
            preds.append(
                {
                    "class": classes[k],
                    "confidence": row[k],
                    "probs": dict(zip(classes, row, strict=True)),
                }
            )
        return preds
