"""Which failures are dependency outages and which belong to one record.

The worker treats the two very differently (DESIGN.md, "Data flow"):

- ``OUTAGE``: a connection-class error (a refused or reset connection, a timeout, a broker
  or node or leader not available, Redis loading or failing over). Retrying the same call
  later can succeed, so the stage backs off and retries, and after the dependency deadline
  the worker exits 3 for the orchestrator to restart it.
- ``RECORD``: everything else. Retrying cannot help (a message over the broker's size
  limit stays over it; a Redis key holding a list stays a list), so retrying it as an
  outage loops forever and fires ``StatecastRedisDown`` while Redis is up. The record (or
  stream) that caused it is dead-lettered or reset, counted, and the batch goes on.

The list is explicit rather than "every ``RedisError``/``KafkaError``": a new error class
defaults to ``RECORD``, which costs one dead letter, never a crash loop.
"""

from __future__ import annotations

import enum

from aiokafka import errors as kafka_errors
from redis import exceptions as redis_errors


class ErrorClass(enum.Enum):
    OUTAGE = "outage"
    RECORD = "record"


# Kafka errors that say the broker (or the part of it we need) cannot be reached or is not
# ready. aiokafka marks most of them ``retriable``; these are the ones it does not mark but
# that still mean "not reachable right now".
_KAFKA_OUTAGE: tuple[type[BaseException], ...] = (
    kafka_errors.KafkaConnectionError,
    kafka_errors.NodeNotReadyError,
    kafka_errors.NoBrokersAvailable,
    kafka_errors.KafkaTimeoutError,
    kafka_errors.RequestTimedOutError,
    kafka_errors.KafkaUnavailableError,
    kafka_errors.BrokerNotAvailableError,
    kafka_errors.LeaderNotAvailableError,
    kafka_errors.NotLeaderForPartitionError,
    kafka_errors.ReplicaNotAvailableError,
    kafka_errors.NotEnoughReplicasError,
    kafka_errors.NotEnoughReplicasAfterAppendError,
    kafka_errors.CoordinatorNotAvailableError,
    kafka_errors.CoordinatorLoadInProgressError,
    kafka_errors.NotCoordinatorError,
    kafka_errors.KafkaStorageError,
    kafka_errors.UnknownTopicOrPartitionError,  # a topic being created or re-led
)

# Redis errors of an unreachable, restarting or failing-over server. A ``ResponseError``
# (WRONGTYPE, a script error, OOM) is an answer: the server is up.
_REDIS_OUTAGE: tuple[type[BaseException], ...] = (
    redis_errors.ConnectionError,  # includes BusyLoadingError, AuthenticationError
    redis_errors.TimeoutError,
    redis_errors.ClusterDownError,
    redis_errors.TryAgainError,
    redis_errors.MasterDownError,
    redis_errors.ReadOnlyError,  # a replica promoted away under us
    redis_errors.SlotNotCoveredError,
    # Redis is full (maxmemory) or stuck in a long script: every write would fail alike,
    # so blaming the record at hand would dead-letter or reset everything.
    redis_errors.OutOfMemoryError,
    redis_errors.BusyLoadingError,
)

# Operating-system and asyncio failures of the socket itself.
_SOCKET_OUTAGE: tuple[type[BaseException], ...] = (ConnectionError, TimeoutError)

OUTAGE_ERRORS: tuple[type[BaseException], ...] = _KAFKA_OUTAGE + _REDIS_OUTAGE + _SOCKET_OUTAGE


def classify(exc: BaseException) -> ErrorClass:
    """``OUTAGE`` for a connection-class error, ``RECORD`` for everything else."""
    if isinstance(exc, OUTAGE_ERRORS):
        return ErrorClass.OUTAGE
    if isinstance(exc, kafka_errors.KafkaError) and getattr(exc, "retriable", False):
        return ErrorClass.OUTAGE
    if isinstance(exc, OSError) and not isinstance(exc, FileNotFoundError | PermissionError):
        # EHOSTUNREACH, ENETUNREACH, a TLS handshake cut short: the network, not the data.
        return ErrorClass.OUTAGE
    return ErrorClass.RECORD


def is_outage(exc: BaseException) -> bool:
    return classify(exc) is ErrorClass.OUTAGE
