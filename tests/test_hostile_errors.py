"""Error classification: connection-class errors are outages (backoff, exit 3), everything
else belongs to one record (dead letter or reset). Each class, and real errors raised by a
real Redis and a real broker."""

from __future__ import annotations

import errno
from collections.abc import Callable

import orjson
import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaProducer
from aiokafka import errors as kafka_errors
from redis import exceptions as redis_errors

from statecast.worker.devstack import free_port
from statecast.worker.errors import ErrorClass, classify, is_outage

OUTAGES: list[BaseException] = [
    kafka_errors.KafkaConnectionError("connection refused"),
    kafka_errors.NodeNotReadyError("node 1"),
    kafka_errors.NoBrokersAvailable(),
    kafka_errors.KafkaTimeoutError(),
    kafka_errors.RequestTimedOutError(),
    kafka_errors.LeaderNotAvailableError(),
    kafka_errors.NotLeaderForPartitionError(),
    kafka_errors.BrokerNotAvailableError(),
    kafka_errors.CoordinatorNotAvailableError(),
    kafka_errors.NotEnoughReplicasError(),
    kafka_errors.UnknownTopicOrPartitionError(),
    redis_errors.ConnectionError("Error 111 connecting"),
    redis_errors.TimeoutError("Timeout reading from socket"),
    redis_errors.BusyLoadingError("LOADING Redis is loading the dataset in memory"),
    redis_errors.ClusterDownError("CLUSTERDOWN The cluster is down"),
    redis_errors.TryAgainError("TRYAGAIN"),
    redis_errors.ReadOnlyError("READONLY You can't write against a read only replica."),
    redis_errors.OutOfMemoryError("OOM command not allowed when used memory > 'maxmemory'"),
    ConnectionRefusedError(errno.ECONNREFUSED, "refused"),
    ConnectionResetError(errno.ECONNRESET, "reset"),
    TimeoutError(),
    OSError(errno.EHOSTUNREACH, "No route to host"),
]

RECORD_ERRORS: list[BaseException] = [
    kafka_errors.MessageSizeTooLargeError(),
    kafka_errors.RecordTooLargeError(),
    kafka_errors.RecordListTooLargeError(),
    kafka_errors.InvalidTimestampError(),
    kafka_errors.CorruptRecordException(),
    kafka_errors.InvalidMessageError(),
    redis_errors.ResponseError("WRONGTYPE Operation against a key holding the wrong kind"),
    redis_errors.DataError("Invalid input of type: 'dict'"),
    TypeError("Integer exceeds 64-bit range"),
    ValueError("state 'h': shape (2, 4) != (1, 4)"),
    OverflowError("int too large to convert"),
    UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed"),
    KeyError("x"),
]


@pytest.mark.unit
@pytest.mark.parametrize("exc", OUTAGES, ids=lambda e: type(e).__name__)
def test_connection_class_errors_are_outages(exc: BaseException) -> None:
    assert classify(exc) is ErrorClass.OUTAGE
    assert is_outage(exc)


@pytest.mark.unit
@pytest.mark.parametrize("exc", RECORD_ERRORS, ids=lambda e: type(e).__name__)
def test_everything_else_belongs_to_one_record(exc: BaseException) -> None:
    assert classify(exc) is ErrorClass.RECORD
    assert not is_outage(exc)


@pytest.mark.unit
def test_a_huge_ts_fails_encoding_as_a_record_error() -> None:
    with pytest.raises(TypeError) as info:
        orjson.dumps({"ts": int(1e300)})
    assert classify(info.value) is ErrorClass.RECORD


@pytest.mark.integration
async def test_real_redis_errors_are_classified(
    redis_url: str, unique: Callable[[str], str]
) -> None:
    client = aioredis.Redis.from_url(redis_url)
    key = unique("hostile:list")
    try:
        await client.rpush(key, b"x")
        with pytest.raises(redis_errors.ResponseError) as wrong_type:
            await client.get(key)
        assert classify(wrong_type.value) is ErrorClass.RECORD
    finally:
        await client.delete(key)
        await client.aclose()
    closed = aioredis.Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=1)
    try:
        with pytest.raises(redis_errors.RedisError) as refused:
            await closed.ping()
        assert classify(refused.value) is ErrorClass.OUTAGE
    finally:
        await closed.aclose()


@pytest.mark.integration
async def test_real_broker_errors_are_classified(
    kafka_bootstrap: str, unique: Callable[[str], str]
) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, max_request_size=1024)
    await producer.start()
    try:
        with pytest.raises(kafka_errors.KafkaError) as too_large:
            await producer.send_and_wait(unique("hostile-size"), b"x" * 4096)
        assert classify(too_large.value) is ErrorClass.RECORD
    finally:
        await producer.stop()
    nobody = AIOKafkaProducer(bootstrap_servers=f"127.0.0.1:{free_port()}", request_timeout_ms=1000)
    with pytest.raises(kafka_errors.KafkaError) as unreachable:
        await nobody.start()
    await nobody.stop()
    assert classify(unreachable.value) is ErrorClass.OUTAGE
