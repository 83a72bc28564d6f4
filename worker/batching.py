"""Grouping a batch by stream and advancing every stream with as few ``session.run`` as possible.

Wave k holds the k-th step of every stream that has one. Streams are sorted by their number
of steps, longest first, so the streams active in wave k are always a prefix of the state
arrays: wave k reads and writes ``state[:, :n_k, :]`` with no gather or scatter.

Pure logic (numpy and a session-like object), run in the inference thread.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from statecast.contract.spec import StateSpec
from statecast.worker.array_predictions import finite_rows_for, predictions_for
from statecast.worker.codecs.base import (
    Array,
    Codec,
    Decoded,
    Finished,
    RawRecord,
    StepInputs,
    generates,
)

State = dict[str, Array]  # state name -> [layers, hidden] float32, one stream


class StepRunner(Protocol):
    def run(self, feeds: Mapping[str, Array]) -> dict[str, Array]: ...


@dataclass
class StreamWork:
    """One stream's records of this batch, in offset order, with the state they start from."""

    key: str
    stream: str
    partition: int
    records: list[tuple[RawRecord, Decoded]] = field(default_factory=list)
    initial: State | None = None  # None: a zero state (new stream or reset)
    # (partition, last applied offset) of every partition the stream used before this
    # batch, most recent first (the offset fence's table; empty for a new stream).
    applied: tuple[tuple[int, int], ...] = ()


@dataclass(frozen=True)
class WaveOutcome:
    # (record, decoded, prediction) for every record, grouped by stream, offset order kept.
    predictions: list[tuple[RawRecord, Decoded, dict[str, Any]]]
    final_states: list[State]  # aligned with the input ``streams``
    waves: int
    # Whether each final state is all finite (aligned with ``streams``), checked for the
    # whole batch at once; empty when not computed.
    finite_states: list[bool] = field(default_factory=list)
    # Whether each prediction is all finite (aligned with ``predictions``), from the output
    # rows; empty when the codec's predictions are not just its rows (then the encoded
    # bytes are checked).
    finite_predictions: list[bool] = field(default_factory=list)


def group_by_stream(
    pairs: Iterable[tuple[RawRecord, Decoded]], key_of: Callable[[str], str]
) -> dict[str, StreamWork]:
    """Stream id -> its work, streams in first-seen order, each keeping its records in the
    order given (offset order). ``key_of`` (the state key) runs once per stream."""
    groups: dict[str, StreamWork] = {}
    for pair in pairs:
        stream = pair[1].stream
        work = groups.get(stream)
        if work is None:
            work = groups[stream] = StreamWork(key_of(stream), stream, pair[0].partition)
        work.records.append(pair)
    return groups


