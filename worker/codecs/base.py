"""The codec protocol between the kind-agnostic worker core and each model kind.

A codec does three things, each for a whole batch at once (never per event on the loop):

1. ``decode``: raw Kafka records -> one :class:`Decoded` per record, or a
   :class:`Rejected` with a reason code for the dead-letter topic. Runs in a worker thread.
2. ``stack``: the per-record step inputs of one wave -> batched ONNX inputs (``x`` and any
   other non-state inputs, batch axis first; padding ragged inputs is the codec's job).
3. ``predictions``: the ONNX outputs of one wave -> one JSON-able prediction dict per row.

A record may need several steps (a long text split into chunks): ``Decoded.steps`` lists
them in order; the worker runs them as consecutive waves for that stream and publishes one
prediction, from the record's last step.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy.typing as npt

from statecast.contract.spec import ModelSpec

Array = npt.NDArray[Any]
StepInputs = Mapping[str, Array]  # one step of one record: input name -> array, no batch axis


@dataclass(frozen=True)
class RawRecord:
    """The parts of a Kafka record a codec may look at."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None


@dataclass(frozen=True)
class Decoded:
    stream: str
    ts_ms: int
    steps: tuple[StepInputs, ...]
    # True when this record must start from a zero state (per-message scoring).
    fresh_state: bool = False


@dataclass(frozen=True)
class Rejected:
    """A record that goes to the dead-letter topic. ``reason`` is a short metric label."""

    reason: str
    detail: str


class Codec(Protocol):
    spec: ModelSpec

    def __init__(self, spec: ModelSpec, options: Mapping[str, str], model_dir: Path) -> None: ...

    def decode(self, records: Sequence[RawRecord]) -> list[Decoded | Rejected]: ...

    def stack(self, steps: Sequence[StepInputs]) -> dict[str, Array]: ...

    def predictions(self, outputs: Mapping[str, Array]) -> list[dict[str, Any]]: ...


# Reason codes shared by every codec (codecs may add their own, lower_snake_case).
REASON_NOT_JSON = "not_json"
REASON_SCHEMA = "schema"
REASON_MISSING_FEATURE = "missing_feature"
REASON_EXTRA_FEATURE = "extra_feature"
REASON_NOT_FINITE = "not_finite"
REASON_WRONG_TYPE = "wrong_type"
REASON_TOO_LARGE = "too_large"
REASON_NO_ROUTE = "no_route"
REASON_EMPTY = "empty"
REASON_UNDECODABLE = "undecodable"
REASON_WRONG_SIZE = "wrong_size"

# -- input budgets shared by every route (docs/hostile-input.md lists them all) -------------
#
# Each budget is checked before the step it protects (parsing, normalising, tokenizing,
# decoding pixels), so a hostile record costs little more than reading its bytes.

REASON_NO_KEY = "no_key"
REASON_KEY_MISMATCH = "key_mismatch"
REASON_STREAM_TOO_LONG = "stream_too_long"
REASON_TS_OUT_OF_RANGE = "ts_out_of_range"
REASON_TOO_MANY_TOKENS = "too_many_tokens"
REASON_TOO_MANY_SCANS = "too_many_scans"
REASON_PROGRESSIVE = "progressive"

# A stream id becomes part of a Redis key and of every prediction message: 256 bytes is
# longer than any real sensor/ticker/camera/conversation id and keeps both small.
DEFAULT_MAX_STREAM_BYTES = 256
# Epoch milliseconds must fit a signed 64-bit integer: the prediction carries ``ts`` and
# JSON encoders (orjson) refuse larger integers.
INT64_MIN = -(1 << 63)
INT64_MAX = (1 << 63) - 1
STREAM_FROM = ("body", "key")
STREAM_OPTIONS = frozenset({"max_stream_bytes", "stream_from"})


def positive_int(options: Mapping[str, str], name: str, default: int) -> int:
    """A route option that must be a positive integer (``ValueError`` naming it if not)."""
    raw = options.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"route option {name} must be an integer, got {raw!r}") from None
    if value < 1:
        raise ValueError(f"route option {name} must be positive, got {value}")
    return value


