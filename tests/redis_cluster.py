"""A three-node Redis Cluster on loopback free ports, for tests; torn down by the owner.

Each node is a ``redis-server --cluster-enabled yes`` child process with its own cluster
bus port (``--cluster-port``, so the default port+10000 never collides), joined with
``redis-cli --cluster create ... --cluster-yes`` (no replicas: 3 primaries share the
16384 slots).
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from statecast.worker.stack import find_redis_server, free_port, redis_answers

HOST = "127.0.0.1"


class ClusterError(RuntimeError):
    pass


def _cluster_ok(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=1.0) as s:
            s.sendall(b"CLUSTER INFO\r\n")
            reply = b""
            while b"cluster_state:" not in reply or not reply.endswith(b"\r\n"):
                chunk = s.recv(4096)
                if not chunk:
                    break
                reply += chunk
    except OSError:
        return False
    return b"cluster_state:ok" in reply


@dataclass
class RedisClusterHandle:
    workdir: Path
    ports: list[int] = field(default_factory=list)
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def url(self) -> str:
        """A startup node; the client discovers the others."""
        return f"redis://{HOST}:{self.ports[0]}/0"

    def start(self, nodes: int = 3, timeout: float = 30.0) -> None:
        server = str(find_redis_server())
        for i in range(nodes):
            port, bus = free_port(), free_port()
            node_dir = self.workdir / f"node{i}"
            node_dir.mkdir(parents=True, exist_ok=True)
            cmd = [
                server,
                "--port",
                str(port),
                "--bind",
                HOST,
                "--cluster-enabled",
                "yes",
                "--cluster-port",
                str(bus),
                "--cluster-config-file",
                str(node_dir / "nodes.conf"),
                "--cluster-node-timeout",
                "2000",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(node_dir),
            ]
            with (node_dir / "redis.log").open("ab") as logfh:
                proc = subprocess.Popen(
                    cmd, stdout=logfh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
                )
            self.processes.append(proc)
            self.ports.append(port)
        self._wait(lambda: all(redis_answers(HOST, p) for p in self.ports), timeout, "nodes up")
        create = subprocess.run(
            [
                "redis-cli",
                "--cluster",
                "create",
                *[f"{HOST}:{p}" for p in self.ports],
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            capture_output=True,
            timeout=timeout,
            check=False,
        )
        if create.returncode != 0:
            raise ClusterError(
                f"redis-cli --cluster create failed:\n{create.stdout.decode(errors='replace')}"
                f"{create.stderr.decode(errors='replace')}"
            )
        self._wait(lambda: all(_cluster_ok(p) for p in self.ports), timeout, "cluster_state:ok")

    def _wait(self, ready: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ready():
                return
            if any(p.poll() is not None for p in self.processes):
                break
            time.sleep(0.1)
        raise ClusterError(f"Redis Cluster not ready ({what}) within {timeout:.0f}s")

    def stop(self) -> None:
        for proc in reversed(self.processes):
            if proc.poll() is None:
                proc.terminate()
        for proc in reversed(self.processes):
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=10)
        self.processes.clear()


@contextlib.contextmanager
def redis_cluster(workdir: Path, nodes: int = 3) -> Iterator[RedisClusterHandle]:
    """Start a cluster in ``workdir``; stop every node on exit, also when start fails."""
    handle = RedisClusterHandle(workdir)
    try:
        handle.start(nodes)
        yield handle
    finally:
        handle.stop()