def run_waves(
    session: StepRunner,
    codec: Codec,
    state_specs: Sequence[StateSpec],
    streams: Sequence[StreamWork],
) -> WaveOutcome:
    n = len(streams)
    # Flatten each stream's records into steps: (inputs, index of the record it finishes
    # or -1, whether it must start from a zero state).
    flat: list[list[tuple[StepInputs, int, bool]]] = []
    records: list[tuple[RawRecord, Decoded]] = []
    any_fresh = False
    for work in streams:
        steps: list[tuple[StepInputs, int, bool]] = []
        for pair in work.records:
            dec = pair[1]
            rid = len(records)
            records.append(pair)
            dsteps = dec.steps
            if len(dsteps) == 1 and not dec.fresh_state:  # the common case, kept cheap
                steps.append((dsteps[0], rid, False))
                continue
            last = len(dsteps) - 1
            any_fresh = any_fresh or dec.fresh_state
            for j, step in enumerate(dsteps):
                steps.append((step, rid if j == last else -1, dec.fresh_state and j == 0))
        flat.append(steps)
    order = sorted(range(n), key=lambda s: -len(flat[s]))
    flat = [flat[s] for s in order]
    states = _initial_states(state_specs, [streams[s].initial for s in order])
    preds: list[dict[str, Any] | None] = [None] * len(records)
    # Generative codecs get each record's outputs and a copy of its state after the waves;
    # other codecs pay nothing for this.
    finished: list[Finished | None] | None = [None] * len(records) if generates(codec) else None
    depth = len(flat[0]) if flat else 0
    active = n
    predict = predictions_for(codec)
    row_check = finite_rows_for(codec)
    pred_ok: list[bool] | None = [True] * len(records) if row_check is not None else None
    for k in range(depth):
        while active and len(flat[active - 1]) <= k:
            active -= 1
        wave = [flat[s][k] for s in range(active)]
        if any_fresh:
            for s, (_, _, fresh) in enumerate(wave):
                if fresh:
                    for arr in states.values():
                        arr[:, s, :] = 0.0
        feeds = codec.stack([w[0] for w in wave])
        for spec in state_specs:
            feeds[spec.input_name] = np.ascontiguousarray(states[spec.name][:, :active, :])
        out = session.run(feeds)
        for spec in state_specs:
            states[spec.name][:, :active, :] = out[spec.output_name]
        finishing = [s for s, w in enumerate(wave) if w[1] >= 0]
        if not finishing:
            continue
        pred_out = {name: arr for name, arr in out.items() if not name.startswith("state_out.")}
        if len(finishing) != active:
            pred_out = {name: arr[finishing] for name, arr in pred_out.items()}
        for s, p in zip(finishing, predict(pred_out), strict=True):
            preds[wave[s][1]] = p
        if row_check is not None and pred_ok is not None:
            rows_ok = row_check(pred_out)
            if not rows_ok.all():
                for i in np.flatnonzero(~rows_ok).tolist():
                    pred_ok[wave[finishing[i]][1]] = False
        if finished is not None:
            for i, s in enumerate(finishing):
                raw = records[wave[s][1]][0]
                finished[wave[s][1]] = Finished(
                    f"{raw.topic}/{raw.partition}/{raw.offset}",
                    {name: arr[i] for name, arr in pred_out.items()},
                    {spec.name: states[spec.name][:, s, :].copy() for spec in state_specs},
                )
    if finished is not None:
        _merge_generated(session, codec, finished, preds)
    final: list[State] = [{} for _ in range(n)]
    for pos, s in enumerate(order):
        final[s] = {spec.name: states[spec.name][:, pos, :].copy() for spec in state_specs}
    ok = np.ones(n, dtype=bool)
    for arr in states.values():
        ok &= np.isfinite(arr).all(axis=(0, 2))
    ok_sorted = ok.tolist()
    finite = [True] * n
    for pos, s in enumerate(order):
        finite[s] = ok_sorted[pos]
    return WaveOutcome(
        predictions=[
            (raw, dec, p) for (raw, dec), p in zip(records, preds, strict=True) if p is not None
        ],
        final_states=final,
        waves=depth,
        finite_states=finite,
        finite_predictions=[]
        if pred_ok is None
        else [ok for ok, p in zip(pred_ok, preds, strict=True) if p is not None],
    )


def _merge_generated(
    session: StepRunner,
    codec: Codec,
    finished: list[Finished | None],
    preds: list[dict[str, Any] | None],
) -> None:
    """One ``generate`` call for every finished record of the batch (batched across
    streams); each result is merged into its record's prediction."""
    done = [(rid, f) for rid, f in enumerate(finished) if f is not None]
    if not done:
        return
    extra = codec.generate([f for _, f in done], session)  # type: ignore[attr-defined]
    for (rid, _), more in zip(done, extra, strict=True):
        pred = preds[rid]
        if pred is not None and more:
            preds[rid] = {**pred, **more}


def _initial_states(
    state_specs: Sequence[StateSpec], initial: Sequence[State | None]
) -> dict[str, Array]:
    """``[layers, N, hidden]`` per state, rows in ``initial``'s order, zeros for None."""
    out: dict[str, Array] = {}
    for spec in state_specs:
        arr = np.zeros((spec.layers, len(initial), spec.hidden), dtype=np.float32)
        for s, st in enumerate(initial):
            if st is not None:
                arr[:, s, :] = st[spec.name]
        out[spec.name] = arr
    return out
