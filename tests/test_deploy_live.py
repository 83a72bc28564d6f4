"""The live test: a real Prometheus scrapes a running `statecast worker` under load.

The worker runs as its own process (the console script, as in the image) against the test
broker and a private Redis, serving a tiny step model. A producer feeds it valid events
with a fixed share of poison records. Prometheus (the Debian binary from
`make deploy-tools`) scrapes it every second and evaluates deploy/prometheus/alerts.yaml
with every `for:` set to 0 (the durations are promtool-tested; here the expressions meet
live data). Checked: every dashboard panel query returns finite data; the dead-letter
alert fires while poison flows and the no-predictions alert does not; after SIGTERM the
worker drains and exits 0, and the worker-down alert fires.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiokafka import AIOKafkaProducer

from deploy.tools import toolbox
from statecast.worker.devstack import Service, free_port
from tests.conftest import CONSUMER_SESSION_TIMEOUT_MS
from tests.fixtures.deploy import dashboard_exprs, fill_variables, need
from tests.fixtures.kafka import create_topic
from tests.fixtures.tiny_models import SENSOR_FEATURES, event, tiny_forecast_model

pytestmark = pytest.mark.integration

JOB = "statecast-worker"
POISON_EVERY = 10  # one record in ten is not JSON: a 10 % dead-letter share (alert at 1 %)


@dataclass
class Worker:
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=2) as r:
                return int(r.status), r.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, ""
        except OSError:
            return 0, ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


@dataclass
class Prometheus:
    url: str
    log: Path

    def api(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=5) as r:
            body = json.loads(r.read())
        assert body["status"] == "success", body
        return body["data"]

    def firing(self) -> set[str]:
        alerts = self.api("alerts")["alerts"]
        return {a["labels"]["alertname"] for a in alerts if a["state"] == "firing"}


def live_rules(tmp_path: Path) -> Path:
    """alerts.yaml with every `for:` set to 0s; expressions untouched."""
    rules = yaml.safe_load((toolbox.ROOT / "deploy/prometheus/alerts.yaml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            if "alert" in rule:
                rule["for"] = "0s"
    path = tmp_path / "alerts-live.yaml"
    path.write_text(yaml.safe_dump(rules))
    return path


@pytest.fixture
async def names(unique: Callable[[str], str], kafka_bootstrap: str) -> dict[str, str]:
    """Fresh names; the topics exist before the worker subscribes."""
    out = {k: unique(k) for k in ("sensor", "predictions", "dlq", "group", "prefix")}
    for topic in (out["sensor"], out["predictions"], out["dlq"]):
        await create_topic(kafka_bootstrap, topic, partitions=4)
    return out


@pytest.fixture
def worker(
    tmp_path: Path, kafka_bootstrap: str, private_redis: Service, names: dict[str, str]
) -> Iterator[Worker]:
    model = tiny_forecast_model(tmp_path / "model")
    port = free_port()
    env = {
        **os.environ,
        "STATECAST_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "STATECAST_GROUP_ID": names["group"],
        "STATECAST_KAFKA_SESSION_TIMEOUT_MS": str(CONSUMER_SESSION_TIMEOUT_MS),
        "STATECAST_REDIS_URL": f"redis://{private_redis.host}:{private_redis.port}/0",
        "STATECAST_ROUTES": f"{names['sensor']}=sensor_lstm",
        "STATECAST_PREDICTIONS_TOPIC": names["predictions"],
        "STATECAST_DLQ_TOPIC": names["dlq"],
        "STATECAST_STATE_PREFIX": names["prefix"],
        "STATECAST_MANIFEST": str(model.manifest),
        "STATECAST_MODEL_ROOT": str(model.root),
        "STATECAST_HTTP_HOST": "127.0.0.1",
        "STATECAST_HTTP_PORT": str(port),
        "STATECAST_DRAIN_TIMEOUT_S": "20",
    }
    log = tmp_path / "worker.log"
    with log.open("wb") as fh:
        process = subprocess.Popen(
            [str(Path(sys.executable).parent / "statecast"), "worker"],
            env=env,
            stdout=fh,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    w = Worker(process, port, log)
    try:
        yield w
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)


@pytest.fixture
def prometheus(tmp_path: Path, worker: Worker) -> Iterator[Prometheus]:
    need(toolbox.PROMETHEUS)
    port = free_port()
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
        "rule_files": [str(live_rules(tmp_path))],
        "scrape_configs": [
            {"job_name": JOB, "static_configs": [{"targets": [f"127.0.0.1:{worker.port}"]}]}
        ],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    log = tmp_path / "prometheus.log"
    with log.open("wb") as fh:
        process = subprocess.Popen(
            [
                str(toolbox.PROMETHEUS),
                f"--config.file={tmp_path / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=fh,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    prom = Prometheus(f"http://127.0.0.1:{port}", log)
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError):
                urllib.request.urlopen(f"{prom.url}/-/ready", timeout=1).close()
                break
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, f"Prometheus not ready:\n{log.read_text()}"
            time.sleep(0.2)
        yield prom
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


@contextlib.asynccontextmanager
async def load(bootstrap: str, topic: str, streams: int = 20) -> AsyncIterator[list[int]]:
    """Produce a steady trickle of events until the block ends; yields [records sent]."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    sent = [0]
    stop = asyncio.Event()

    async def feed() -> None:
        step = 0
        while not stop.is_set():
            batch = []
            for s in range(streams):
                n = step * streams + s
                value = (
                    b"{not json"
                    if n % POISON_EVERY == 0
                    else event(
                        f"s{s}",
                        int(time.time() * 1000),
                        dict(zip(SENSOR_FEATURES, (20.0 + s, 15.0, 1.0), strict=True)),
                    )
                )
                batch.append(await producer.send(topic, value, key=f"s{s}".encode()))
            await asyncio.gather(*batch)
            sent[0] += len(batch)
            step += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=0.2)

    task = asyncio.create_task(feed())
    try:
        yield sent
    finally:
        stop.set()
        await task
        await producer.stop()


