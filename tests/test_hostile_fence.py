"""The offset fence keeps the last applied offset of every partition a stream has used
(bounded), in the stored value and in the Lua fenced write; a key holding another Redis
type is replaced (the stream resets), never a failed batch."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import numpy as np
import onnx
import orjson
import pytest
from aiokafka import AIOKafkaProducer
from onnx import TensorProto, helper

from statecast.contract.manifest import ManifestEntry, sha256_file, upsert_entry
from statecast.contract.spec import SPEC_KEY, ModelSpec, OutputSpec, StateSpec, TensorSpec
from statecast.loadtest.topics import ensure_topics
from statecast.worker.routing import Route
from statecast.worker.settings import KafkaSettings, Settings
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


def state(
    value: float, partition: int, offset: int, earlier: tuple[tuple[int, int], ...] = ()
) -> StoredState:
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


# -- kill -9 with one stream spread over two partitions ------------------------------------


def _counter_model(root: Path) -> tuple[Path, ModelSpec]:
    """A step model whose state counts the records applied (h += demand): exactly-once
    holds iff the final count equals the records sent, whatever the partition interleaving."""
    features = ("demand", "temperature", "workday")
    spec = ModelSpec(
        name="counter",
        version="1",
        kind="forecast",
        inputs=(TensorSpec("x", "float32", (-1, 3)),),
        outputs=(OutputSpec("demand_next", "count"),),
        states=(StateSpec("h", 1, 1),),
        preprocess={"features": list(features)},
    )
    graph = helper.make_graph(
        [
            helper.make_node("Slice", ["x", "zero", "one", "one"], ["x0"]),  # [B, 1]
            helper.make_node("Unsqueeze", ["x0", "zero"], ["x0u"]),  # [1, B, 1]
            helper.make_node("Add", ["state_in.h", "x0u"], ["state_out.h"]),
            helper.make_node("Squeeze", ["state_out.h", "zero"], ["demand_next"]),
        ],
        "counter",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 3]),
            helper.make_tensor_value_info("state_in.h", TensorProto.FLOAT, [1, "B", 1]),
        ],
        [
            helper.make_tensor_value_info("demand_next", TensorProto.FLOAT, ["B", 1]),
            helper.make_tensor_value_info("state_out.h", TensorProto.FLOAT, [1, "B", 1]),
        ],
        [
            helper.make_tensor("zero", TensorProto.INT64, [1], [0]),
            helper.make_tensor("one", TensorProto.INT64, [1], [1]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    entry = model.metadata_props.add()
    entry.key, entry.value = SPEC_KEY, spec.to_json()
    path = root / "models" / "onnx" / "counter.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    manifest = root / "models" / "manifest.json"
    upsert_entry(
        ManifestEntry("counter", "1", "forecast", str(path.relative_to(root)), sha256_file(path)),
        manifest,
    )
    return manifest, spec


async def _run_worker(env: dict[str, str], log_path: Path, within_s: float = 60) -> int:
    cmd = [sys.executable, "-m", "statecast", "worker", "--idle-timeout", "3"]
    with log_path.open("wb") as fh:
        proc = await asyncio.create_subprocess_exec(
            *cmd, env=env, stdout=fh, stderr=asyncio.subprocess.STDOUT
        )
    try:
        return await asyncio.wait_for(proc.wait(), within_s)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


@pytest.mark.integration
@pytest.mark.slow
async def test_kill_9_with_a_stream_over_two_partitions_applies_each_record_once(
    kafka_bootstrap: str, redis_url: str, unique: Callable[[str], str], tmp_path: Path
) -> None:
    manifest, spec = _counter_model(tmp_path)
    topic, preds, dlq = unique("fence-in"), unique("fence-preds"), unique("fence-dlq")
    await ensure_topics(kafka_bootstrap, {topic: 2, preds: 2, dlq: 1})
    body = orjson.dumps(
        {"stream": "m1", "ts": 1, "values": {"demand": 1.0, "temperature": 0.0, "workday": 0}}
    )
    per_partition = 30
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await producer.start()
    try:
        # The producer's partitioner changed mid-stream: m1 alternates between p0 and p1.
        for i in range(2 * per_partition):
            await producer.send_and_wait(topic, body, key=b"m1", partition=i % 2)
    finally:
        await producer.stop()
    prefix = unique("fence")
    settings = Settings(
        kafka=KafkaSettings(
            bootstrap_servers=kafka_bootstrap, group_id=unique("g"), session_timeout_ms=3000
        ),
        redis=RedisSettings(url=redis_url),
        routes=(Route(topic, "counter"),),
        manifest_path=manifest,
        model_root=tmp_path,
        predictions_topic=preds,
        dlq_topic=dlq,
        state_prefix=prefix,
        max_batch_records=6,
        http_port=0,
    )
    base = {k: v for k, v in os.environ.items() if not k.startswith("STATECAST_")}
    base.update(settings.to_env())
    # Each run is killed right after its second state write, before that batch's commit:
    # the next run gets the same records again, from both partitions.
    for n in (1, 2, 3):
        env = base | {"STATECAST_TEST_CRASH_AT": "after_state_write:2"}
        rc = await _run_worker(env, tmp_path / f"run{n}.log")
        assert rc == -signal.SIGKILL, (tmp_path / f"run{n}.log").read_text()[-2000:]
    rc = await _run_worker(base, tmp_path / "final.log")
    log_text = (tmp_path / "final.log").read_text()
    assert rc == 0, log_text[-2000:]
    assert " 0 replays skipped" not in log_text, "the kills must leave replays to skip"

    client = await connect_redis(RedisSettings(url=redis_url))
    try:
        store = StateStore(client, 60, spec.states, spec.state_version)
        (res,) = await store.read_many([state_key(prefix, "counter", spec.state_version, "m1")])
    finally:
        await client.aclose()
    assert res.state is not None
    assert float(res.state.tensors["h"][0, 0]) == 2 * per_partition
    assert res.state.offsets() == {0: per_partition - 1, 1: per_partition - 1}
