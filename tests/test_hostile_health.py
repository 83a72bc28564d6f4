"""The health server under hostile clients: one deadline per request, capped lines and
headers, capped connections, and no traceback whatever a peer sends."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from prometheus_client import CollectorRegistry

from statecast.worker import health
from statecast.worker.health import HealthServer

pytestmark = pytest.mark.unit


@pytest_asyncio.fixture
async def server() -> AsyncIterator[HealthServer]:
    srv = HealthServer(CollectorRegistry(), lambda: (True, "ok"))
    await srv.start("127.0.0.1", 0)
    try:
        yield srv
    finally:
        await srv.stop()


async def exchange(port: int, payload: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(payload)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), timeout=10)
    except ConnectionResetError:
        return b""  # closed unanswered while we were still sending
    finally:
        writer.close()


def no_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]


async def test_a_well_formed_request_is_answered(server: HealthServer) -> None:
    answer = await exchange(server.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 OK")
    assert answer.endswith(b"ok\n")


async def test_a_huge_request_line_gets_431_and_no_traceback(
    server: HealthServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    answer = await exchange(server.port, b"GET /" + b"a" * 65536 + b" HTTP/1.1\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 431")
    no_tracebacks(caplog)


async def test_endless_headers_get_431(server: HealthServer) -> None:
    headers = b"".join(b"X-%d: y\r\n" % i for i in range(health.MAX_HEADER_LINES + 5))
    answer = await exchange(server.port, b"GET /healthz HTTP/1.1\r\n" + headers + b"\r\n")
    assert answer.startswith(b"HTTP/1.1 431")


@pytest.mark.parametrize(
    "garbage",
    [b"\x00\xff\xfe" * 300, b"\r\n\r\n", b"GET\r\n\r\n", b"\x16\x03\x01\x02\x00" + bytes(512)],
)
async def test_garbage_is_answered_or_closed_without_a_traceback(
    server: HealthServer, caplog: pytest.LogCaptureFixture, garbage: bytes
) -> None:
    caplog.set_level(logging.DEBUG)
    answer = await exchange(server.port, garbage)
    assert answer == b"" or answer.startswith(b"HTTP/1.1 4")
    no_tracebacks(caplog)
    ok = await exchange(server.port, b"GET /healthz HTTP/1.1\r\n\r\n")
    assert ok.startswith(b"HTTP/1.1 200")


async def test_a_slow_sender_is_cut_off_at_the_request_deadline(
    server: HealthServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each header line arrives well inside any per-line timeout; the request never ends.
    monkeypatch.setattr(health, "REQUEST_DEADLINE_S", 0.3)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET /healthz HTTP/1.1\r\n")
    sent = 0
    closed = False
    try:
        for _ in range(199):
            sent += 1
            writer.write(b"X-Slow: 1\r\n")
            await writer.drain()
            try:
                if await asyncio.wait_for(reader.read(1), timeout=0.05) == b"":
                    closed = True
                    break
            except TimeoutError:
                continue
    except ConnectionError:
        closed = True
    finally:
        writer.close()
    assert closed, "the server kept a trickling request open"
    assert sent < 199
    assert server.refused == 1


async def test_connections_over_the_cap_are_closed_unanswered(
    server: HealthServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(health, "MAX_CONNECTIONS", 2)
    idle = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(2)]
    try:
        await asyncio.sleep(0.1)  # both are inside the handler, waiting for a request line
        answer = await exchange(server.port, b"GET /healthz HTTP/1.1\r\n\r\n")
        assert answer == b""
        assert server.refused == 1
    finally:
        for _, w in idle:
            w.close()
            await w.wait_closed()
        for _ in range(1000):  # let their handlers see the EOF and finish
            if not server.open_connections:
                break
            await asyncio.sleep(0.01)