async def eventually(
    check: Callable[[], Any], what: str, within_s: float, diagnostics: Callable[[], str]
) -> Any:
    """Poll ``check`` (run in a thread) until it returns something truthy."""
    deadline = time.monotonic() + within_s
    while True:
        result = await asyncio.to_thread(check)
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"{what} within {within_s:.0f}s\n{diagnostics()}", pytrace=False)
        await asyncio.sleep(0.5)


def has_finite_data(prom: Prometheus, expr: str) -> bool:
    result = prom.api("query", query=expr)["result"]
    return any(math.isfinite(float(r["value"][1])) for r in result)


async def test_prometheus_scrapes_a_loaded_worker_and_alerts_fire(
    worker: Worker, prometheus: Prometheus, kafka_bootstrap: str, names: dict[str, str]
) -> None:
    def diagnostics() -> str:
        return f"worker log:\n{worker.log_tail()}\nprometheus log tail:\n" + "\n".join(
            prometheus.log.read_text(errors="replace").splitlines()[-10:]
        )

    # Like the kubelet's readiness probe: /readyz also refreshes statecast_ready.
    await eventually(lambda: worker.get("/readyz")[0] == 200, "worker ready", 60, diagnostics)
    status, _ = worker.get("/healthz")
    assert status == 200

    queries = [fill_variables(e, rate_interval="15s") for e in dashboard_exprs()]
    async with load(kafka_bootstrap, names["sensor"]) as sent:

        def panels_without_data() -> list[str]:
            worker.get("/readyz")
            return [q for q in queries if not has_finite_data(prometheus, q)]

        def every_panel_has_data() -> bool:
            return not panels_without_data()

        await eventually(
            every_panel_has_data,
            "every dashboard query returns data",
            60,
            lambda: f"queries without data: {panels_without_data()}\n{diagnostics()}",
        )
        firing = await eventually(
            lambda: "StatecastDeadLetterRateHigh" in prometheus.firing() and prometheus.firing(),
            "StatecastDeadLetterRateHigh fires while poison records flow",
            30,
            diagnostics,
        )
        # Predictions flow: the alerts for a silent or broken worker stay quiet.
        assert firing.isdisjoint(
            {"StatecastNoPredictions", "StatecastWorkerDown", "StatecastRedisDown"}
        ), firing
        assert sent[0] > 0

    worker.process.send_signal(signal.SIGTERM)
    code = await asyncio.to_thread(worker.process.wait, 30)
    assert code == 0, f"worker exit code {code} after SIGTERM\n{worker.log_tail()}"
    await eventually(
        lambda: "StatecastWorkerDown" in prometheus.firing(),
        "StatecastWorkerDown fires once the worker is gone",
        30,
        diagnostics,
    )
