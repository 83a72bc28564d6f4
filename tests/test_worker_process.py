"""``statecast worker`` as a process: readiness, SIGTERM drain and exit codes; model refusal."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from statecast.contract.manifest import load_manifest, save_manifest
from statecast.worker.devstack import free_port
from statecast.worker.routing import Route
from statecast.worker.served import ModelLoadError, load_models
from statecast.worker.settings import Settings
from tests.fixtures.kafka import create_topic
from tests.fixtures.tiny_models import TinyModel, tiny_forecast_model, worker_settings


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    return tiny_forecast_model(tmp_path_factory.mktemp("proc"), cell="gru")


@pytest.mark.unit
def test_models_are_refused_when_altered_or_inconsistent(model: TinyModel, tmp_path: Path) -> None:
    settings = Settings(
        routes=(Route("sensor", model.spec.name),),
        manifest_path=model.manifest,
        model_root=model.root,
    )
    (served,) = load_models(settings)
    assert served.spec.state_version == model.spec.state_version

    entries = load_manifest(model.manifest)
    entry = entries[model.spec.name]
    for bad, match in [
        (replace(entry, sha256="0" * 64), "sha256"),
        (replace(entry, version="999"), "manifest says"),
    ]:
        manifest = tmp_path / f"{match}.json"
        save_manifest({entry.name: bad}, manifest)
        with pytest.raises(ModelLoadError, match=match):
            load_models(replace(settings, manifest_path=manifest))
    with pytest.raises(ModelLoadError, match="no such model"):
        load_models(replace(settings, routes=(Route("sensor", "nope"),)))


async def readyz(port: int) -> int:
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return 0
    writer.write(b"GET /readyz HTTP/1.1\r\n\r\n")
    await writer.drain()
    data = await reader.read()
    writer.close()
    await writer.wait_closed()
    return int(data.split()[1]) if data else 0


@pytest.mark.integration
async def test_sigterm_drains_and_exits_zero(
    model: TinyModel, kafka_bootstrap: str, redis_url: str, unique: Callable[[str], str]
) -> None:
    topic, preds, dlq = unique("sensor"), unique("predictions"), unique("dlq")
    for t in (topic, preds, dlq):
        await create_topic(kafka_bootstrap, t, partitions=2)
    port = free_port()
    settings = worker_settings(
        bootstrap=kafka_bootstrap,
        redis_url=redis_url,
        model=model,
        routes=[Route(topic, model.spec.name)],
        predictions=preds,
        dlq=dlq,
        group=unique("group"),
        prefix=unique("state"),
        http_host="127.0.0.1",
        http_port=port,
        drain_timeout_s=15.0,
    )
    env = dict(os.environ) | settings.to_env()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "statecast",
        "worker",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        status = 0
        for _ in range(600):
            status = await readyz(port)
            if status == 200 or proc.returncode is not None:
                break
            await asyncio.sleep(0.1)
        assert status == 200
        proc.send_signal(signal.SIGTERM)
        out, _ = await asyncio.wait_for(proc.communicate(), timeout=60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    log = out.decode(errors="replace")
    assert proc.returncode == 0, log[-3000:]
    assert "SIGTERM: stop fetching" in log
    assert "stopped:" in log


@pytest.mark.unit
def test_bad_configuration_exits_2() -> None:
    env = {**os.environ, "STATECAST_MAX_BATCH": "lots"}
    proc = subprocess.run(
        [sys.executable, "-m", "statecast", "worker"], env=env, capture_output=True, timeout=60
    )
    assert proc.returncode == 2
    assert b"STATECAST_MAX_BATCH" in proc.stdout + proc.stderr
