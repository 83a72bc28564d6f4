"""The batch budget: a lane decodes a batch in slices and, past STATECAST_BATCH_BUDGET_MS,
cuts the records left into a batch of their own with the right commit offsets; on revoke a
lane drops the polls it has not started instead of draining them."""

from __future__ import annotations

import time
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka import TopicPartition
from prometheus_client import CollectorRegistry

from statecast.worker.codecs.base import Decoded, RawRecord, Rejected
from statecast.worker.lanes import DECODE_SLICE, Lane, Polled, split_polled
from statecast.worker.metrics import StageTimer, WorkerMetrics
from statecast.worker.settings import Settings

pytestmark = pytest.mark.unit

P0, P1 = TopicPartition("t", 0), TopicPartition("t", 1)


def raw(partition: int, offset: int) -> RawRecord:
    return RawRecord("t", partition, offset, 0, f"s{partition}".encode(), b"v")


def polled_of(*parts: tuple[int, range]) -> Polled:
    """A merged batch: the parts in this order (as later polls append to earlier ones)."""
    out = Polled(polls=len(parts))
    for partition, offsets in parts:
        out.raws += [raw(partition, o) for o in offsets]
        out.offsets[TopicPartition("t", partition)] = offsets[-1] + 1
    return out


def test_split_commits_each_partition_up_to_its_first_record_left() -> None:
    polled = polled_of((0, range(0, 5)), (1, range(0, 3)), (0, range(5, 8)))
    rest = split_polled(polled, 6)  # keeps p0 0-4 and p1 0
    assert [(r.partition, r.offset) for r in polled.raws] == [(0, o) for o in range(5)] + [(1, 0)]
    assert polled.offsets == {P0: 5, P1: 1}
    assert [(r.partition, r.offset) for r in rest.raws] == [(1, 1), (1, 2)] + [
        (0, o) for o in range(5, 8)
    ]
    assert rest.offsets == {P0: 8, P1: 3}
    assert rest.polls == 1


def test_split_moves_a_partition_with_nothing_kept_to_the_rest() -> None:
    polled = polled_of((0, range(0, 4)), (1, range(10, 12)))
    rest = split_polled(polled, 4)
    assert polled.offsets == {P0: 4}
    assert rest.offsets == {P1: 12}


class SlowCodec:
    """Decodes every record, 1 ms each (a stand-in for costly frames)."""

    def decode(self, records: Sequence[RawRecord]) -> list[Decoded | Rejected]:
        time.sleep(0.001 * len(records))
        return [Decoded(r.key.decode() if r.key else "", 1, ()) for r in records]


def lane(budget_ms: int) -> Lane:
    metrics = WorkerMetrics(CollectorRegistry())
    route: Any = SimpleNamespace(
        served=SimpleNamespace(codec=SlowCodec()), states=SimpleNamespace(key=lambda s: s)
    )
    ctx: Any = SimpleNamespace(
        settings=Settings(batch_budget_ms=budget_ms), stages=StageTimer(metrics)
    )
    return Lane("t", route, ctx)


def test_a_batch_past_its_budget_is_cut_after_a_slice() -> None:
    n = DECODE_SLICE * 3
    polled = polled_of((0, range(n)))
    works, rest = lane(budget_ms=1)._decode(polled)  # the first slice alone exceeds 1 ms
    assert rest is not None
    assert len(polled.raws) == DECODE_SLICE
    assert sum(len(w.records) for w in works) == DECODE_SLICE
    assert polled.offsets == {P0: DECODE_SLICE}
    assert rest.raws[0].offset == DECODE_SLICE
    assert rest.offsets == {P0: n}


def test_a_batch_within_its_budget_is_not_cut() -> None:
    polled = polled_of((0, range(10)), (1, range(10)))
    works, rest = lane(budget_ms=60_000)._decode(polled)
    assert rest is None
    assert sum(len(w.records) for w in works) == 20
    assert polled.offsets == {P0: 10, P1: 10}


async def test_revoke_drops_the_polls_a_lane_has_not_started() -> None:
    ln = lane(budget_ms=5000)
    ln.submit(polled_of((0, range(5))))
    ln.submit(polled_of((1, range(7))))
    assert ln.polls_in_flight == 2
    assert ln.discard_queued() == 12
    assert ln.polls_in_flight == 0
    assert ln.queued_polls == 0
    await ln.drain()  # nothing left to wait for
