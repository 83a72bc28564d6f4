"""The input side of the worker: consumer construction, rebalance callbacks, commits, lag,
and the broker probe.

Offsets are committed by hand only (``enable_auto_commit=False``), after a batch's
predictions are acked and its states written (DESIGN.md, "Delivery").
"""

from __future__ import annotations

import logging
import socket
import struct
from collections.abc import Awaitable, Callable

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError

from statecast.worker.metrics import WorkerMetrics
from statecast.worker.settings import KafkaSettings

log = logging.getLogger(__name__)


def build_consumer(kafka: KafkaSettings) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        **kafka.client_kwargs(),
        group_id=kafka.group_id,
        enable_auto_commit=False,
        auto_offset_reset=kafka.auto_offset_reset,
        session_timeout_ms=kafka.session_timeout_ms,
        heartbeat_interval_ms=max(100, kafka.session_timeout_ms // 3),
        fetch_max_wait_ms=kafka.fetch_max_wait_ms,
        max_partition_fetch_bytes=4 << 20,
        fetch_max_bytes=32 << 20,
    )


class RebalanceListener(ConsumerRebalanceListener):  # type: ignore[misc]
    """Passes aiokafka's rebalance callbacks to the worker."""

    def __init__(
        self,
        on_assigned: Callable[[set[TopicPartition]], None],
        on_revoked: Callable[[set[TopicPartition]], Awaitable[None]],
    ) -> None:
        self._on_assigned = on_assigned
        self._on_revoked = on_revoked

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._on_revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self._on_assigned(assigned)


async def commit(
    consumer: AIOKafkaConsumer, offsets: dict[TopicPartition, int], metrics: WorkerMetrics
) -> bool:
    """Commit ``offsets``; False when the group rebalanced under us (not an outage: the new
    owner resumes from the last commit and the offset fence turns what we already applied
    into replays). Connection errors propagate to the caller's retry."""
    try:
        await consumer.commit(offsets)
    except (CommitFailedError, IllegalStateError) as exc:
        log.warning("offset commit refused after a rebalance: %s", exc)
        metrics.errors.labels("commit").inc()
        return False
    return True


class LagTracker:
    """``statecast_consumer_lag`` of every owned partition we have processed."""

    def __init__(self, metrics: WorkerMetrics) -> None:
        self._metrics = metrics
        self._next: dict[TopicPartition, int] = {}
        self._labels: set[tuple[str, str]] = set()

    def update(
        self,
        consumer: AIOKafkaConsumer,
        assigned: set[TopicPartition],
        offsets: dict[TopicPartition, int],
    ) -> None:
        # All owned partitions, not only this batch's: the high watermarks of quiet
        # partitions still move with each fetch response.
        self._next.update(offsets)
        for tp in assigned:
            next_offset = self._next.get(tp)
            hw = consumer.highwater(tp)
            if next_offset is not None and hw is not None:
                labels = (tp.topic, str(tp.partition))
                self._metrics.consumer_lag.labels(*labels).set(max(0, hw - next_offset))
                self._labels.add(labels)

    def forget(self, revoked: set[TopicPartition]) -> None:
        for tp in revoked:
            self._next.pop(tp, None)
            labels = (tp.topic, str(tp.partition))
            if labels in self._labels:
                self._metrics.consumer_lag.remove(*labels)
                self._labels.discard(labels)


# -- is the broker there? -------------------------------------------------------------------


def parse_bootstrap(servers: str) -> list[tuple[str, int]]:
    """``"h1:9092,[::1]:9093"`` -> ``[("h1", 9092), ("::1", 9093)]``."""
    out = []
    for item in servers.split(","):
        item = item.strip()
        if not item:
            continue
        host, _, port = item.rpartition(":")
        if not host:
            host, port = item, "9092"
        out.append((host.strip("[]"), int(port)))
    return out


def kafka_answers(host: str, port: int, timeout: float = 1.0, handshake: bool = True) -> bool:
    """Is a Kafka broker serving on ``host:port``?

    With ``handshake`` an ApiVersions v0 request must get a well-formed reply (a port that
    accepts connections is not yet a broker: the dev stack waits for this). Without it a
    TCP connect is enough, which is what a TLS or SASL listener allows before its
    handshake.
    """
    client_id = b"statecast-probe"
    body = struct.pack(">hhih", 18, 0, 7, len(client_id)) + client_id
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            if not handshake:
                return True
            s.sendall(struct.pack(">i", len(body)) + body)
            header = _recv_exact(s, 8)
    except OSError:
        return False
    if header is None:
        return False
    _size, correlation_id = struct.unpack(">ii", header)
    return bool(correlation_id == 7)


def broker_reachable(kafka: KafkaSettings, timeout_s: float = 1.0) -> bool:
    """Does any bootstrap broker answer? For an idle worker, which learns nothing from
    polls: aiokafka's ``getmany`` returns an empty batch, not an error, while every broker
    is down."""
    handshake = kafka.security_protocol == "PLAINTEXT"
    return any(
        kafka_answers(host, port, timeout_s, handshake)
        for host, port in parse_bootstrap(kafka.bootstrap_servers)
    )


def _recv_exact(s: socket.socket, n: int) -> bytes | None:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf
