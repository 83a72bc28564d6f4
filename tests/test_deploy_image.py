"""Build the container image for real and run it (`make deploy-image-check`).

No image can be pulled here, so the base is made locally: debootstrap a minimal Debian 12
with python3 (deploy/docker/make-base.sh) and `docker import` it. The Docker daemon is the
Debian `docker.io` one, started by this test on its own socket under .cache/deploy (the
legacy builder, cgroupfs driver, host network: no bridge or iptables needed) and stopped
again when the test started it. The image is built with deploy/docker/build.sh, then run
hardened as Kubernetes runs it (read-only root, /tmp tmpfs, no capabilities) against the
test broker and Redis: it must answer /healthz and /metrics, turn healthy by its own
HEALTHCHECK, and exit 0 on SIGTERM. Slow (minutes cold), so it only runs when
STATECAST_DEPLOY_IMAGE is set.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from deploy.tools import toolbox
from statecast.worker.devstack import free_port
from tests.conftest import CONSUMER_SESSION_TIMEOUT_MS
from tests.fixtures.tiny_models import tiny_forecast_model

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.image]

T = TypeVar("T")
IMAGE_ENV = "STATECAST_DEPLOY_IMAGE"
BASE_TAG = "statecast-base:bookworm"
IMAGE_TAG = "statecast:test"
DOCKER_DIR = toolbox.CACHE / "docker"
SOCKET = DOCKER_DIR / "docker.sock"
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


def docker_env() -> dict[str, str]:
    # The Debian daemon (20.10) with the legacy builder: no buildx needed.
    return {**os.environ, "DOCKER_HOST": f"unix://{SOCKET}", "DOCKER_BUILDKIT": "0"}


def docker(*args: str, timeout: float = 120, check: bool = True) -> str:
    proc = subprocess.run(
        ["docker", *args],
        env=docker_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check and proc.returncode != 0:
        pytest.fail(f"docker {' '.join(args)} failed:\n{proc.stdout}{proc.stderr}", pytrace=False)
    return proc.stdout


def daemon_answers() -> bool:
    proc = subprocess.run(
        ["docker", "version", "--format", "{{.Server.Version}}"],
        env=docker_env(),
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    return proc.returncode == 0 and proc.stdout.strip() != ""


@pytest.fixture(scope="module")
def engine() -> Iterator[None]:
    # Deselected by default (pytest addopts `-m "not image"`); selected, it must run.
    if not os.environ.get(IMAGE_ENV):
        pytest.fail(f"run the image test through `make deploy-image-check` ({IMAGE_ENV})")
    missing = [b for b in ("docker", "dockerd", "debootstrap") if shutil.which(b) is None]
    if missing:
        pytest.fail(f"{missing} missing: run `make deploy-image-tools`", pytrace=False)
    if daemon_answers():
        yield  # a daemon of an earlier run: leave it to whoever started it
        return
    DOCKER_DIR.mkdir(parents=True, exist_ok=True)
    log = DOCKER_DIR / "dockerd.log"
    with log.open("ab") as fh:
        process = subprocess.Popen(
            [
                "dockerd",
                "--exec-opt",
                "native.cgroupdriver=cgroupfs",
                "--host",
                f"unix://{SOCKET}",
                "--data-root",
                str(DOCKER_DIR / "data"),
                "--exec-root",
                f"/tmp/statecast-dockerd-{os.getuid()}",
                "--pidfile",
                str(DOCKER_DIR / "dockerd.pid"),
                "--bridge=none",
                "--iptables=false",
                "--ip6tables=false",
            ],
            stdout=fh,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        deadline = time.monotonic() + 60
        while not daemon_answers():
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"dockerd did not start:\n{log.read_text()[-3000:]}", pytrace=False)
            time.sleep(0.5)
        yield
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@pytest.fixture(scope="module")
def image(engine: None) -> str:
    base = subprocess.run(
        ["sh", "deploy/docker/make-base.sh", str(toolbox.CACHE / "rootfs"), BASE_TAG, "docker"],
        cwd=toolbox.ROOT,
        env=docker_env(),
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert base.returncode == 0, base.stdout[-3000:] + base.stderr[-3000:]
    env = {**docker_env(), "BASE_IMAGE": BASE_TAG, "BUILD_NETWORK": "host"}
    if CA_BUNDLE.exists():
        env["CA_BUNDLE"] = str(CA_BUNDLE)
    started = time.monotonic()
    build = subprocess.run(
        ["sh", "deploy/docker/build.sh", IMAGE_TAG],
        cwd=toolbox.ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
        check=False,
    )
    assert build.returncode == 0, build.stdout[-5000:] + build.stderr[-3000:]
    # Rebuilds leave the previous image untagged: keep .cache/deploy/docker small.
    docker("image", "prune", "--force")
    size = docker("image", "inspect", IMAGE_TAG, "--format", "{{.Size}}").strip()
    print(f"image {IMAGE_TAG}: built in {time.monotonic() - started:.0f}s, {int(size) >> 20} MiB")
    return IMAGE_TAG


@pytest.mark.timeout(1800)
def test_image_is_minimal_and_non_root(image: str) -> None:
    config = json.loads(docker("image", "inspect", image, "--format", "{{json .Config}}"))
    assert config["User"] == "10001:10001"
    assert config["Healthcheck"]["Test"][0] == "CMD"
    assert config["Entrypoint"] == ["statecast"]
    probe = (
        "import importlib.util as u, shutil; "
        "print([u.find_spec(m) is None for m in ('torch', 'pip', 'pandas')],"
        " [shutil.which(c) is None for c in ('gcc', 'cc', 'g++')],"
        " u.find_spec('onnxruntime') is not None)"
    )
    out = docker("run", "--rm", "--network", "host", "--entrypoint", "python3", image, "-c", probe)
    assert out.strip() == "[True, True, True] [True, True, True] True"


@pytest.mark.timeout(1800)
def test_container_serves_health_and_metrics_and_drains(
    image: str, tmp_path: Path, kafka_bootstrap: str, redis_url: str
) -> None:
    port = free_port()
    name = f"statecast-test-{port}"
    docker(
        "run",
        "--detach",
        "--name",
        name,
        "--network",
        "host",
        "--read-only",
        "--tmpfs",
        "/tmp",
        "--cap-drop",
        "ALL",
        "--security-opt",
        "no-new-privileges",
        *model_args(tmp_path),
        "--env",
        f"STATECAST_KAFKA_BOOTSTRAP={kafka_bootstrap}",
        "--env",
        f"STATECAST_REDIS_URL={redis_url}",
        "--env",
        "STATECAST_ROUTES=sensor-image-test=sensor_lstm",
        "--env",
        f"STATECAST_GROUP_ID={name}",
        "--env",
        f"STATECAST_KAFKA_SESSION_TIMEOUT_MS={CONSUMER_SESSION_TIMEOUT_MS}",
        "--env",
        f"STATECAST_HTTP_PORT={port}",
        "--env",
        "STATECAST_DRAIN_TIMEOUT_S=20",
        image,
    )
    try:
        wait_for(lambda: get(port, "/healthz")[0] == 200, "/healthz answers 200", name)
        status, metrics = get(port, "/metrics")
        assert status == 200
        for metric in ("statecast_ready", "statecast_records_consumed_total"):
            assert metric in metrics
        wait_for(
            lambda: inspect(name, "{{.State.Health.Status}}") == "healthy",
            "the image's HEALTHCHECK reports healthy",
            name,
            within_s=90,
        )
        docker("stop", "--time", "40", name, timeout=60)
        state = json.loads(inspect(name, "{{json .State}}"))
        assert state["ExitCode"] == 0, container_log(name)
    finally:
        with contextlib.suppress(subprocess.TimeoutExpired):
            docker("rm", "--force", name, check=False)


def model_args(tmp_path: Path) -> list[str]:
    """Serve the sensor model baked into the image when the repository ships it, else a
    tiny one mounted read-only (before the trained models exist)."""
    manifest = toolbox.ROOT / "models" / "manifest.json"
    if manifest.exists():
        shipped = {m["name"] for m in json.loads(manifest.read_text())["models"]}
        if "sensor_lstm" in shipped:
            return []
    model = tiny_forecast_model(tmp_path / "model")
    return [
        "--volume",
        f"{model.root}:/models:ro",
        "--env",
        "STATECAST_MANIFEST=/models/models/manifest.json",
        "--env",
        "STATECAST_MODEL_ROOT=/models",
    ]


def container_log(name: str) -> str:
    proc = subprocess.run(
        ["docker", "logs", "--tail", "40", name],
        env=docker_env(),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return proc.stdout + proc.stderr


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
            return int(r.status), r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, ""
    except OSError:
        return 0, ""


def inspect(name: str, fmt: str) -> str:
    return docker("inspect", "--format", fmt, name).strip()


def wait_for(check: Callable[[], T], what: str, name: str, within_s: float = 60) -> T:
    """Poll ``check`` until it returns something truthy; fail with the container's log."""
    deadline = time.monotonic() + within_s
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(
                f"{what} within {within_s:.0f}s; container log:\n{container_log(name)}",
                pytrace=False,
            )
        time.sleep(0.5)
