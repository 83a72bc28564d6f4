"""Dead letters: records the worker will not apply, sent on with their reason and origin.

The message keeps the original key and value bytes untouched; headers carry the reason
code (a metric label), a short human detail and ``<topic>/<partition>/<offset>`` of the
source record, so a consumer of the dead-letter topic can find or replay it.
"""

from __future__ import annotations

from dataclasses import dataclass

from statecast.worker.codecs.base import RawRecord
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
