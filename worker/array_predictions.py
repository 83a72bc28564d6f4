"""Forecast predictions as numpy rows, encoded by orjson without Python floats.

``ForecastCodec.predictions`` turns a wave's outputs into lists of Python floats
(``ndarray.tolist``) that orjson then walks one float at a time: for sensor_lstm's 144
values per event that was two thirds of the compute step's own Python time. Here the same
prediction dicts hold float64 numpy rows instead (views into one contiguous array per
output), and :data:`ENCODE` serialises them with ``OPT_SERIALIZE_NUMPY``: orjson formats a
float64 array element with the same shortest round-trip algorithm as a Python float, so the
published bytes are identical (held by tests/test_worker_array_predictions.py), including
NaN and inf written as ``null``.

Only the exact :class:`ForecastCodec` gets this path: its layout (docs in that codec) is
reproduced here, and the test compares both on every layout. Other codecs keep their own
``predictions``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import orjson

from statecast.contract.spec import OutputSpec
from statecast.worker.codecs.base import Array, Codec

Predict = Callable[[Mapping[str, Array]], list[dict[str, Any]]]

# Every prediction message is encoded with this (a list of floats encodes as before).
ENCODE: Callable[[Any], bytes] = functools.partial(orjson.dumps, option=orjson.OPT_SERIALIZE_NUMPY)


def predictions_for(codec: Codec) -> Predict:
    """The codec's own ``predictions``, or the array path for the forecast codec."""
    from statecast.worker.codecs.forecast import ForecastCodec

    if type(codec) is ForecastCodec:
        return functools.partial(array_predictions, codec.spec.outputs)
    return codec.predictions


def finite_rows_for(codec: Codec) -> Callable[[Mapping[str, Array]], Array] | None:
    """For the array path: whether each row of a wave's outputs is all finite, one numpy
    pass (its predictions are those rows as float64, so finite exactly when the rows are);
    the worker then needs no scan of the encoded bytes for ``null``. None for other codecs
    (their predictions may be more than their output rows)."""
    from statecast.worker.codecs.forecast import ForecastCodec

    if type(codec) is ForecastCodec:
        return functools.partial(finite_rows, tuple(o.name for o in codec.spec.outputs))
    return None


def finite_rows(names: Sequence[str], outputs: Mapping[str, Array]) -> Array:
    ok: Array | None = None
    for name in names:
        arr = outputs[name]
        row_ok = np.asarray(np.isfinite(arr.reshape(arr.shape[0], -1)).all(axis=1))
        ok = row_ok if ok is None else ok & row_ok
    assert ok is not None, "a forecast spec has outputs"
    return ok


def array_predictions(
    specs: Sequence[OutputSpec], outputs: Mapping[str, Array]
) -> list[dict[str, Any]]:
    """``ForecastCodec.predictions`` with float64 numpy rows in place of float lists."""
    n = 0
    columns: list[tuple[str, list[Any]]] = []
    for o in specs:
        arr = outputs[o.name]
        n = int(arr.shape[0])
        if arr.ndim == 3 and o.fields and arr.shape[2] == len(o.fields):
            # [B, horizon, fields] -> per record {field: [horizon]}; rows of one
            # contiguous [B, fields, horizon] copy.
            per_field = np.ascontiguousarray(arr.transpose(0, 2, 1), dtype=np.float64)
            columns.append((o.name, [dict(zip(o.fields, r, strict=True)) for r in per_field]))
            continue
        flat = np.ascontiguousarray(arr.reshape(n, -1), dtype=np.float64)
        if o.fields:
            # A few named scalars: Python floats are as cheap here (and zip stops at the
            # shorter, as the codec's does).
            columns.append((o.name, [dict(zip(o.fields, r, strict=False)) for r in flat.tolist()]))
        elif flat.shape[1] == 1:
            columns.append((o.name, flat[:, 0].tolist()))
        else:
            columns.append((o.name, list(flat)))
    preds: list[dict[str, Any]] = [{} for _ in range(n)]
    for name, rows in columns:
        for p, row in zip(preds, rows, strict=True):
            p[name] = row
    return preds
