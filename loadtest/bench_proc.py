"""A worker (or any Python tool) as a child process, for the bench and the demo.

The child's stderr (and its stdout, unless it talks JSON lines) goes to a log file whose
tail explains a failure; JSON lines on stdout are queued for :meth:`ChildProcess.expect`.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from statecast.loadtest import machine


class ChildError(RuntimeError):
    """The child exited, or did not say or do what was expected in time."""


@dataclass
class ChildProcess:
    proc: asyncio.subprocess.Process
    name: str
    log_path: Path
    lines: asyncio.Queue[dict[str, Any]] = field(default_factory=asyncio.Queue)
    reader: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int:
        return int(self.proc.pid)

    async def _read_lines(self) -> None:
        assert self.proc.stdout is not None
        async for raw in self.proc.stdout:
            with contextlib.suppress(orjson.JSONDecodeError):
                obj = orjson.loads(raw)
                if isinstance(obj, dict):
                    await self.lines.put(obj)

    async def expect(self, event: str | None, within_s: float) -> dict[str, Any]:
        """The next JSON line whose ``event`` is ``event`` (any line for None)."""
        deadline = time.monotonic() + within_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ChildError(
                    f"{self.name}: no {event or 'result'} line in {within_s:.0f}s; its log "
                    f"ends with:\n{self.log_tail()}"
                )
            try:
                obj = await asyncio.wait_for(self.lines.get(), timeout=min(left, 0.5))
            except TimeoutError:
                if self.proc.returncode is not None and self.lines.empty():
                    raise ChildError(
                        f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}"
                    ) from None
                continue
            if event is None or obj.get("event") == event:
                return obj

    async def wait_ready(self, url: str, within_s: float) -> None:
        """Until ``url`` answers 200 (a worker's /readyz)."""
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            if self.proc.returncode is not None:
                raise ChildError(
                    f"{self.name} exited with {self.proc.returncode}; its log ends with:\n"
                    f"{self.log_tail()}"
                )
            status, _ = await asyncio.to_thread(http_get, url)
            if status == 200:
                return
            await asyncio.sleep(0.5)
        raise ChildError(
            f"{self.name} was not ready within {within_s:.0f}s; its log ends with:\n"
            f"{self.log_tail()}"
        )

    def log_tail(self, lines: int = 25) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    async def stop(self, within_s: float = 20.0) -> int:
        """SIGTERM, then SIGKILL after ``within_s``; returns the exit code."""
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), within_s)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
                await self.proc.wait()
        if self.reader is not None:
            await asyncio.gather(self.reader, return_exceptions=True)
        return int(self.proc.returncode if self.proc.returncode is not None else -1)


async def spawn(
    name: str,
    args: Sequence[str],
    env: Mapping[str, str],
    log_path: Path,
    cores: set[int] | None = None,
    json_lines: bool = True,
) -> ChildProcess:
    """``python <args>`` with ``env``; pinned to ``cores`` when given."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as logfh:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            *args,
            stdout=asyncio.subprocess.PIPE if json_lines else logfh,
            stderr=logfh,
            stdin=asyncio.subprocess.DEVNULL,
            env=dict(env),
        )
    if cores is not None:
        machine.pin(proc.pid, cores)
    child = ChildProcess(proc, name, log_path)
    if json_lines:
        child.reader = asyncio.create_task(child._read_lines(), name=f"{name}-stdout")
    return child


def http_get(url: str, timeout: float = 2.0) -> tuple[int, str]:
    """Status and body of a GET; status 0 when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return int(resp.status), resp.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return int(exc.code), ""
    except (urllib.error.URLError, OSError):
        return 0, ""
