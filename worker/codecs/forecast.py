"""The forecast codec: JSON time-series events -> raw feature rows -> predictions in real units.

Event: ``{"stream": "...", "ts": <epoch ms>, "values": {"<feature>": <number>, ...}}`` with
exactly the features of ``spec.features``. Normalisation lives in the ONNX graph, so the
codec only validates and orders the raw values.

Prediction per output: ``{"<output>": value}`` when the output has one column and no field
names, ``{"<output>": {"<field>": value, ...}}`` when it names its fields, a list otherwise.
"""

from __future__ import annotations

import itertools
import math
import operator
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import orjson

from statecast.contract.spec import ModelSpec
from statecast.worker.codecs.base import (
    REASON_EMPTY,
    REASON_EXTRA_FEATURE,
    REASON_MISSING_FEATURE,
    REASON_NOT_FINITE,
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

DEFAULT_MAX_BYTES = 4096
_NUMBER_TYPES = frozenset((int, float))


class ForecastCodec:
    def __init__(self, spec: ModelSpec, options: Mapping[str, str], model_dir: Path) -> None:
        unknown = set(options) - {"max_bytes"}
        if unknown:
            raise ValueError(f"forecast route: unknown options {sorted(unknown)}")
        if not spec.features:
            raise ValueError(f"{spec.name}: spec.preprocess['features'] is empty")
        self.spec = spec
        self._features = spec.features
        self._feature_set = frozenset(spec.features)
        self._max_bytes = int(options.get("max_bytes", DEFAULT_MAX_BYTES))
        self._outputs = tuple(o for o in spec.outputs)
        first = self._features[0]
        # itemgetter of one key returns the value itself, not a 1-tuple.
        self._pick: Callable[[dict[str, Any]], tuple[Any, ...]] = (
            operator.itemgetter(*self._features)
            if len(self._features) > 1
            else lambda d: (d[first],)
        )

    def decode(self, records: Sequence[RawRecord]) -> list[Decoded | Rejected]:
        objs = self._parse(records)
        nf = len(self._features)
        pick = self._pick
        out: list[Decoded | Rejected | None] = [None] * len(records)
        rows: list[tuple[Any, ...]] = []
        metas: list[tuple[int, str, int]] = []
        for i, obj in enumerate(objs):
            # Fast path for the well-formed event; anything else gets the careful check.
            if type(obj) is dict:
                vals = obj.get("values")
                stream = obj.get("stream")
                ts = obj.get("ts")
                if (
                    type(vals) is dict
                    and len(vals) == nf
                    and type(stream) is str
                    and stream
                    and type(ts) is int
                ):
                    try:
                        rows.append(pick(vals))
                    except KeyError:
                        pass
                    else:
                        metas.append((i, stream, ts))
                        continue
                out[i] = self._diagnose(obj)
            elif type(obj) is Rejected:
                out[i] = obj
            else:
                out[i] = self._diagnose(obj)
        if rows:
            # One type check over the whole batch; row by row only when something is off.
            if not set(map(type, itertools.chain.from_iterable(rows))) <= _NUMBER_TYPES:
                good = [j for j, row in enumerate(rows) if set(map(type, row)) <= _NUMBER_TYPES]
                for j in set(range(len(rows))) - set(good):
                    i = metas[j][0]
                    out[i] = self._diagnose(objs[i])
                rows = [rows[j] for j in good]
                metas = [metas[j] for j in good]
            with np.errstate(over="ignore"):  # float32 overflow becomes inf: rejected below
                x = np.asarray(rows, dtype=np.float64).reshape(len(rows), nf).astype(np.float32)
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
            flat = arr.reshape(n, -1).astype(np.float64)
            columns.append((o.name, o.fields, flat.tolist()))
        preds: list[dict[str, Any]] = [{} for _ in range(n)]
        for name, field_names, rows in columns:
            if field_names:
                for p, row in zip(preds, rows, strict=True):
                    p[name] = dict(zip(field_names, row, strict=False))
            elif rows and len(rows[0]) == 1:
                for p, row in zip(preds, rows, strict=True):
                    p[name] = row[0]
            else:
                for p, row in zip(preds, rows, strict=True):
                    p[name] = row
        return preds

    def _parse(self, records: Sequence[RawRecord]) -> list[Any]:
        """orjson over the whole batch; only when something fails, record by record."""
        limit = self._max_bytes
        loads = orjson.loads
        try:
            values = [r.value for r in records]
            if all(v and len(v) <= limit for v in values):
                return [loads(v) for v in values]  # type: ignore[arg-type]
        except orjson.JSONDecodeError:
            pass
        return [self._parse_one(r.value) for r in records]

    def _parse_one(self, value: bytes | None) -> Any:
        if not value:
            return Rejected(REASON_EMPTY, "record has no value")
        if len(value) > self._max_bytes:
            return Rejected(REASON_TOO_LARGE, f"{len(value)} bytes > limit {self._max_bytes}")
        try:
            return orjson.loads(value)
        except orjson.JSONDecodeError as exc:
            return Rejected(REASON_NOT_JSON, str(exc)[:200])

    def _diagnose(self, obj: Any) -> Rejected:
        """Why a parsed event is not a valid forecast event (the slow path)."""
        if not isinstance(obj, dict):
            return Rejected(REASON_SCHEMA, f"event is a JSON {type(obj).__name__}, not an object")
        for key in ("stream", "ts", "values"):
            if key not in obj:
                return Rejected(REASON_SCHEMA, f"event has no {key!r}")
        stream, ts, vals = obj["stream"], obj["ts"], obj["values"]
        if type(stream) is not str or not stream:
            return Rejected(REASON_WRONG_TYPE, "'stream' must be a non-empty string")
        if type(ts) is not int:
            return Rejected(REASON_WRONG_TYPE, "'ts' must be an integer (epoch ms)")
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
        return Rejected(REASON_SCHEMA, "invalid event")
