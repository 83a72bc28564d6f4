"""Connecting to Redis: one server or a Redis Cluster, with AUTH and TLS passed through.

Retries are few and short on purpose: the worker has its own backoff loop that stops
fetching and logs once per state change, so a call must fail fast when Redis is down. One
retry is kept so that a connection left stale by a Redis restart is replaced on the next
call instead of failing it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

log = logging.getLogger(__name__)

RedisClient = aioredis.Redis | RedisCluster


@dataclass(frozen=True)
class RedisSettings:
    """How to reach the state store (``STATECAST_REDIS_*``). ``url`` is ``redis://`` or
    ``rediss://`` (TLS); for a cluster it names any one node (the others are discovered)."""

    url: str = "redis://127.0.0.1:16379/0"
    cluster: bool = False
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: bool = False
    tls_ca_file: str | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    socket_timeout_s: float = 2.0
    socket_connect_timeout_s: float = 2.0
    retries: int = 1
    max_connections: int = 32

    def describe(self) -> str:
        """One log line, secrets masked."""
        return (
            f"url={mask_url(self.url)} cluster={self.cluster} "
            f"auth={'yes' if self.password or url_has_password(self.url) else 'no'} "
            f"tls={self.tls or self.url.startswith('rediss://')} "
            f"timeouts={self.socket_connect_timeout_s}/{self.socket_timeout_s}s "
            f"retries={self.retries}"
        )


# redis-py's from_url also reads credentials from the query string
# (``redis://host/0?password=secret``): those are secrets in a URL too.
_SECRET_PARAMS = frozenset({"password", "pass", "passwd", "secret", "token"})


def url_has_password(url: str) -> bool:
    parts = urlsplit(url)
    if parts.password is not None:
        return True
    return any(k.lower() in _SECRET_PARAMS and v for k, v in parse_qsl(parts.query, True))


def mask_url(url: str) -> str:
    """``redis://user:secret@host/0?password=secret`` -> ``redis://user:***@host/0?password=***``,
    for logs."""
    parts = urlsplit(url)
    if parts.password is not None:
        host = parts.hostname or ""
        if parts.port is not None:
            host = f"{host}:{parts.port}"
        user = parts.username or ""
        parts = parts._replace(netloc=f"{user}:***@{host}")
    if parts.query:
        pairs = parse_qsl(parts.query, keep_blank_values=True)
        if any(k.lower() in _SECRET_PARAMS for k, _ in pairs):
            masked = [(k, "***" if k.lower() in _SECRET_PARAMS else v) for k, v in pairs]
            parts = parts._replace(query=urlencode(masked, safe="*"))
    return urlunsplit(parts)


def _retry(settings: RedisSettings) -> Retry:
    return Retry(
        ExponentialWithJitterBackoff(base=0.05, cap=0.5),
        retries=settings.retries,
        supported_errors=(RedisConnectionError, RedisTimeoutError),
    )


def build_client(settings: RedisSettings) -> RedisClient:
    """The client for ``settings``, not yet connected (connections open lazily)."""
    kwargs: dict[str, Any] = {
        "socket_timeout": settings.socket_timeout_s,
        "socket_connect_timeout": settings.socket_connect_timeout_s,
        "retry": _retry(settings),
        "max_connections": settings.max_connections,
        "decode_responses": False,
    }
    if settings.password is not None:
        kwargs["password"] = settings.password
    if settings.username is not None:
        kwargs["username"] = settings.username
    url = settings.url
    if settings.tls and url.startswith("redis://"):
        # redis-py picks its TLS connection class from the URL scheme (an ``ssl=True``
        # argument next to a URL is refused), so the TLS flag becomes ``rediss://``.
        url = "rediss://" + url[len("redis://") :]
    if url.startswith("rediss://"):
        if settings.tls_ca_file:
            kwargs["ssl_ca_certs"] = settings.tls_ca_file
        if settings.tls_cert_file:
            kwargs["ssl_certfile"] = settings.tls_cert_file
        if settings.tls_key_file:
            kwargs["ssl_keyfile"] = settings.tls_key_file
    if settings.cluster:
        return RedisCluster.from_url(url, **kwargs)
    return aioredis.Redis.from_url(url, **kwargs)


async def connect_redis(settings: RedisSettings) -> RedisClient:
    """Build the client and check that Redis answers (for a cluster: discover the nodes).

    Raises ``redis.exceptions.RedisError`` (ConnectionError when unreachable) after closing
    the half-built client, so a caller may retry with its own backoff.
    """
    client = build_client(settings)
    try:
        if isinstance(client, RedisCluster):
            await client.initialize()
        else:
            await client.ping()
    except BaseException:
        await client.aclose()
        raise
    log.info("redis connected: %s", settings.describe())
    return client
