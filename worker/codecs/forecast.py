"""The forecast codec: JSON time-series events -> raw feature rows -> predictions in real units.

Event: ``{"stream": "...", "ts": <epoch ms>, "values": {"<feature>": <number>, ...}}`` with
exactly the features of ``spec.features``. Normalisation lives in the ONNX graph, so the
codec only validates and orders the raw values.

Budgets (docs/hostile-input.md): ``max_bytes`` per message before parsing (``too_large``);
the stream id (``max_stream_bytes``, ``stream_from``:
:class:`~statecast.worker.codecs.base.StreamIdentity`); ``ts`` within int64 milliseconds
(``ts_out_of_range``). Each event is parsed, checked and dropped before the next one is
parsed: only its feature row outlives it (a batch of small events built to parse into
many objects, ``[[],[],...]``, once held hundreds of MiB).

Derived features: when the spec lists ``preprocess["derived_features"]`` (half-hour of day,
day of week), the codec computes them from the event's ``ts`` with
:func:`statecast.contract.calendar.derive`, the same function training uses, and appends
them after the values: ``x = [values in spec.features order, derived in listed order]``.

Prediction per output: ``{"<output>": value}`` when the output has one column and no field
names, ``{"<output>": {"<field>": value, ...}}`` when it names its fields, a list otherwise.
A multi-horizon output ``[B, H, len(fields)]`` (day-ahead quantiles) becomes one list of H
values per field: ``{"demand": {"p10": [..48], "p50": [..48], "p90": [..48]}}``, entry k-1
for ``ts + k * spec.preprocess["step_ms"]``.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import orjson

from statecast.contract.calendar import DERIVED_FEATURES, derive
from statecast.contract.spec import ModelSpec
from statecast.worker.codecs.base import (
    INT64_MAX,
    INT64_MIN,
    REASON_EMPTY,
    REASON_EXTRA_FEATURE,
    REASON_MISSING_FEATURE,
    REASON_NOT_FINITE,
    REASON_NOT_JSON,
    REASON_SCHEMA,
    REASON_TOO_LARGE,
    REASON_TS_OUT_OF_RANGE,
    REASON_WRONG_TYPE,
    STREAM_OPTIONS,
    Array,
    Decoded,
    RawRecord,
    Rejected,
    StepInputs,
    StreamIdentity,
    in_int64,
    positive_int,
)

DEFAULT_MAX_BYTES = 4096
_NUMBER_TYPES = frozenset((int, float))


class ForecastCodec:
    def __init__(self, spec: ModelSpec, options: Mapping[str, str], model_dir: Path) -> None:
        unknown = set(options) - {"max_bytes"} - STREAM_OPTIONS
        if unknown:
            raise ValueError(f"forecast route: unknown options {sorted(unknown)}")
        if not spec.features:
            raise ValueError(f"{spec.name}: spec.preprocess['features'] is empty")
        self.spec = spec
        self._features = spec.features
        self._feature_set = frozenset(spec.features)
        self._max_bytes = positive_int(options, "max_bytes", DEFAULT_MAX_BYTES)
        self._identity = StreamIdentity.from_options(options)
        self._outputs = tuple(o for o in spec.outputs)
        self._derived = tuple(str(d) for d in spec.preprocess.get("derived_features", ()))
        unknown_derived = [d for d in self._derived if d not in DERIVED_FEATURES]
        if unknown_derived:
            raise ValueError(f"{spec.name}: unknown derived features {unknown_derived}")
        first = self._features[0]
        # itemgetter of one key returns the value itself, not a 1-tuple.
        self._pick: Callable[[dict[str, Any]], tuple[Any, ...]] = (
            operator.itemgetter(*self._features)
            if len(self._features) > 1
            else lambda d: (d[first],)
        )

    def decode(self, records: Sequence[RawRecord]) -> list[Decoded | Rejected]:
        nf = len(self._features)
        pick = self._pick
        numbers = _NUMBER_TYPES
        from_key = self._identity.from_key
        resolve = self._identity.resolve
        out: list[Decoded | Rejected | None] = [None] * len(records)
        rows: list[tuple[Any, ...]] = []
        metas: list[tuple[int, str, int]] = []
        for i, rec in enumerate(records):
            # One event at a time: the parsed object dies at the end of this iteration.
            obj = self._parse_one(rec.value)
            # Fast path for the well-formed event; anything else gets the careful check.
            if type(obj) is dict:
                vals = obj.get("values")
                stream = obj.get("stream")
                ts = obj.get("ts")
                if (
                    type(vals) is dict
                    and len(vals) == nf
                    and (from_key or (type(stream) is str and stream))
                    and type(ts) is int
                    and INT64_MIN <= ts <= INT64_MAX
                ):
                    try:
                        row = pick(vals)
                    except KeyError:
                        row = None
                    if row is not None and numbers.issuperset(map(type, row)):
                        sid = resolve(rec.key, stream)
                        if isinstance(sid, Rejected):
                            out[i] = sid
                        else:
                            rows.append(row)
                            metas.append((i, sid, ts))
                        continue
                out[i] = self._diagnose(obj, rec.key)
            elif type(obj) is Rejected:
                out[i] = obj
            else:
                out[i] = self._diagnose(obj, rec.key)
        if rows:
            with np.errstate(over="ignore"):  # float32 overflow becomes inf: rejected below
                x = np.asarray(rows, dtype=np.float64).reshape(len(rows), nf).astype(np.float32)
            if self._derived:
                x = np.concatenate([x, derive(self._derived, [m[2] for m in metas])], axis=1)
            finite = cast("list[bool]", np.isfinite(x).all(axis=1).tolist())
            not_finite = Rejected(REASON_NOT_FINITE, "a feature is NaN, infinite or overflows")
            for (i, stream, ts), xr, ok in zip(metas, list(x), finite, strict=True):
                out[i] = Decoded(stream, ts, ({"x": xr},)) if ok else not_finite
        return [o if o is not None else Rejected(REASON_SCHEMA, "unreachable") for o in out]

    def stack(self, steps: Sequence[StepInputs]) -> dict[str, Array]:
        # np.array over equal-length rows is ~3x cheaper than np.stack (no per-row reshape).
        return {"x": np.array([s["x"] for s in steps], dtype=np.float32)}

    def predictions(self, outputs: Mapping[str, Array]) -> list[dict[str, Any]]:
        columns: list[tuple[str, tuple[str, ...], list[Any]]] = []
        n = 0
        for o in self._outputs:
            arr = outputs[o.name]
            n = int(arr.shape[0])
            if arr.ndim == 3 and o.fields and arr.shape[2] == len(o.fields):
                # [B, horizon, fields]: one list over the horizon per field.
                per_field = arr.astype(np.float64).transpose(0, 2, 1).tolist()
                columns.append(
                    (o.name, (), [dict(zip(o.fields, r, strict=True)) for r in per_field])
                )
                continue
            flat = arr.reshape(n, -1).astype(np.float64)
            columns.append((o.name, o.fields, flat.tolist()))
        preds: list[dict[str, Any]] = [{} for _ in range(n)]
        for name, field_names, rows in columns:
            if field_names:
                for p, row in zip(preds, rows, strict=True):
                    p[name] = dict(zip(field_names, row, strict=False))
            elif rows and isinstance(rows[0], dict):
                for p, row in zip(preds, rows, strict=True):
                    p[name] = row
            elif rows and len(rows[0]) == 1:
                for p, row in zip(preds, rows, strict=True):
                    p[name] = row[0]
            else:
                for p, row in zip(preds, rows, strict=True):
                    p[name] = row
        return preds

    def _parse_one(self, value: bytes | None) -> Any:
        if not value:
            return Rejected(REASON_EMPTY, "record has no value")
        if len(value) > self._max_bytes:
            return Rejected(REASON_TOO_LARGE, f"{len(value)} bytes > limit {self._max_bytes}")
        try:
            return orjson.loads(value)
        except orjson.JSONDecodeError as exc:
            return Rejected(REASON_NOT_JSON, str(exc)[:200])

    def _diagnose(self, obj: Any, key: bytes | None) -> Rejected:
        """Why a parsed event is not a valid forecast event (the slow path)."""
        if not isinstance(obj, dict):
            return Rejected(REASON_SCHEMA, f"event is a JSON {type(obj).__name__}, not an object")
        from_key = self._identity.from_key
        for name in ("ts", "values") if from_key else ("stream", "ts", "values"):
            if name not in obj:
                return Rejected(REASON_SCHEMA, f"event has no {name!r}")
        stream, ts, vals = obj.get("stream"), obj["ts"], obj["values"]
        if not from_key and (type(stream) is not str or not stream):
            return Rejected(REASON_WRONG_TYPE, "'stream' must be a non-empty string")
        if type(ts) is not int:
            return Rejected(REASON_WRONG_TYPE, "'ts' must be an integer (epoch ms)")
        if not in_int64(ts):
            return Rejected(REASON_TS_OUT_OF_RANGE, "'ts' is outside int64 milliseconds")
        if not isinstance(vals, dict):
            return Rejected(REASON_WRONG_TYPE, "'values' must be an object")
        missing = [f for f in self._features if f not in vals]
        if missing:
            return Rejected(REASON_MISSING_FEATURE, f"missing features {missing}")
        extra = sorted(set(vals) - self._feature_set)
        if extra:
            return Rejected(REASON_EXTRA_FEATURE, f"unexpected features {extra[:10]}")
        for f in self._features:
            v = vals[f]
            if type(v) not in _NUMBER_TYPES:
                return Rejected(REASON_WRONG_TYPE, f"feature {f!r} is {type(v).__name__}")
            if not math.isfinite(v):
                return Rejected(REASON_NOT_FINITE, f"feature {f!r} is not finite")
        sid = self._identity.resolve(key, stream if type(stream) is str else "")
        if isinstance(sid, Rejected):
            return sid
        return Rejected(REASON_SCHEMA, "invalid event")
