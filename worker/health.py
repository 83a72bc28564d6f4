"""A tiny HTTP server for Prometheus and the orchestrator: ``/metrics``, ``/healthz``, ``/readyz``.

Plain asyncio streams, no web framework: three GET routes, one response per connection.

The port is reachable by anything in the pod's network, so a request is bounded like any
other input: the whole request (line and headers) must arrive within
``REQUEST_DEADLINE_S`` (a deadline per header line let a slow sender hold a connection
for as long as it kept trickling), a line over ``MAX_LINE_BYTES`` or more than
``MAX_HEADER_LINES`` headers is answered 431, at most ``MAX_CONNECTIONS`` requests are
served at once (more are closed unanswered), and garbage never logs a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

log = logging.getLogger(__name__)

REQUEST_DEADLINE_S = 5.0
MAX_LINE_BYTES = 8192
MAX_HEADER_LINES = 64
MAX_CONNECTIONS = 64
TOO_LARGE = "431 Request Header Fields Too Large"


class _RequestTooLarge(Exception):
    """The request line or the headers are over their caps."""


Readiness = Callable[[], tuple[bool, str]]


class HealthServer:
    def __init__(self, registry: CollectorRegistry, readiness: Readiness) -> None:
        self._registry = registry
        self._readiness = readiness
        self._server: asyncio.Server | None = None
        self._open = 0
        self.refused = 0  # connections closed unanswered (over MAX_CONNECTIONS, too slow)

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def open_connections(self) -> int:
        return self._open

    async def start(self, host: str, port: int) -> None:
        # ``limit`` caps what readline buffers: a longer line raises instead of growing.
        self._server = await asyncio.start_server(self._handle, host, port, limit=MAX_LINE_BYTES)
        log.info("metrics and health on http://%s:%d/metrics", host, self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._open >= MAX_CONNECTIONS:
            self.refused += 1
            writer.close()
            return
        self._open += 1
        try:
            # One deadline for the whole exchange: reading the request and writing the
            # answer (a peer that never reads /metrics must not hold us either).
            async with asyncio.timeout(REQUEST_DEADLINE_S):
                try:
                    request = await _read_request(reader)
                except _RequestTooLarge:
                    await _respond(
                        writer, "431 Request Header Fields Too Large", "", b"too large\n"
                    )
                    return
                parts = request.decode("latin-1").split()
                method, path = (parts[0], parts[1].split("?")[0]) if len(parts) >= 2 else ("", "")
                status, ctype, body = self._route(method, path)
                await _respond(writer, status, ctype, body if method != "HEAD" else b"", len(body))
        except TimeoutError:
            self.refused += 1
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except Exception as exc:  # whatever a peer sends, the worker logs one line, no traceback
            log.warning("health server: request failed: %s: %s", type(exc).__name__, exc)
        finally:
            self._open -= 1
            writer.close()
            with contextlib.suppress(ConnectionError, TimeoutError):
                async with asyncio.timeout(1.0):
                    await writer.wait_closed()

    def _route(self, method: str, path: str) -> tuple[str, str, bytes]:
        text = "text/plain; charset=utf-8"
        if method not in ("GET", "HEAD"):
            return "405 Method Not Allowed", text, b"method not allowed\n"
        if path == "/metrics":
            return "200 OK", CONTENT_TYPE_LATEST, generate_latest(self._registry)
        if path == "/healthz":
            return "200 OK", text, b"ok\n"
        if path == "/readyz":
            ok, detail = self._readiness()
            status = "200 OK" if ok else "503 Service Unavailable"
            return status, text, (detail + "\n").encode()
        return "404 Not Found", text, b"not found\n"


async def _read_request(reader: asyncio.StreamReader) -> bytes:
    """The request line, after draining the headers (we need none of them)."""
    try:
        request = await reader.readline()
        for _ in range(MAX_HEADER_LINES):
            if await reader.readline() in (b"\r\n", b"\n", b""):
                return request
    except (asyncio.LimitOverrunError, ValueError) as exc:  # a line over the stream's limit
        raise _RequestTooLarge from exc
    raise _RequestTooLarge


async def _respond(
    writer: asyncio.StreamWriter,
    status: str,
    ctype: str,
    body: bytes,
    length: int | None = None,
) -> None:
    head = f"HTTP/1.1 {status}\r\n"
    if ctype:
        head += f"Content-Type: {ctype}\r\n"
    head += f"Content-Length: {len(body) if length is None else length}\r\n"
    head += "Connection: close\r\n\r\n"
    writer.write(head.encode() + body)
    await writer.drain()
