"""Calendar features derived from an event's ``ts``: ONE definition for training and serving.

A forecast spec may list ``preprocess["derived_features"]`` (names from
:data:`DERIVED_FEATURES`); the worker's codec appends them, in that order, after the event's
own ``values`` to build ``x``, and training builds its rows with the same functions, so the
clock a model learned is the clock it is served.

Timestamps are epoch milliseconds of the *local clock time* written as UTC (the convention
of the shipped data sets), so no time zone conversion happens here: half-hour 0 is local
midnight. Day of week counts from Monday = 0 (1970-01-01 was a Thursday = 3).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt

MS_PER_HALF_HOUR = 30 * 60 * 1000
MS_PER_DAY = 24 * 60 * 60 * 1000
HALF_HOURS_PER_DAY = 48
DAYS_PER_WEEK = 7
_EPOCH_WEEKDAY = 3  # 1970-01-01 was a Thursday

IntArray = npt.NDArray[np.int64]


def half_hour_of_day(ts_ms: npt.ArrayLike) -> IntArray:
    """0..47: which half-hour of the (local) day ``ts_ms`` falls in."""
    ts = np.asarray(ts_ms, dtype=np.int64)
    out: IntArray = (ts // MS_PER_HALF_HOUR) % HALF_HOURS_PER_DAY
    return out


def day_of_week(ts_ms: npt.ArrayLike) -> IntArray:
    """0..6, Monday = 0."""
    ts = np.asarray(ts_ms, dtype=np.int64)
    out: IntArray = (ts // MS_PER_DAY + _EPOCH_WEEKDAY) % DAYS_PER_WEEK
    return out


# name -> (function of ts, number of distinct values). The cardinality lets a model one-hot
# the feature inside its graph.
DERIVED_FEATURES: dict[str, tuple[Callable[[npt.ArrayLike], IntArray], int]] = {
    "half_hour_of_day": (half_hour_of_day, HALF_HOURS_PER_DAY),
    "day_of_week": (day_of_week, DAYS_PER_WEEK),
}


def derive(names: tuple[str, ...] | list[str], ts_ms: npt.ArrayLike) -> npt.NDArray[np.float32]:
    """``[N, len(names)]`` float32 columns of the named derived features of ``ts_ms`` ``[N]``."""
    unknown = [n for n in names if n not in DERIVED_FEATURES]
    if unknown:
        raise ValueError(f"unknown derived features {unknown}; known: {sorted(DERIVED_FEATURES)}")
    ts = np.asarray(ts_ms, dtype=np.int64).reshape(-1)
    cols = [DERIVED_FEATURES[n][0](ts).astype(np.float32) for n in names]
    if not cols:
        return np.zeros((ts.size, 0), np.float32)
    return np.stack(cols, axis=1)
