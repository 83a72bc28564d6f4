"""Is any bootstrap broker reachable? For an idle worker, which learns nothing from polls.

aiokafka's ``getmany`` returns an empty batch, not an error, while every broker is down,
so a worker without traffic would idle past its dependency deadline forever. A TCP connect
(TLS and SASL listeners included) to any bootstrap server tells a dead broker from a quiet
one.
"""

from __future__ import annotations

import socket


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


def broker_reachable(servers: str, timeout_s: float = 1.0) -> bool:
    for host, port in parse_bootstrap(servers):
        try:
            with socket.create_connection((host, port), timeout=timeout_s):
                return True
        except OSError:
            continue
    return False
