"""Waiting out an unavailable dependency: backoff, one log line per state change, a deadline.

The loop retries the stage that failed (never the stages already done), so a Redis outage
between publish and state write republishes nothing. When a dependency stays down longer
than the configured time, :class:`DependencyTimeout` ends the worker with a non-zero exit
so an orchestrator restarts it; nothing uncommitted is lost because offsets only move after
a batch is fully done.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from aiokafka.errors import KafkaError
from redis.exceptions import RedisError

from statecast.worker.errors import is_outage
from statecast.worker.metrics import WorkerMetrics

log = logging.getLogger(__name__)

T = TypeVar("T")
# What a down or restarting dependency raises; anything else is a bug and is not retried.
RETRYABLE: tuple[type[BaseException], ...] = (RedisError, KafkaError, OSError, TimeoutError)


class DependencyTimeout(RuntimeError):
    """A dependency stayed unavailable longer than the configured time."""


class DependencyWatch:
    """Up/down state of one dependency, reflected in ``statecast_dependency_up``."""

    def __init__(self, name: str, metrics: WorkerMetrics, timeout_s: float) -> None:
        self.name = name
        self._gauge = metrics.dependency_up.labels(name)
        self._timeout_s = timeout_s
        self._down_since: float | None = None
        self.up = False

    def ok(self) -> None:
        if self._down_since is not None:
            log.warning(
                "%s is available again after %.1fs", self.name, time.monotonic() - self._down_since
            )
            self._down_since = None
        self.up = True
        self._gauge.set(1)

    def failed(self, stage: str, exc: BaseException) -> None:
        now = time.monotonic()
        if self._down_since is None:
            log.warning(
                "%s unavailable at %s (%s: %s); fetching stopped, retrying with backoff for up "
                "to %.0fs",
                self.name,
                stage,
                type(exc).__name__,
                exc,
                self._timeout_s,
            )
            self._down_since = now
        self.up = False
        self._gauge.set(0)
        if now - self._down_since > self._timeout_s:
            raise DependencyTimeout(
                f"{self.name} unavailable for more than {self._timeout_s:.0f}s (last error at "
                f"{stage}: {type(exc).__name__}: {exc})"
            ) from exc


class Retrier:
    def __init__(self, metrics: WorkerMetrics, initial_s: float, max_s: float) -> None:
        self._metrics = metrics
        self._initial_s = initial_s
        self._max_s = max_s

    async def call(
        self,
        watch: DependencyWatch,
        stage: str,
        fn: Callable[[], Awaitable[T]],
        isolate: bool = False,
    ) -> T:
        """``fn()``, retried with backoff while it fails with a dependency error.

        ``isolate``: the stage can blame a record (publish, state read/write), so only
        connection-class errors (:func:`statecast.worker.errors.is_outage`) are retried; any
        other error is raised for the caller to dead-letter or reset what caused it.
        Retrying it would loop forever on the same record and report an outage while the
        dependency is up."""
        delay = self._initial_s
        while True:
            try:
                result = await fn()
            except RETRYABLE as exc:
                if isolate and not is_outage(exc):
                    self._metrics.errors.labels(stage).inc()
                    raise
                self._metrics.errors.labels(stage).inc()
                watch.failed(stage, exc)
                await asyncio.sleep(delay)
                delay = min(max(delay * 2, 0.01), self._max_s)
                continue
            watch.ok()
            return result
