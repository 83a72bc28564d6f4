"""Worker configuration: ``STATECAST_*`` environment variables parsed once into frozen objects.

``Settings.from_env`` is called once at start; everything downstream receives the object (or
the part of it it needs) and never reads the environment itself. ``Settings.describe``
renders it for the single start-up log line, secrets masked.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from statecast.contract.manifest import DEFAULT_MANIFEST
from statecast.worker.routing import Route, parse_routes
from statecast.worker.state.redis_conn import RedisSettings, mask_url

DEFAULT_ROUTES = "sensor=sensor_lstm;prices=price_gru"
CRASH_STAGES = ("after_publish", "after_state_write", "after_commit")
_MASK = "***"


class SettingsError(ValueError):
    """An environment variable is missing or malformed."""


@dataclass(frozen=True)
class KafkaSettings:
    bootstrap_servers: str = "127.0.0.1:19092"
    group_id: str = "statecast"
    client_id: str = "statecast-worker"
    session_timeout_ms: int = 10_000
    # aiokafka's 500 ms default makes a broker that waits out the full fetch wait (Tansu)
    # add up to half a second of latency to every batch; batches still fill up to
    # STATECAST_MAX_BATCH when a backlog is there.
    fetch_max_wait_ms: int = 10
    auto_offset_reset: str = "earliest"
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None

    def client_kwargs(self) -> dict[str, Any]:
        """Connection arguments shared by the aiokafka consumer and producer."""
        kwargs: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers,
            "client_id": self.client_id,
            "security_protocol": self.security_protocol,
        }
        if self.sasl_mechanism:
            kwargs["sasl_mechanism"] = self.sasl_mechanism
            kwargs["sasl_plain_username"] = self.sasl_username
            kwargs["sasl_plain_password"] = self.sasl_password
        if self.security_protocol in ("SSL", "SASL_SSL"):
            # Imported here: building an SSL context is only needed when TLS is on.
            from aiokafka.helpers import create_ssl_context

            kwargs["ssl_context"] = create_ssl_context(
                cafile=self.ssl_cafile, certfile=self.ssl_certfile, keyfile=self.ssl_keyfile
            )
        return kwargs


@dataclass(frozen=True)
class CrashPoint:
    """Test-only fault injection: SIGKILL ourselves on the ``n``-th batch reaching ``stage``."""

    stage: str
    n: int


@dataclass(frozen=True)
class Settings:
    kafka: KafkaSettings = field(default_factory=KafkaSettings)
    redis: RedisSettings = field(default_factory=RedisSettings)
    routes: tuple[Route, ...] = field(default_factory=lambda: parse_routes(DEFAULT_ROUTES))
    manifest_path: Path = DEFAULT_MANIFEST
    # ONNX paths in the manifest are relative to this directory (the repository root).
    model_root: Path = DEFAULT_MANIFEST.parent.parent
    predictions_topic: str = "predictions"
    dlq_topic: str = "statecast.dlq"
    state_prefix: str = "statecast"
    state_ttl_s: int = 7 * 24 * 3600
    # Bytes of stream states kept in process (LRU); a quarter of a 1 GiB pod. 0: no cache.
    state_cache_bytes: int = 256 * 1024 * 1024
    # Wall time a lane may spend decoding one batch before the rest becomes the next batch.
    batch_budget_ms: int = 5000
    max_batch_records: int = 4096
    poll_timeout_ms: int = 50
    device: str = "auto"  # auto | cpu | cuda
    intra_op_threads: int = 1
    inter_op_threads: int = 1
    http_host: str = "0.0.0.0"
    http_port: int = 8080
    dependency_timeout_s: float = 60.0
    retry_initial_s: float = 0.1
    retry_max_s: float = 5.0
    drain_timeout_s: float = 20.0
    # Compute batch N+1 of a route while batch N publishes, writes and commits.
    pipeline: bool = True
    # 0: write states and commit after every batch; else at most this often (checkpoints).
    checkpoint_interval_ms: int = 0
    crash_at: CrashPoint | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        e = _Env(os.environ if env is None else env)
        manifest = Path(e.text("STATECAST_MANIFEST", str(DEFAULT_MANIFEST)))
        kafka = KafkaSettings(
            bootstrap_servers=e.text("STATECAST_KAFKA_BOOTSTRAP", KafkaSettings.bootstrap_servers),
            group_id=e.text("STATECAST_GROUP_ID", KafkaSettings.group_id),
            client_id=e.text("STATECAST_CLIENT_ID", KafkaSettings.client_id),
            session_timeout_ms=e.integer(
                "STATECAST_KAFKA_SESSION_TIMEOUT_MS", KafkaSettings.session_timeout_ms
            ),
            fetch_max_wait_ms=e.integer(
                "STATECAST_KAFKA_FETCH_MAX_WAIT_MS", KafkaSettings.fetch_max_wait_ms, minimum=0
            ),
            auto_offset_reset=e.choice(
                "STATECAST_KAFKA_AUTO_OFFSET_RESET", "earliest", ("earliest", "latest")
            ),
            security_protocol=e.choice(
                "STATECAST_KAFKA_SECURITY_PROTOCOL",
                "PLAINTEXT",
                ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"),
            ),
            sasl_mechanism=e.opt("STATECAST_KAFKA_SASL_MECHANISM"),
            sasl_username=e.opt("STATECAST_KAFKA_SASL_USERNAME"),
            sasl_password=e.opt("STATECAST_KAFKA_SASL_PASSWORD"),
            ssl_cafile=e.opt("STATECAST_KAFKA_SSL_CAFILE"),
            ssl_certfile=e.opt("STATECAST_KAFKA_SSL_CERTFILE"),
            ssl_keyfile=e.opt("STATECAST_KAFKA_SSL_KEYFILE"),
        )
        redis = RedisSettings(
            url=e.text("STATECAST_REDIS_URL", RedisSettings.url),
            cluster=e.flag("STATECAST_REDIS_CLUSTER", False),
            username=e.opt("STATECAST_REDIS_USERNAME"),
            password=e.opt("STATECAST_REDIS_PASSWORD"),
            tls=e.flag("STATECAST_REDIS_TLS", False),
            tls_ca_file=e.opt("STATECAST_REDIS_TLS_CA_FILE"),
            tls_cert_file=e.opt("STATECAST_REDIS_TLS_CERT_FILE"),
            tls_key_file=e.opt("STATECAST_REDIS_TLS_KEY_FILE"),
        )
        try:
            routes = parse_routes(e.text("STATECAST_ROUTES", DEFAULT_ROUTES))
        except ValueError as exc:
            raise SettingsError(f"STATECAST_ROUTES: {exc}") from exc
        return cls(
            kafka=kafka,
            redis=redis,
            routes=routes,
            manifest_path=manifest,
            model_root=Path(e.text("STATECAST_MODEL_ROOT", str(manifest.parent.parent))),
            predictions_topic=e.text("STATECAST_PREDICTIONS_TOPIC", cls.predictions_topic),
            dlq_topic=e.text("STATECAST_DLQ_TOPIC", cls.dlq_topic),
            state_prefix=e.text("STATECAST_STATE_PREFIX", cls.state_prefix),
            state_ttl_s=e.integer("STATECAST_STATE_TTL_S", cls.state_ttl_s, minimum=1),
            state_cache_bytes=e.integer(
                "STATECAST_STATE_CACHE_BYTES", cls.state_cache_bytes, minimum=0
            ),
            batch_budget_ms=e.integer("STATECAST_BATCH_BUDGET_MS", cls.batch_budget_ms, minimum=1),
            max_batch_records=e.integer("STATECAST_MAX_BATCH", cls.max_batch_records, minimum=1),
            poll_timeout_ms=e.integer("STATECAST_POLL_TIMEOUT_MS", cls.poll_timeout_ms, minimum=0),
            device=e.choice("STATECAST_DEVICE", "auto", ("auto", "cpu", "cuda")),
            intra_op_threads=e.integer("STATECAST_INTRA_OP_THREADS", 1, minimum=1),
            inter_op_threads=e.integer("STATECAST_INTER_OP_THREADS", 1, minimum=1),
            http_host=e.text("STATECAST_HTTP_HOST", cls.http_host),
            http_port=e.integer("STATECAST_HTTP_PORT", cls.http_port, minimum=0),
            dependency_timeout_s=e.number(
                "STATECAST_DEPENDENCY_TIMEOUT_S", cls.dependency_timeout_s
            ),
            retry_initial_s=e.number("STATECAST_RETRY_INITIAL_S", cls.retry_initial_s),
            retry_max_s=e.number("STATECAST_RETRY_MAX_S", cls.retry_max_s),
            drain_timeout_s=e.number("STATECAST_DRAIN_TIMEOUT_S", cls.drain_timeout_s),
            pipeline=e.flag("STATECAST_PIPELINE", cls.pipeline),
            checkpoint_interval_ms=e.integer(
                "STATECAST_CHECKPOINT_INTERVAL_MS", cls.checkpoint_interval_ms, minimum=0
            ),
            crash_at=_crash_point(e.opt("STATECAST_TEST_CRASH_AT")),
        )

    def to_env(self) -> dict[str, str]:
        """The ``STATECAST_*`` variables that ``from_env`` reads back into these settings.

        Tools that start a worker process (bench, demo, tests) build a ``Settings`` and pass
        this, so no one writes the variable names by hand. Unset optional values are left
        out (``from_env`` reads an absent variable as its default)."""
        k, r = self.kafka, self.redis
        env: dict[str, str | None] = {
            "STATECAST_MANIFEST": str(self.manifest_path),
            "STATECAST_MODEL_ROOT": str(self.model_root),
            "STATECAST_KAFKA_BOOTSTRAP": k.bootstrap_servers,
            "STATECAST_GROUP_ID": k.group_id,
            "STATECAST_CLIENT_ID": k.client_id,
            "STATECAST_KAFKA_SESSION_TIMEOUT_MS": str(k.session_timeout_ms),
            "STATECAST_KAFKA_FETCH_MAX_WAIT_MS": str(k.fetch_max_wait_ms),
            "STATECAST_KAFKA_AUTO_OFFSET_RESET": k.auto_offset_reset,
            "STATECAST_KAFKA_SECURITY_PROTOCOL": k.security_protocol,
            "STATECAST_KAFKA_SASL_MECHANISM": k.sasl_mechanism,
            "STATECAST_KAFKA_SASL_USERNAME": k.sasl_username,
            "STATECAST_KAFKA_SASL_PASSWORD": k.sasl_password,
            "STATECAST_KAFKA_SSL_CAFILE": k.ssl_cafile,
            "STATECAST_KAFKA_SSL_CERTFILE": k.ssl_certfile,
            "STATECAST_KAFKA_SSL_KEYFILE": k.ssl_keyfile,
            "STATECAST_REDIS_URL": r.url,
            "STATECAST_REDIS_CLUSTER": "1" if r.cluster else "0",
            "STATECAST_REDIS_USERNAME": r.username,
            "STATECAST_REDIS_PASSWORD": r.password,
            "STATECAST_REDIS_TLS": "1" if r.tls else "0",
            "STATECAST_REDIS_TLS_CA_FILE": r.tls_ca_file,
            "STATECAST_REDIS_TLS_CERT_FILE": r.tls_cert_file,
            "STATECAST_REDIS_TLS_KEY_FILE": r.tls_key_file,
            "STATECAST_ROUTES": ";".join(route.to_text() for route in self.routes),
            "STATECAST_PREDICTIONS_TOPIC": self.predictions_topic,
            "STATECAST_DLQ_TOPIC": self.dlq_topic,
            "STATECAST_STATE_PREFIX": self.state_prefix,
            "STATECAST_STATE_TTL_S": str(self.state_ttl_s),
            "STATECAST_STATE_CACHE_BYTES": str(self.state_cache_bytes),
            "STATECAST_BATCH_BUDGET_MS": str(self.batch_budget_ms),
            "STATECAST_MAX_BATCH": str(self.max_batch_records),
            "STATECAST_POLL_TIMEOUT_MS": str(self.poll_timeout_ms),
            "STATECAST_DEVICE": self.device,
            "STATECAST_INTRA_OP_THREADS": str(self.intra_op_threads),
            "STATECAST_INTER_OP_THREADS": str(self.inter_op_threads),
            "STATECAST_HTTP_HOST": self.http_host,
            "STATECAST_HTTP_PORT": str(self.http_port),
            "STATECAST_DEPENDENCY_TIMEOUT_S": repr(self.dependency_timeout_s),
            "STATECAST_RETRY_INITIAL_S": repr(self.retry_initial_s),
            "STATECAST_RETRY_MAX_S": repr(self.retry_max_s),
            "STATECAST_DRAIN_TIMEOUT_S": repr(self.drain_timeout_s),
            "STATECAST_PIPELINE": "1" if self.pipeline else "0",
            "STATECAST_CHECKPOINT_INTERVAL_MS": str(self.checkpoint_interval_ms),
            "STATECAST_TEST_CRASH_AT": (
                f"{self.crash_at.stage}:{self.crash_at.n}" if self.crash_at else None
            ),
        }
        return {name: value for name, value in env.items() if value is not None}

    def describe(self) -> dict[str, Any]:
        """A loggable view of the settings with every secret replaced by ``***``."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, KafkaSettings | RedisSettings):
                value = {
                    sub.name: _mask(sub.name, getattr(value, sub.name)) for sub in fields(value)
                }
                if f.name == "redis":
                    value["url"] = mask_url(self.redis.url)
            elif f.name == "routes":
                value = [r.describe() for r in self.routes]
            elif isinstance(value, Path):
                value = str(value)
            elif isinstance(value, CrashPoint):
                value = f"{value.stage}:{value.n}"
            out[f.name] = value
        return out


