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
