"""The Redis state store against a real redis-server and a real 3-node Redis Cluster."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import replace

import numpy as np
import pytest
from redis.crc import key_slot
from redis.exceptions import ConnectionError as RedisConnectionError

from statecast.contract.spec import StateSpec
from statecast.worker.devstack import Service
from statecast.worker.state.redis_conn import RedisClient, RedisSettings, connect_redis
from statecast.worker.state.store import (
    FENCED_WRITE_SHA,
    ReadStatus,
    StateStore,
    StoredState,
    state_key,
)
from tests.fixtures.redis_cluster import RedisClusterHandle, redis_cluster

pytestmark = pytest.mark.integration

SPECS = (StateSpec("h", 1, 16), StateSpec("c", 1, 16))
VERSION = "s00000000test"
TTL_S = 120


def _state(value: float, offset: int, partition: int = 0) -> StoredState:
    tensors = {s.name: np.full((s.layers, s.hidden), value, np.float32) for s in SPECS}
    return StoredState(
        tensors, partition=partition, offset=offset, updated_ms=int(time.time() * 1000)
    )


def _keys(prefix: str, n: int) -> list[str]:
    return [state_key(prefix, "m", VERSION, f"stream:{i}") for i in range(n)]


def _value(result_state: StoredState | None) -> float:
    assert result_state is not None
    return float(result_state.tensors["h"][0, 0])


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[RedisClient]:
    c = await connect_redis(RedisSettings(url=redis_url))
    yield c
    await c.aclose()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterHandle]:
    with redis_cluster(tmp_path_factory.mktemp("cluster")) as handle:
        yield handle


@pytest.fixture
async def cluster_client(cluster: RedisClusterHandle) -> AsyncIterator[RedisClient]:
    c = await connect_redis(RedisSettings(url=cluster.url, cluster=True))
    yield c
    await c.aclose()


def test_state_key_layout() -> None:
    assert state_key("sc", "sensor_lstm", "sabc", "meter:7") == "sc:sensor_lstm:sabc:meter:7"


async def test_round_trip_and_missing_keep_input_order(
    client: RedisClient, unique: Callable[[str], str]
) -> None:
    store = StateStore(client, TTL_S, SPECS, VERSION)
    keys = _keys(unique("st"), 20)
    assert [r.status for r in await store.read_many(keys)] == [ReadStatus.MISSING] * 20
    await store.write_many(
        [(k, _state(i, offset=100 + i, partition=i % 3)) for i, k in enumerate(keys[:10])]
    )
    results = await store.read_many(list(reversed(keys)))
    assert [r.status for r in results] == [ReadStatus.MISSING] * 10 + [ReadStatus.OK] * 10
    for r, i in zip(results[10:], range(9, -1, -1), strict=True):
        assert r.state is not None
        assert (_value(r.state), r.state.offset, r.state.partition) == (i, 100 + i, i % 3)
    assert await store.read_many([]) == []
    await store.write_many([])


async def test_every_write_sets_the_ttl(client: RedisClient, unique: Callable[[str], str]) -> None:
    store = StateStore(client, TTL_S, SPECS, VERSION)
    keys = _keys(unique("ttl"), 5)
    await store.write_many([(k, _state(1.0, 1)) for k in keys])
    for k in keys:
        assert 0 < await client.pttl(k) <= TTL_S * 1000
    await client.persist(keys[0])
    assert await client.pttl(keys[0]) == -1
    await store.write_many([(keys[0], _state(2.0, 2))])
    assert 0 < await client.pttl(keys[0]) <= TTL_S * 1000
    # A write the fence skips still refreshes the TTL: the stream is alive.
    await client.persist(keys[1])
    assert await store.write_many([(keys[1], _state(3.0, 0))]) == [keys[1]]
    assert 0 < await client.pttl(keys[1]) <= TTL_S * 1000


async def test_short_ttl_expires_the_state(
    client: RedisClient, unique: Callable[[str], str]
) -> None:
    store = StateStore(client, 1, SPECS, VERSION)
    key = _keys(unique("exp"), 1)[0]
    await store.write_many([(key, _state(1.0, 1))])
    assert (await store.read_many([key]))[0].status is ReadStatus.OK
    await client.pexpire(key, 1)  # do not wait out a whole second
    for _ in range(500):
        if not await client.exists(key):
            break
        await asyncio.sleep(0.01)
    assert (await store.read_many([key]))[0].status is ReadStatus.MISSING


async def test_offset_fence(client: RedisClient, unique: Callable[[str], str]) -> None:
    store = StateStore(client, TTL_S, SPECS, VERSION)
    k = _keys(unique("fence"), 4)
    big = 2**40 + 5  # beyond 32 bits: the Lua side must read all 8 offset bytes
    await store.write_many(
        [
            (k[0], _state(1.0, 10)),
            (k[1], _state(1.0, 10)),
            (k[2], _state(1.0, big)),
            (k[3], _state(1.0, 10)),
        ]
    )
    skipped = await store.write_many(
        [
            (k[0], _state(2.0, 9)),  # older offset: ignored
            (k[1], _state(2.0, 10)),  # same offset (a replay): ignored
            (k[2], _state(2.0, big + 1)),  # newer: applied
            # The stream moved to partition 1: its table still holds p0/o10, so applied.
            (k[3], replace(_state(2.0, 3, partition=1), earlier=((0, 10),))),
        ]
    )
    assert skipped == [k[0], k[1]]
    results = await store.read_many(k)
    assert [_value(r.state) for r in results] == [1.0, 1.0, 2.0, 2.0]
    assert [r.state.offset for r in results if r.state] == [10, 10, big + 1, 3]
    # A newer offset of the fenced key now goes through.
    assert await store.write_many([(k[0], _state(3.0, 11))]) == []
    assert _value((await store.read_many([k[0]]))[0].state) == 3.0


async def test_duplicate_keys_in_one_batch_apply_in_order(
    client: RedisClient, unique: Callable[[str], str]
) -> None:
    store = StateStore(client, TTL_S, SPECS, VERSION)
    k = _keys(unique("dup"), 1)[0]
    skipped = await store.write_many(
        [(k, _state(1.0, 5)), (k, _state(2.0, 6)), (k, _state(9.0, 6))]
    )
    assert skipped == [k]
    assert _value((await store.read_many([k]))[0].state) == 2.0


async def test_corrupt_and_mismatched_values_are_reported_and_overwritten(
    client: RedisClient, unique: Callable[[str], str]
) -> None:
    store = StateStore(client, TTL_S, SPECS, VERSION)
    k = _keys(unique("bad"), 3)
    other = StateStore(client, TTL_S, (StateSpec("h", 1, 8), StateSpec("c", 1, 8)), VERSION)
    await other.write_many(
        [(k[0], StoredState({n: np.ones((1, 8), np.float32) for n in "hc"}, 0, 50, 1))]
    )
    await client.set(k[1], b"not a state at all, but long enough for a header")
    await client.set(k[2], b"x")
    results = await store.read_many(k)
    assert [r.status for r in results] == [
        ReadStatus.MISMATCH,
        ReadStatus.CORRUPT,
        ReadStatus.CORRUPT,
    ]
    assert all(r.state is None and r.detail for r in results)
    # A reset state written at a low offset replaces what could not be read.
    assert await store.write_many([(key, _state(4.0, 0)) for key in k]) == []
    assert [r.status for r in await store.read_many(k)] == [ReadStatus.OK] * 3


async def test_script_flushed_is_reloaded(
    client: RedisClient, unique: Callable[[str], str]
) -> None:
    store = StateStore(client, TTL_S, SPECS, VERSION)
    k = _keys(unique("noscript"), 2)
    await store.write_many([(k[0], _state(1.0, 1))])
    await client.script_flush()
    assert await client.script_exists(FENCED_WRITE_SHA) == [False]
    await store.write_many([(k[1], _state(1.0, 1))])
    assert await client.script_exists(FENCED_WRITE_SHA) == [True]
    assert [r.status for r in await store.read_many(k)] == [ReadStatus.OK] * 2


async def test_redis_restart_between_calls(private_redis: Service) -> None:
    url = f"redis://{private_redis.host}:{private_redis.port}/0"
    client = await connect_redis(RedisSettings(url=url, socket_connect_timeout_s=1.0))
    try:
        store = StateStore(client, TTL_S, SPECS, VERSION)
        keys = _keys("restart", 3)
        await store.write_many([(k, _state(1.0, 1)) for k in keys])
        assert [r.status for r in await store.read_many(keys)] == [ReadStatus.OK] * 3
        private_redis.kill()
        with pytest.raises(RedisConnectionError):
            await store.read_many(keys)
        with pytest.raises(RedisConnectionError):
            await store.write_many([(keys[0], _state(2.0, 2))])
        private_redis.start(timeout=30, detach=False)
        # No persistence in the test server: the states are gone, and so is the script.
        assert [r.status for r in await store.read_many(keys)] == [ReadStatus.MISSING] * 3
        await store.write_many([(k, _state(3.0, 3)) for k in keys])
        results = await store.read_many(keys)
        assert [_value(r.state) for r in results] == [3.0] * 3
    finally:
        await client.aclose()


async def test_cluster_batch_across_slots_and_nodes(
    cluster: RedisClusterHandle, cluster_client: RedisClient, unique: Callable[[str], str]
) -> None:
    store = StateStore(cluster_client, TTL_S, SPECS, VERSION)
    keys = _keys(unique("cl"), 60)
    slots = {key_slot(k.encode()) for k in keys}
    assert len(slots) > 50
    await store.write_many([(k, _state(i, offset=i)) for i, k in enumerate(keys)])
    # The keys really are spread over all three primaries.
    owners = set()
    for port in cluster.ports:
        node = await connect_redis(RedisSettings(url=f"redis://127.0.0.1:{port}/0"))
        try:
            if await node.dbsize() > 0:
                owners.add(port)
        finally:
            await node.aclose()
    assert owners == set(cluster.ports)
    order = [*keys[::-1], keys[0]]
    results = await store.read_many(order)
    assert [r.status for r in results] == [ReadStatus.OK] * len(order)
    assert [_value(r.state) for r in results] == [float(i) for i in range(59, -1, -1)] + [0.0]
    for k in keys[:5]:
        assert 0 < await cluster_client.pttl(k) <= TTL_S * 1000
    # Fence on the cluster: even-indexed streams get a stale write, odd ones a newer one.
    skipped = await store.write_many(
        [(k, _state(-1.0, offset=i - 1 if i % 2 == 0 else i + 1)) for i, k in enumerate(keys)]
    )
    assert sorted(skipped) == sorted(keys[0::2])
    results = await store.read_many(keys)
    assert [_value(r.state) for r in results] == [
        float(i) if i % 2 == 0 else -1.0 for i in range(60)
    ]


async def test_cluster_script_flushed_is_reloaded(
    cluster_client: RedisClient, unique: Callable[[str], str]
) -> None:
    store = StateStore(cluster_client, TTL_S, SPECS, VERSION)
    keys = _keys(unique("clns"), 30)
    await store.write_many([(k, _state(1.0, 1)) for k in keys])
    await cluster_client.script_flush()
    assert await store.write_many([(k, _state(2.0, 2)) for k in keys]) == []
    assert [_value(r.state) for r in await store.read_many(keys)] == [2.0] * 30


@pytest.mark.parametrize("mode", ["single", "cluster"])
async def test_client_cpu_per_key_at_1k_keys(
    mode: str, redis_url: str, cluster: RedisClusterHandle, unique: Callable[[str], str]
) -> None:
    """A figure, not an assertion: client CPU per key of read_many / write_many."""
    url = redis_url if mode == "single" else cluster.url
    client = await connect_redis(RedisSettings(url=url, cluster=mode == "cluster"))
    try:
        specs = (StateSpec("h", 1, 64), StateSpec("c", 1, 64))
        store = StateStore(client, TTL_S, specs, VERSION)
        keys = _keys(unique("bench"), 1000)
        rng = np.random.default_rng(0)
        batches = [
            [
                (
                    k,
                    StoredState(
                        {s.name: rng.standard_normal((1, 64)).astype(np.float32) for s in specs},
                        0,
                        r * 10 + 1,
                        1,
                    ),
                )
                for k in keys
            ]
            for r in range(6)
        ]
        await store.write_many(batches[0])  # load the script, warm the pool
        await store.read_many(keys)
        # The machine is shared: report the best round (least disturbed), and the median.
        write_cpu, read_cpu, write_wall, read_wall = [], [], [], []
        for batch in batches[1:]:
            cpu0, wall0 = time.process_time(), time.perf_counter()
            await store.write_many(batch)
            write_cpu.append(time.process_time() - cpu0)
            write_wall.append(time.perf_counter() - wall0)
            cpu0, wall0 = time.process_time(), time.perf_counter()
            results = await store.read_many(keys)
            read_cpu.append(time.process_time() - cpu0)
            read_wall.append(time.perf_counter() - wall0)
            assert all(r.status is ReadStatus.OK for r in results)

        def us(xs: list[float]) -> str:
            return f"{min(xs) * 1e3:.1f} (median {statistics.median(xs) * 1e3:.1f})"

        print(
            f"\n[state store {mode}, 1k keys, 2 x [1,64] float32, us/key] "
            f"read_many client CPU {us(read_cpu)}, wall {us(read_wall)}; "
            f"write_many client CPU {us(write_cpu)}, wall {us(write_wall)}"
        )
    finally:
        await client.aclose()


def test_ttl_must_be_positive() -> None:
    with pytest.raises(ValueError, match="TTL"):
        StateStore(None, 0, SPECS, VERSION)  # type: ignore[arg-type]
