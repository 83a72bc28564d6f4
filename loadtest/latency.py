"""Matching predictions to the inputs they answer, and the latency figures that come out.

A prediction's id is ``<topic>/<partition>/<offset>`` of its input record. The generator
records, per produced batch, the partition, the base offset the broker gave it, the
number of records and the wall-clock time it was handed to the producer
(:class:`SendLog`); :class:`LatencyBook` turns each prediction into one
event-to-prediction latency, counting duplicates (at-least-once delivery allows them) and
ids it cannot match. Pure logic: no I/O, no clock of its own.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

PERCENTILES: tuple[int, ...] = (50, 90, 99)


@dataclass
class _PartitionLog:
    bases: list[int] = field(default_factory=list)
    ends: list[int] = field(default_factory=list)
    sent_at: list[float] = field(default_factory=list)


class SendLog:
    """When each produced input offset was sent, one entry per produced batch."""

    def __init__(self) -> None:
        self._parts: dict[tuple[str, int], _PartitionLog] = {}
        self.records = 0

    def add(self, topic: str, partition: int, base_offset: int, count: int, sent_at: float) -> None:
        log = self._parts.setdefault((topic, partition), _PartitionLog())
        # Acks of one partition arrive in order; insort keeps lookups right if they do not.
        i = bisect.bisect_left(log.bases, base_offset)
        log.bases.insert(i, base_offset)
        log.ends.insert(i, base_offset + count)
        log.sent_at.insert(i, sent_at)
        self.records += count

    def sent_at(self, topic: str, partition: int, offset: int) -> float | None:
        log = self._parts.get((topic, partition))
        if log is None:
            return None
        i = bisect.bisect_right(log.bases, offset) - 1
        if i < 0 or offset >= log.ends[i]:
            return None
        return log.sent_at[i]


def parse_id(pred_id: str) -> tuple[str, int, int] | None:
    """``"sensor/3/1234"`` -> ``("sensor", 3, 1234)``; None when malformed."""
    topic, sep1, rest = pred_id.rpartition("/")
    topic2, sep2, part = topic.rpartition("/")
    if not (sep1 and sep2 and topic2):
        return None
    try:
        return topic2, int(part), int(rest)
    except ValueError:
        return None


def percentiles_ms(latencies_s: Sequence[float] | np.ndarray[Any, Any]) -> dict[str, float]:
    """p50/p90/p99/max in milliseconds (numpy's linear interpolation between ranks)."""
    arr = np.asarray(latencies_s, dtype=np.float64) * 1000.0
    if arr.size == 0:
        return {f"p{p}_ms": float("nan") for p in PERCENTILES} | {"max_ms": float("nan")}
    out = {f"p{p}_ms": float(np.percentile(arr, p)) for p in PERCENTILES}
    out["max_ms"] = float(arr.max())
    return out


class LatencyBook:
    """Predictions seen, matched against a :class:`SendLog`."""

    def __init__(self, sends: SendLog) -> None:
        self._sends = sends
        self._seen: set[str] = set()
        self._latencies: list[float] = []
        # Predictions whose input ack had not been recorded yet when they arrived.
        self._pending: list[tuple[str, float]] = []
        self.duplicates = 0
        self.malformed = 0
        self.first_at: float | None = None
        self.last_at: float | None = None

    @property
    def matched(self) -> int:
        return len(self._latencies)

    @property
    def unmatched(self) -> int:
        return len(self._pending)

    def observe(self, pred_id: str, received_at: float) -> None:
        if pred_id in self._seen:
            self.duplicates += 1
            return
        if not self._match(pred_id, received_at):
            self._pending.append((pred_id, received_at))

    def retry_pending(self) -> None:
        """Match predictions that arrived before their input's ack was recorded."""
        pending, self._pending = self._pending, []
        for pred_id, received_at in pending:
            if pred_id in self._seen:
                self.duplicates += 1
            elif not self._match(pred_id, received_at):
                self._pending.append((pred_id, received_at))

    def _match(self, pred_id: str, received_at: float) -> bool:
        where = parse_id(pred_id)
        if where is None:
            self.malformed += 1
            return True  # counted, never retried
        sent = self._sends.sent_at(*where)
        if sent is None:
            return False
        self._seen.add(pred_id)
        self._latencies.append(received_at - sent)
        if self.first_at is None or received_at < self.first_at:
            self.first_at = received_at
        if self.last_at is None or received_at > self.last_at:
            self.last_at = received_at
        return True

    def latencies_s(self) -> np.ndarray[Any, Any]:
        return np.asarray(self._latencies, dtype=np.float64)

    def summary(self) -> dict[str, Any]:
        """Counts, throughput over the first-to-last prediction window, latency percentiles."""
        window = (
            self.last_at - self.first_at
            if self.first_at is not None and self.last_at is not None
            else 0.0
        )
        return {
            "sent": self._sends.records,
            "matched": self.matched,
            "duplicates": self.duplicates,
            "unmatched": self.unmatched,
            "malformed": self.malformed,
            "window_s": round(window, 3),
            "throughput_eps": round(self.matched / window, 1) if window > 0 else None,
            **{k: round(v, 3) for k, v in percentiles_ms(self._latencies).items()},
        }