def in_int64(value: int) -> bool:
    return INT64_MIN <= value <= INT64_MAX


@dataclass(frozen=True)
class StreamIdentity:
    """Where a record's stream id comes from, and its length budget.

    The Kafka key is the stream id on every route (producers key by stream, so a stream
    stays in one partition and in order). ``stream_from=body`` (the default for JSON
    routes): the body's ``stream`` names it and must equal the key when there is one
    (``key_mismatch`` otherwise: a record must not advance a stream it was not keyed as).
    A record without a key is taken by its body (unkeyed producers exist; the fence copes
    with a stream spread over partitions). ``stream_from=key``: the key alone names the
    stream, a body ``stream`` is ignored and a record without a key is ``no_key``.
    """

    max_bytes: int = DEFAULT_MAX_STREAM_BYTES
    from_key: bool = False

    @classmethod
    def from_options(cls, options: Mapping[str, str], from_key: bool = False) -> StreamIdentity:
        source = options.get("stream_from", "key" if from_key else "body")
        if source not in STREAM_FROM:
            raise ValueError(f"route option stream_from must be one of {STREAM_FROM}")
        return cls(
            positive_int(options, "max_stream_bytes", DEFAULT_MAX_STREAM_BYTES), source == "key"
        )

    def from_record_key(self, key: bytes | None) -> str | Rejected:
        """The stream named by the key alone (the length is checked before decoding it)."""
        if not key:
            return Rejected(REASON_NO_KEY, "record has no key (the stream id)")
        if len(key) > self.max_bytes:
            return Rejected(
                REASON_STREAM_TOO_LONG, f"key of {len(key)} bytes > {self.max_bytes} bytes"
            )
        try:
            return key.decode("utf-8")
        except UnicodeDecodeError:
            return Rejected(REASON_SCHEMA, "the key (stream id) is not UTF-8 text")

    def resolve(self, key: bytes | None, body_stream: Any) -> str | Rejected:
        """The stream of a JSON record whose body names ``body_stream`` (a non-empty str,
        checked by the caller; ignored with ``stream_from=key``)."""
        if self.from_key:
            return self.from_record_key(key)
        stream: str = body_stream
        encoded = stream.encode("utf-8", "surrogatepass")
        if len(encoded) > self.max_bytes:
            return Rejected(
                REASON_STREAM_TOO_LONG,
                f"'stream' of {len(encoded)} bytes > {self.max_bytes} bytes",
            )
        if key is not None and key != encoded:
            return Rejected(
                REASON_KEY_MISMATCH,
                f"body names stream {stream[:64]!r}, the key is {key[:64]!r}",
            )
        return stream


# -- generative codecs (text continuation, captions): an optional extra step ---------------


@dataclass(frozen=True)
class Finished:
    """One record whose steps are done, handed to a generative codec after the waves.

    ``outputs``: this record's row of its last step's prediction outputs (no batch axis).
    ``states``: a *copy* of its stream's state right after this record (``[layers,
    hidden]`` per state, no batch axis): generation may advance it freely, the stored state
    advances only over the input that arrived.
    """

    record_id: str  # "<topic>/<partition>/<offset>", the prediction id; seeds the sampling
    outputs: Mapping[str, Array]
    states: Mapping[str, Array]


class StepRunner(Protocol):
    """The route's ONNX step (the same object the waves run), for extra decoder steps."""

    def run(self, feeds: Mapping[str, Array]) -> dict[str, Array]: ...


class GenerativeCodec(Codec, Protocol):
    """A codec that generates after the waves: one dict per :class:`Finished` record, in
    order, each merged into that record's prediction. All records of a poll come in one
    call so generation runs batched across streams (one step call per generated token)."""

    def generate(
        self, finished: Sequence[Finished], runner: StepRunner
    ) -> list[dict[str, Any]]: ...


def generates(codec: object) -> bool:
    """Whether the worker must capture per-record states for ``codec`` (zero cost if not)."""
    return callable(getattr(codec, "generate", None))
