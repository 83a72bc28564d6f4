"""The offset fence keeps the last applied offset of every partition a stream has used
(bounded), in the stored value and in the Lua fenced write; a key holding another Redis
type is replaced (the stream resets), never a failed batch."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable

import numpy as np
import pytest

from statecast.contract.spec import StateSpec
from statecast.worker.state.codec import (
    MAX_PARTITIONS,
    ReadStatus,
    StateCodec,
    StoredState,
    applied_after,
)
from statecast.worker.state.redis_conn import RedisClient, RedisSettings, connect_redis
from statecast.worker.state.store import StateStore, state_key

SPECS = (StateSpec("h", 1, 4),)
VERSION = "s0fence"


def state(value: float, partition: int, offset: int, earlier: tuple = ()) -> StoredState:
    tensors = {"h": np.full((1, 4), value, np.float32)}
    return StoredState(tensors, partition, offset, int(time.time() * 1000), tuple(earlier))


# -- the table -----------------------------------------------------------------------------


@pytest.mark.unit
def test_table_round_trips_through_the_stored_bytes() -> None:
    codec = StateCodec(SPECS, VERSION)
    st = state(1.5, 1, 40, ((0, 17), (3, 2)))
    back = codec.decode(codec.encode(st))
    assert back.status is ReadStatus.OK
    assert back.state is not None
    assert back.state.positions() == ((1, 40), (0, 17), (3, 2))
    assert back.state.offsets() == {1: 40, 0: 17, 3: 2}


@pytest.mark.unit
def test_applied_after_keeps_the_last_offset_of_each_partition_most_recent_first() -> None:
    assert applied_after((), [(0, 5), (0, 6)]) == (0, 6, ())
    assert applied_after(((0, 6),), [(1, 0)]) == (1, 0, ((0, 6),))
    # p0 used again: it moves to the front, p1 keeps its offset behind it.
    assert applied_after(((1, 0), (0, 6)), [(0, 7), (1, 1), (0, 8)]) == (0, 8, ((1, 1),))


@pytest.mark.unit
def test_the_table_is_bounded_dropping_the_least_recently_used() -> None:
    start = tuple((p, 100 + p) for p in range(MAX_PARTITIONS))  # p0 most recent
    partition, offset, earlier = applied_after(start, [(99, 1)])
    assert (partition, offset) == (99, 1)
    assert len(earlier) == MAX_PARTITIONS - 1
    assert [p for p, _ in earlier] == list(range(MAX_PARTITIONS - 1))  # p7 dropped
    codec = StateCodec(SPECS, VERSION)
    back = codec.decode(codec.encode(state(0.0, partition, offset, earlier)))
    assert back.state is not None
    assert back.state.earlier == earlier


@pytest.mark.unit
def test_a_table_count_over_the_bound_is_corrupt() -> None:
    codec = StateCodec(SPECS, VERSION)
    raw = bytearray(codec.encode(state(0.0, 0, 1)))
    raw[28] = MAX_PARTITIONS
    assert codec.decode(bytes(raw)).status is ReadStatus.CORRUPT


# -- the Lua fenced write against a real Redis ---------------------------------------------


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[RedisClient]:
    c = await connect_redis(RedisSettings(url=redis_url))
    yield c
    await c.aclose()


@pytest.mark.integration
async def test_lua_fence_holds_for_every_partition_in_the_table(
    client: RedisClient, unique: Callable[[str], str]
) -> None:
    store = StateStore(client, 60, SPECS, VERSION)
    key = state_key(unique("fence"), "m", VERSION, "m1")
    # m1 applied p0/o0, then p1/o0: the stored value knows both.
    assert await store.write_many([(key, state(1.0, 0, 0))]) == []
    assert await store.write_many([(key, state(2.0, 1, 0, ((0, 0),)))]) == []
    # A replay of p0/o0 (the double apply) is fenced although p1 was last.
    assert await store.write_many([(key, state(9.0, 0, 0, ((1, 0),)))]) == [key]
    # A write computed from a state that had not seen p1/o0 moves p1 backwards: fenced.
    assert await store.write_many([(key, state(9.0, 0, 1))]) == [key]
    (res,) = await store.read_many([key])
    assert res.state is not None
    assert float(res.state.tensors["h"][0, 0]) == 2.0
    # The real next step (p0/o1 after p1/o0) goes through.
    assert await store.write_many([(key, state(3.0, 0, 1, ((1, 0),)))]) == []
    (res,) = await store.read_many([key])
    assert res.state is not None
    assert res.state.offsets() == {0: 1, 1: 0}


@pytest.mark.integration
async def test_a_key_of_another_redis_type_is_replaced_and_reported(
    client: RedisClient, unique: Callable[[str], str]
) -> None:
    store = StateStore(client, 60, SPECS, VERSION)
    prefix = unique("wrongtype")
    keys = [state_key(prefix, "m", VERSION, f"s{i}") for i in range(3)]
    await client.rpush(keys[1], b"not a state")
    # The read sees nothing it can use (MGET answers nil for a list): the stream resets.
    assert [r.status for r in await store.read_many(keys)] == [ReadStatus.MISSING] * 3
    result = await store.write_many_detailed(
        [(k, state(float(i), 0, 1)) for i, k in enumerate(keys)]
    )
    assert result.replaced == [keys[1]]
    assert result.skipped == []
    # Every key of the batch was written, the one after the list too.
    values = [r.state.tensors["h"][0, 0] for r in await store.read_many(keys) if r.state]
    assert values == [0.0, 1.0, 2.0]
    assert await client.type(keys[1]) == b"string"
