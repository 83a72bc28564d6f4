"""What the worker publishes: one prediction per applied record, one dead letter per record
it will not apply.

A prediction's id is ``<topic>/<partition>/<offset>`` of its input record, so a replay after
a crash publishes the same id and a consumer can drop the duplicate (DESIGN.md, "Events").

A dead letter keeps the original key and value bytes untouched; headers carry the reason
code (a metric label), a short human detail and ``<topic>/<partition>/<offset>`` of the
source record, so a consumer of the dead-letter topic can find or replay it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from statecast.worker.codecs.base import Decoded, RawRecord
from statecast.worker.publisher import OutMessage

# Reasons the worker core adds to the codecs' (worker.codecs.base.REASON_*).
REASON_STATE_MISMATCH = "state_mismatch"
MAX_DETAIL_CHARS = 500


@dataclass(frozen=True)
class DeadLetter:
    record: RawRecord
    reason: str
    detail: str


def dead_letter_message(d: DeadLetter) -> OutMessage:
    r = d.record
    headers = (
        ("statecast.reason", d.reason.encode()),
        ("statecast.detail", d.detail[:MAX_DETAIL_CHARS].encode(errors="replace")),
        ("statecast.source", f"{r.topic}/{r.partition}/{r.offset}".encode()),
    )
    return OutMessage(r.partition, r.key, r.value or b"", r.timestamp_ms, headers)


def prediction_messages(
    model_ref: str,
    predictions: list[tuple[RawRecord, Decoded, dict[str, Any]]],
    now_ms: int,
    dumps: Callable[[Any], bytes] = orjson.dumps,
) -> list[OutMessage]:
    """One prediction message per ``(record, decoded, prediction)``, keyed by stream, on the
    partition number of its input record (so a stream's predictions stay in order)."""
    return [
        OutMessage(
            raw.partition,
            dec.stream.encode(),
            dumps(
                {
                    "id": f"{raw.topic}/{raw.partition}/{raw.offset}",
                    "stream": dec.stream,
                    "model": model_ref,
                    "ts": dec.ts_ms,
                    "prediction": pred,
                    "latency_ms": now_ms - raw.timestamp_ms,
                }
            ),
        )
        for raw, dec, pred in predictions
    ]
