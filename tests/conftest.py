"""Shared fixtures: a real Tansu broker and a real redis-server on free ports per session.

Tests never touch the machine's Redis on 6379: each session starts its own services in a
temporary directory and stops only those. Each test gets a unique topic/group/key prefix.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from statecast.worker.stack import Service, StackError, free_port

# Tansu answers JoinGroup after about half the session timeout: keep it short in tests.
CONSUMER_SESSION_TIMEOUT_MS = 6000


def _start(name: str, workdir: Path) -> Service:
    svc = Service(name, free_port(), workdir)
    try:
        svc.start(timeout=30, detach=False)
    except StackError as exc:
        svc.stop()
        pytest.fail(str(exc), pytrace=False)
    return svc


@pytest.fixture(scope="session")
def kafka_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    svc = _start("kafka", tmp_path_factory.mktemp("kafka"))
    yield svc
    svc.stop()


@pytest.fixture(scope="session")
def redis_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    svc = _start("redis", tmp_path_factory.mktemp("redis"))
    yield svc
    svc.stop()


@pytest.fixture(scope="session")
def kafka_bootstrap(kafka_service: Service) -> str:
    return f"{kafka_service.host}:{kafka_service.port}"


@pytest.fixture(scope="session")
def redis_url(redis_service: Service) -> str:
    return f"redis://{redis_service.host}:{redis_service.port}/0"


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[Service]:
    """A redis-server of this test's own, for tests that kill or restart Redis."""
    svc = _start("redis", tmp_path)
    yield svc
    svc.stop()


@pytest.fixture
def unique() -> Callable[[str], str]:
    """``unique("topic")`` -> ``"topic-1a2b3c4d"``: names no other test uses."""
    suffix = uuid.uuid4().hex[:8]
    return lambda stem: f"{stem}-{suffix}"
