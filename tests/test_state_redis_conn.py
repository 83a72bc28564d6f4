"""Redis connection settings: AUTH and TLS reach a real redis-server; secrets stay out of logs."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
from redis.exceptions import AuthenticationError, RedisError
from redis.exceptions import ConnectionError as RedisConnectionError

from statecast.contract.spec import StateSpec
from statecast.worker.devstack import find_redis_server, free_port
from statecast.worker.state.redis_conn import RedisSettings, connect_redis, mask_url
from statecast.worker.state.store import ReadStatus, StateStore, StoredState

PASSWORD = "s3cret-for-tests"


@dataclass(frozen=True)
class TlsRedis:
    port: int
    ca_file: Path

    @property
    def url(self) -> str:
        return f"rediss://127.0.0.1:{self.port}/0"


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _make_certs(d: Path) -> None:
    """A throwaway CA and a server certificate for 127.0.0.1."""
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
        "-nodes", "-days", "1",
        "-keyout", "ca.key", "-out", "ca.crt", "-subj", "/CN=statecast-test-ca",
        cwd=d,
    )  # fmt: skip
    _openssl(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost",
        cwd=d,
    )  # fmt: skip
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _openssl(
        "x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "server.crt", "-days", "1", "-extfile", "san.ext",
        cwd=d,
    )  # fmt: skip


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsRedis]:
    # `make setup` installs openssl; without it this is a set-up failure, not a skip.
    assert shutil.which("openssl"), "the openssl command makes the test certificates"
    d = tmp_path_factory.mktemp("tls-redis")
    _make_certs(d)
    port = free_port()
    cmd = [
        str(find_redis_server()),
        "--port", "0",
        "--tls-port", str(port),
        "--bind", "127.0.0.1",
        "--tls-cert-file", str(d / "server.crt"),
        "--tls-key-file", str(d / "server.key"),
        "--tls-ca-cert-file", str(d / "ca.crt"),
        "--tls-auth-clients", "no",
        "--requirepass", PASSWORD,
        "--save", "",
        "--appendonly", "no",
        "--dir", str(d),
    ]  # fmt: skip
    with (d / "redis.log").open("ab") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while b"Ready to accept connections" not in (d / "redis.log").read_bytes():
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"TLS redis-server did not start:\n{(d / 'redis.log').read_text()}")
            time.sleep(0.05)
        yield TlsRedis(port, d / "ca.crt")
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def tls_settings(tls_redis: TlsRedis) -> RedisSettings:
    return RedisSettings(url=tls_redis.url, password=PASSWORD, tls_ca_file=str(tls_redis.ca_file))


@pytest.mark.integration
async def test_tls_and_auth_pass_through_to_the_store(tls_settings: RedisSettings) -> None:
    client = await connect_redis(tls_settings)
    try:
        specs = (StateSpec("h", 1, 4),)
        store = StateStore(client, 60, specs, "stls")
        state = StoredState({"h": np.arange(4, dtype=np.float32).reshape(1, 4)}, 1, 9, 1)
        await store.write_many([("tls:s1", state)])
        (result,) = await store.read_many(["tls:s1"])
        assert result.status is ReadStatus.OK
        assert result.state is not None
        np.testing.assert_array_equal(result.state.tensors["h"], state.tensors["h"])
    finally:
        await client.aclose()


@pytest.mark.integration
async def test_tls_flag_with_a_plain_url(tls_redis: TlsRedis) -> None:
    settings = RedisSettings(
        url=f"redis://127.0.0.1:{tls_redis.port}/0",
        tls=True,
        password=PASSWORD,
        tls_ca_file=str(tls_redis.ca_file),
    )
    client = await connect_redis(settings)
    try:
        assert await client.ping()
    finally:
        await client.aclose()


@pytest.mark.integration
async def test_wrong_password_is_refused(tls_settings: RedisSettings) -> None:
    with pytest.raises(AuthenticationError):
        await connect_redis(replace(tls_settings, password="wrong"))


@pytest.mark.integration
async def test_unknown_certificate_authority_is_refused(tls_settings: RedisSettings) -> None:
    # The system trust store does not know the test CA: the handshake must fail.
    with pytest.raises((RedisConnectionError, RedisError)):
        await connect_redis(replace(tls_settings, tls_ca_file=None))


@pytest.mark.integration
async def test_unreachable_redis_raises_connection_error() -> None:
    settings = RedisSettings(url=f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout_s=1)
    with pytest.raises(RedisConnectionError):
        await connect_redis(settings)


@pytest.mark.unit
def test_secrets_are_masked() -> None:
    s = RedisSettings(url="redis://user:hunter2@cache:6380/0", password="pw-in-field")
    assert "hunter2" not in mask_url(s.url)
    assert mask_url(s.url) == "redis://user:***@cache:6380/0"
    assert "hunter2" not in s.describe()
    assert "pw-in-field" not in s.describe()
    assert "pw-in-field" not in repr(s)
    assert "auth=yes" in s.describe()
    plain = RedisSettings(url="redis://cache:6380/0")
    assert mask_url(plain.url) == plain.url
    assert "auth=no" in plain.describe()
    assert "tls=True" in RedisSettings(url="rediss://cache:6380/0").describe()