def _mask(name: str, value: Any) -> Any:
    if value is not None and ("password" in name or "secret" in name):
        return _MASK
    return value


def _crash_point(raw: str | None) -> CrashPoint | None:
    if not raw:
        return None
    stage, _, n = raw.partition(":")
    if stage not in CRASH_STAGES or not n.isdigit() or int(n) < 1:
        raise SettingsError(
            f"STATECAST_TEST_CRASH_AT must be '<stage>:<n>' with stage in {CRASH_STAGES}, "
            f"got {raw!r}"
        )
    return CrashPoint(stage, int(n))


def parse_flag(value: str) -> bool:
    """A boolean setting or route option: 1/0, true/false, yes/no, on/off."""
    v = value.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected a boolean (1/0, true/false), got {value!r}")


class _Env:
    """Typed reads of one environment mapping, with the variable named in every error."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = env

    def opt(self, name: str) -> str | None:
        value = self._env.get(name, "").strip()
        return value or None

    def text(self, name: str, default: str) -> str:
        return self.opt(name) or default

    def integer(self, name: str, default: int, minimum: int | None = None) -> int:
        raw = self.opt(name)
        if raw is None:
            return default
        try:
            value = int(raw)
        except ValueError as exc:
            raise SettingsError(f"{name} must be an integer, got {raw!r}") from exc
        if minimum is not None and value < minimum:
            raise SettingsError(f"{name} must be >= {minimum}, got {value}")
        return value

    def number(self, name: str, default: float) -> float:
        raw = self.opt(name)
        if raw is None:
            return default
        try:
            value = float(raw)
        except ValueError as exc:
            raise SettingsError(f"{name} must be a number, got {raw!r}") from exc
        if not value >= 0:
            raise SettingsError(f"{name} must be >= 0, got {raw!r}")
        return value

    def flag(self, name: str, default: bool) -> bool:
        raw = self.opt(name)
        if raw is None:
            return default
        try:
            return parse_flag(raw)
        except ValueError as exc:
            raise SettingsError(f"{name}: {exc}") from None

    def choice(self, name: str, default: str, allowed: tuple[str, ...]) -> str:
        value = self.text(name, default)
        if value not in allowed:
            raise SettingsError(f"{name} must be one of {allowed}, got {value!r}")
        return value
