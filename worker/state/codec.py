"""The byte format of one stream's stored state: a small fixed header + raw float32 tensors.

No pickle: a value is readable by any language and validated before use. Layout, all
little-endian (positions 0-based)::

    0   4s  magic b"SCST"
    4   B   format version (2)
    5   B   dtype code (1 = float32)
    6   B   number of state tensors n
    7   B   length L of the state version string
    8   i4  partition of the last applied input record
    12  i8  offset of the last applied input record
    20  i8  updated_ms (wall clock of the write, epoch milliseconds)
    28  B   number k of earlier partitions (0..7), then 3 zero bytes
    32  7 x (i4 partition, i8 offset): the last applied offset of each other partition
        the stream used, most recent first (k used, the rest zero)
    116 L   state version (ASCII)
    ..  n x (u4 layers, u4 hidden), in the order of the model's state spec
    ..  zero padding to a multiple of 8, so the tensor bytes are aligned for numpy
    ..  the tensors' float32 bytes, concatenated in spec order, each [layers, hidden]

The partition and offset sit at fixed positions so the offset fence in Lua
(:mod:`statecast.worker.state.store`) can read them with ``struct.unpack`` without parsing the rest.

Why a table of partitions and not one: a stream's records can arrive from more than one
partition (the partition count raised mid-stream, a producer's partitioner changed). With
only the last partition stored, a record of the other partition redelivered after a crash
passed the fence and was applied twice. The table is bounded (``MAX_PARTITIONS`` = 8,
least recently used dropped): a stream spread over more partitions than that loses the
fence only for the oldest. Format 1 values (one partition) read as corrupt and reset.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from statecast.contract.spec import StateSpec

MAGIC = b"SCST"
FORMAT_VERSION = 2
DTYPE_FLOAT32 = 1
MAX_PARTITIONS = 8  # the last one plus up to 7 earlier ones
# magic, format version, dtype code, tensor count, state-version length, partition, offset,
# updated_ms, count of earlier partitions (3 pad bytes follow).
_FIXED = struct.Struct("<4sBBBBiqqB3x")
_POSITION = struct.Struct("<iqq")
_EARLIER = struct.Struct("<iq")
_EARLIER_ALL = struct.Struct("<" + "iq" * (MAX_PARTITIONS - 1))
_SHAPE = struct.Struct("<II")
HEADER_FIXED_SIZE = _FIXED.size + _EARLIER_ALL.size  # 116
PARTITION_POS = 8
OFFSET_POS = 12
EARLIER_COUNT_POS = 28
EARLIER_POS = _FIXED.size  # 32
_ALIGN = 8
_F32 = np.dtype("<f4")

# Any, not float32: a caller's slices of a batch (any float dtype) type-check; encode converts.
FloatArray = npt.NDArray[Any]


class ReadStatus(enum.Enum):
    OK = "ok"
    MISSING = "missing"  # no value (never written, or expired)
    MISMATCH = "mismatch"  # a well-formed value of another state version / shapes / dtype
    CORRUPT = "corrupt"  # not a value this format can read (magic, version, length)


@dataclass(frozen=True)
class StoredState:
    """One stream's state: its tensors and the last applied input position.

    The same value is stored in Redis, held in the worker's cache and handed to the next
    batch, so there is one type for all three. ``tensors`` maps each state name to a float32
    ``[layers, hidden]`` array of ONE stream. Arrays returned by a read are read-only views
    over the fetched bytes; ``updated_ms`` is the wall clock of the write (the TTL counts
    from it).
    """

    tensors: dict[str, FloatArray]
    partition: int
    offset: int
    updated_ms: int
    # (partition, last applied offset) of the other partitions the stream used, most
    # recent first, at most MAX_PARTITIONS - 1.
    earlier: tuple[tuple[int, int], ...] = ()

    def positions(self) -> tuple[tuple[int, int], ...]:
        """``(partition, last applied offset)`` of every partition the stream used, the
        last applied first."""
        return ((self.partition, self.offset), *self.earlier)

    def offsets(self) -> dict[int, int]:
        """Partition -> last applied offset, for every partition the stream used."""
        out: dict[int, int] = {}
        for p, o in self.positions():
            out.setdefault(p, o)
        return out


def applied_after(
    start: Sequence[tuple[int, int]], positions: Sequence[tuple[int, int]]
) -> tuple[int, int, tuple[tuple[int, int], ...]]:
    """``(partition, offset, earlier)`` after applying records at ``positions``
    (``(partition, offset)`` in the order applied, at least one) to a stream whose table
    was ``start`` (``(partition, offset)`` pairs, most recent first; empty for a new one)."""
    latest: dict[int, int] = {}
    for p, o in positions:
        latest.pop(p, None)
        latest[p] = o  # re-inserted: dict order is the order of last use
    order = list(reversed(latest.items()))
    seen = set(latest)
    for p, o in start:
        if p not in seen:
            seen.add(p)
            order.append((p, o))
    (partition, offset), *rest = order
    return partition, offset, tuple(rest[: MAX_PARTITIONS - 1])


@dataclass(frozen=True)
class ReadResult:
    status: ReadStatus
    state: StoredState | None
    detail: str = ""


MISSING_RESULT = ReadResult(ReadStatus.MISSING, None)


def _padded(n: int) -> int:
    return (n + _ALIGN - 1) // _ALIGN * _ALIGN


class StateCodec:
    """Encodes and validates the stored states of one model (one state spec and version).

    Everything but partition, offset and update time is the same for every stream of a
    model, so the expected header bytes are built once and a read compares slices instead
    of parsing field by field; the slow path only runs to explain a failed value.
    """

    def __init__(self, spec_states: Sequence[StateSpec], state_version: str) -> None:
        # No tensors is valid (a stateless model, e.g. a per-frame classifier): the value is
        # then the header alone, which still records the stream's last applied offset.
        if len(spec_states) > 255:
            raise ValueError("at most 255 state tensors")
        for s in spec_states:
            if s.dtype != "float32":
                raise ValueError(f"state {s.name!r}: only float32 is supported")
        version = state_version.encode("ascii")
        if not 0 < len(version) <= 255:
            raise ValueError("state_version must be 1..255 ASCII characters")
        self.state_version = state_version
        self._shapes = tuple((s.name, s.layers, s.hidden) for s in spec_states)
        self._version_bytes = version
        self._head = MAGIC + bytes((FORMAT_VERSION, DTYPE_FLOAT32, len(spec_states), len(version)))
        layout = version + b"".join(
            _SHAPE.pack(layers, hidden) for _, layers, hidden in self._shapes
        )
        self._data_start = _padded(HEADER_FIXED_SIZE + len(layout))
        self._layout = layout + bytes(self._data_start - HEADER_FIXED_SIZE - len(layout))
        self._counts = tuple(layers * hidden for _, layers, hidden in self._shapes)
        self.size = self._data_start + 4 * sum(self._counts)
        views = []
        pos = self._data_start
        for (name, layers, hidden), count in zip(self._shapes, self._counts, strict=True):
            views.append((name, (layers, hidden), pos))
            pos += 4 * count
        self._views = tuple(views)

    # -- encode ---------------------------------------------------------------------------

    def encode(self, state: StoredState) -> bytes:
        """The stored bytes of ``state``; ValueError when it does not fit the spec."""
        tensors = state.tensors
        if len(tensors) != len(self._shapes):
            raise ValueError(
                f"expected states {[n for n, _, _ in self._shapes]}, got {sorted(tensors)}"
            )
        earlier = state.earlier[: MAX_PARTITIONS - 1]
        table = [v for entry in earlier for v in entry]
        table += [0] * (2 * (MAX_PARTITIONS - 1) - len(table))
        try:
            parts = [
                _FIXED.pack(
                    MAGIC,
                    FORMAT_VERSION,
                    DTYPE_FLOAT32,
                    len(self._shapes),
                    len(self._version_bytes),
                    state.partition,
                    state.offset,
                    state.updated_ms,
                    len(earlier),
                ),
                _EARLIER_ALL.pack(*table),
                self._layout,
            ]
        except struct.error as exc:
            raise ValueError(f"partition/offset/updated_ms out of range: {exc}") from exc
        for name, layers, hidden in self._shapes:
            try:
                t = tensors[name]
            except KeyError:
                raise ValueError(f"state {name!r} missing") from None
            if t.shape != (layers, hidden):
                raise ValueError(f"state {name!r}: shape {t.shape} != {(layers, hidden)}")
            parts.append(np.ascontiguousarray(t, dtype=_F32).tobytes())
        return b"".join(parts)

    # -- decode ---------------------------------------------------------------------------

    def decode(self, value: bytes | None) -> ReadResult:
        """Validate and decode one stored value. Never raises on bad data."""
        if value is None:
            return MISSING_RESULT
        start = self._data_start
        if (
            len(value) == self.size
            and value[:8] == self._head
            and value[HEADER_FIXED_SIZE:start] == self._layout
        ):
            partition, offset, updated_ms = _POSITION.unpack_from(value, PARTITION_POS)
            k = value[EARLIER_COUNT_POS]
            if k >= MAX_PARTITIONS:
                return _corrupt(f"{k} earlier partitions, at most {MAX_PARTITIONS - 1}")
            earlier = tuple(
                _EARLIER.unpack_from(value, EARLIER_POS + _EARLIER.size * j) for j in range(k)
            )
            # np.ndarray over the bytes: a read-only view, 4x cheaper than frombuffer+reshape.
            tensors = {name: _ndarray(shape, _F32, value, pos) for name, shape, pos in self._views}
            return _ok(tensors, partition, offset, updated_ms, earlier)
        return self._explain(value)

    def _explain(self, value: bytes) -> ReadResult:
        """Why a value failed the fast check: CORRUPT if unreadable, else MISMATCH."""
        if len(value) < HEADER_FIXED_SIZE:
            return _corrupt(f"{len(value)} bytes, shorter than the {HEADER_FIXED_SIZE}-byte header")
        magic, fmt, dtype, n, vlen, _, _, _, _ = _FIXED.unpack_from(value)
        if magic != MAGIC:
            return _corrupt(f"bad magic {magic!r}")
        if fmt != FORMAT_VERSION:
            return _corrupt(f"unknown format version {fmt}")
        shapes_end = HEADER_FIXED_SIZE + vlen + _SHAPE.size * n
        if len(value) < shapes_end:
            return _corrupt(f"{len(value)} bytes, header needs {shapes_end}")
        version = value[HEADER_FIXED_SIZE : HEADER_FIXED_SIZE + vlen]
        shapes = [
            _SHAPE.unpack_from(value, HEADER_FIXED_SIZE + vlen + _SHAPE.size * i) for i in range(n)
        ]
        itemsize = 4 if dtype == DTYPE_FLOAT32 else None
        if itemsize is not None:
            expected = _padded(shapes_end) + itemsize * sum(a * b for a, b in shapes)
            if len(value) != expected:
                return _corrupt(f"{len(value)} bytes, header describes {expected}")
        if version != self._version_bytes:
            return _mismatch(
                f"state version {version.decode('ascii', 'replace')!r} != {self.state_version!r}"
            )
        if dtype != DTYPE_FLOAT32:
            return _mismatch(f"dtype code {dtype} != {DTYPE_FLOAT32} (float32)")
        want = [(layers, hidden) for _, layers, hidden in self._shapes]
        if [tuple(s) for s in shapes] != want:
            return _mismatch(f"state shapes {shapes} != {want}")
        # Same version and shapes, right length: only the padding can differ.
        return _corrupt("non-zero header padding")


_ndarray = np.ndarray
_new = object.__new__


def _ok(
    tensors: dict[str, FloatArray],
    partition: int,
    offset: int,
    updated_ms: int,
    earlier: tuple[tuple[int, int], ...],
) -> ReadResult:
    # The read path builds two frozen dataclasses per key; filling __dict__ directly skips
    # the frozen __setattr__ guard and halves the cost. Same objects, same fields.
    state = _new(StoredState)
    sd = state.__dict__
    sd["tensors"] = tensors
    sd["partition"] = partition
    sd["offset"] = offset
    sd["updated_ms"] = updated_ms
    sd["earlier"] = earlier
    result = _new(ReadResult)
    rd = result.__dict__
    rd["status"] = ReadStatus.OK
    rd["state"] = state
    rd["detail"] = ""
    return result


def _corrupt(detail: str) -> ReadResult:
    return ReadResult(ReadStatus.CORRUPT, None, detail)


def _mismatch(detail: str) -> ReadResult:
    return ReadResult(ReadStatus.MISMATCH, None, detail)


__all__ = [
    "EARLIER_COUNT_POS",
    "EARLIER_POS",
    "HEADER_FIXED_SIZE",
    "MAGIC",
    "MAX_PARTITIONS",
    "MISSING_RESULT",
    "OFFSET_POS",
    "PARTITION_POS",
    "ReadResult",
    "ReadStatus",
    "StateCodec",
    "StoredState",
    "applied_after",
]
