"""Per-record isolation after decoding: one record's failure never fails its batch.

Each step a lane runs over a whole batch has a careful fallback that finds the record (or
stream) at fault, dead-letters it with a reason and lets the rest go on:

- **decode**: a codec that raises (a bug, since codecs return rejections) is retried
  record by record; a record that still raises -> ``decode_error``.
- **waves**: ``session.run`` failing for the batch is retried stream by stream; a stream
  that still fails -> all its records of the batch ``inference_error``.
- **outputs**: a stream whose next state or any prediction is not finite (NaN, inf: a
  finite but extreme input can overflow a float32 LSTM) -> all its records of the batch
  ``not_finite_output``, and its state is not advanced: a NaN state would poison every
  later prediction of the stream, and a dead-lettered record must not touch state.
- **encoding**: a prediction orjson cannot encode -> the stream's records of the batch
  ``unencodable``, its state not advanced (the same rule).
- **publishing**: a message the broker refuses for itself (``MessageSizeTooLargeError``,
  any non-connection error) is found by publishing one by one; a prediction that cannot
  be published is replaced by a dead letter (``unpublishable``; its record was applied to
  the stream's state, which its dead letter says), and a dead letter that cannot be
  published is sent again without its value (header ``statecast.truncated``).

Connection-class errors (:mod:`statecast.worker.errors`) are never handled here: they are
outages, retried with backoff by the caller.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from statecast.contract.spec import StateSpec
from statecast.worker.array_predictions import ENCODE
from statecast.worker.batching import State, StepRunner, StreamWork, WaveOutcome, run_waves
from statecast.worker.codecs.base import Codec, Decoded, RawRecord, Rejected
from statecast.worker.errors import is_outage
from statecast.worker.messages import DeadLetter, dead_letter_message, prediction_messages
from statecast.worker.publisher import OutMessage, Publisher

log = logging.getLogger(__name__)

REASON_DECODE_ERROR = "decode_error"
REASON_INFERENCE_ERROR = "inference_error"
REASON_NOT_FINITE_OUTPUT = "not_finite_output"
REASON_UNENCODABLE = "unencodable"
REASON_UNPUBLISHABLE = "unpublishable"
ISOLATION_REASONS = (
    REASON_DECODE_ERROR,
    REASON_INFERENCE_ERROR,
    REASON_NOT_FINITE_OUTPUT,
    REASON_UNENCODABLE,
    REASON_UNPUBLISHABLE,
)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:300]


# -- decode --------------------------------------------------------------------------------


def decode_isolating(codec: Codec, raws: Sequence[RawRecord]) -> list[Decoded | Rejected]:
    """``codec.decode(raws)``; if it raises, record by record."""
    try:
        out = codec.decode(raws)
        if len(out) == len(raws):
            return out
        log.error(
            "codec returned %d results for %d records: decoding one by one", len(out), len(raws)
        )
    except Exception as exc:
        log.error("codec failed on a batch (%s): decoding one by one", _describe(exc))
    results: list[Decoded | Rejected] = []
    for raw in raws:
        try:
            (one,) = codec.decode([raw])
        except Exception as exc:
            one = Rejected(REASON_DECODE_ERROR, _describe(exc))
        results.append(one)
    return results


# -- waves, outputs, encoding --------------------------------------------------------------


@dataclass
class SafeOutcome:
    """The streams that completed cleanly, their predictions, final states and encoded
    messages (all aligned), and the dead letters of the streams that did not."""

    works: list[StreamWork] = field(default_factory=list)
    predictions: list[tuple[RawRecord, Decoded, dict[str, Any]]] = field(default_factory=list)
    final_states: list[State] = field(default_factory=list)
    messages: list[OutMessage] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)
    waves: int = 0


def _finite(value: Any) -> bool:
    if type(value) is float:
        return math.isfinite(value)
    if isinstance(value, np.ndarray):
        return bool(np.isfinite(value).all())
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    if isinstance(value, list | tuple):
        return all(_finite(v) for v in value)
    return True


def _state_finite(state: State) -> bool:
    return all(bool(np.isfinite(arr).all()) for arr in state.values())


def compute_isolating(
    session: StepRunner,
    codec: Codec,
    state_specs: Sequence[StateSpec],
    works: list[StreamWork],
    model_ref: str,
    now_ms: Callable[[], int],
    encode: Callable[[Any], bytes] = ENCODE,
) -> SafeOutcome:
    """Run the waves, screen the outputs and encode the predictions, isolating failures to
    the streams that caused them."""
    out = SafeOutcome()
    try:
        outcomes: list[tuple[list[StreamWork], WaveOutcome]] = [
            (works, run_waves(session, codec, state_specs, works))
        ]
    except Exception as exc:
        log.error("waves failed for a batch (%s): running stream by stream", _describe(exc))
        outcomes = []
        for w in works:
            try:
                outcomes.append(([w], run_waves(session, codec, state_specs, [w])))
            except Exception as one_exc:
                out.dead.extend(
                    DeadLetter(raw, REASON_INFERENCE_ERROR, _describe(one_exc))
                    for raw, _ in w.records
                )
    stamp = now_ms()
    for group, outcome in outcomes:
        out.waves = max(out.waves, outcome.waves)
        preds = outcome.predictions
        # The common case: every record got its prediction, so ``preds`` is in the order of
        # ``group`` and its records, and the whole group encodes in one pass; a stream's
        # share is then a slice. Otherwise (or if any prediction fails to encode) each
        # stream is matched and encoded on its own.
        in_order = len(preds) == sum(len(w.records) for w in group)
        encoded: list[OutMessage] | None = None
        if in_order:
            try:
                encoded = prediction_messages(model_ref, preds, stamp, encode)
            except Exception:  # found and blamed stream by stream below
                encoded = None
        by_record = None if in_order else {id(raw): pred for raw, _, pred in preds}
        # Non-finite predictions: from the output rows when the wave knows them (aligned
        # with ``preds``), else one look at the whole batch for "null" (below).
        flags = outcome.finite_predictions if in_order else []
        if flags:
            suspect = not all(flags)
        else:
            suspect = encoded is None or any(b"null" in m.value for m in encoded)
        finite = outcome.finite_states
        pos = 0
        for i, (w, final) in enumerate(zip(group, outcome.final_states, strict=True)):
            k = len(w.records)
            start = pos
            if by_record is None:
                mine = preds[pos : pos + k]
            else:
                mine = [
                    (raw, dec, by_record[id(raw)]) for raw, dec in w.records if id(raw) in by_record
                ]
            reason, detail = "", ""
            if len(mine) != k:
                reason, detail = REASON_INFERENCE_ERROR, "a record of the stream got no prediction"
            elif not (finite[i] if finite else _state_finite(final)):
                reason, detail = REASON_NOT_FINITE_OUTPUT, "the stream's next state is not finite"
            messages: list[OutMessage] = []
            if not reason:
                if encoded is not None:
                    messages = encoded[pos : pos + k]
                else:
                    try:
                        messages = prediction_messages(model_ref, mine, stamp, encode)
                    except Exception as exc:  # orjson: TypeError, OverflowError, ...
                        reason, detail = REASON_UNENCODABLE, _describe(exc)
            pos += k
            # orjson writes NaN and inf as null: a message without "null" anywhere has only
            # finite numbers (one substring search), the rare rest gets the exact check.
            if (
                not reason
                and suspect
                and (
                    not all(flags[start : start + k])
                    if flags
                    else any(
                        b"null" in m.value and not _finite(p)
                        for m, (_, _, p) in zip(messages, mine, strict=True)
                    )
                )
            ):
                reason, detail = REASON_NOT_FINITE_OUTPUT, "a prediction is not finite"
            if reason:
                out.dead.extend(DeadLetter(raw, reason, detail) for raw, _ in w.records)
                continue
            out.works.append(w)
            out.final_states.append(final)
            out.predictions.extend(mine)
            out.messages.extend(messages)
    return out


# -- publishing ----------------------------------------------------------------------------


async def publish_isolating(
    publisher: Publisher, topic: str, messages: Sequence[OutMessage]
) -> list[tuple[int, BaseException]]:
    """Publish ``messages``; when the batch fails with an error that is not an outage,
    publish them one by one. Returns ``(index, error)`` of the messages the broker refused
    for themselves. Outage errors propagate (the caller retries them)."""
    try:
        await publisher.publish(topic, messages)
        return []
    except Exception as exc:
        if is_outage(exc):
            raise
        log.warning("publishing to %s failed (%s): one message at a time", topic, _describe(exc))
    refused: list[tuple[int, BaseException]] = []
    for i, m in enumerate(messages):
        try:
            await publisher.publish(topic, [m])
        except Exception as exc:
            if is_outage(exc):
                raise
            refused.append((i, exc))
    return refused


def unpublishable(
    predictions: Sequence[tuple[RawRecord, Decoded, dict[str, Any]]],
    refused: Sequence[tuple[int, BaseException]],
) -> list[DeadLetter]:
    """Dead letters for the predictions the broker refused (their records were applied)."""
    return [
        DeadLetter(
            predictions[i][0],
            REASON_UNPUBLISHABLE,
            f"prediction not publishable ({_describe(exc)}); the record was applied to state",
        )
        for i, exc in refused
    ]


async def publish_dead_letters(publisher: Publisher, topic: str, dead: Sequence[DeadLetter]) -> int:
    """Publish dead letters; one the broker refuses goes again without its value. Returns
    how many could not be published at all (logged)."""
    messages = [dead_letter_message(d) for d in dead]
    refused = await publish_isolating(publisher, topic, messages)
    if not refused:
        return 0
    bare = [
        messages[i]._replace(
            value=b"", headers=(*messages[i].headers, ("statecast.truncated", b"1"))
        )
        for i, _ in refused
    ]
    lost = await publish_isolating(publisher, topic, bare)
    for i, exc in lost:
        log.error(
            "dead letter for %s not publishable: %s", dead[refused[i][0]].record, _describe(exc)
        )
    return len(lost)
