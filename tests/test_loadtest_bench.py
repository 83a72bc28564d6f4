"""``statecast bench`` end to end at a tiny size: it completes and prints one JSON object
with every promised key. Figures are printed, never asserted (the machine is shared)."""

from __future__ import annotations

import math
from pathlib import Path

import orjson
import pytest

from statecast.cli import main
from statecast.worker.metrics import STAGES

pytestmark = pytest.mark.integration

KEYS = (
    "naive_eps",
    "statecast_eps",
    "ratio",
    "cpu_us_per_event",
    "p50_ms",
    "p99_ms",
    "stages_us_per_event",
    "stages_cpu_us_per_event",
    "machine",
    "generator_eps",
    "targets",
)


def test_tiny_bench_prints_one_json_object_with_the_keys(
    kafka_bootstrap: str,
    redis_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    kafka_port = kafka_bootstrap.rsplit(":", 1)[1]
    redis_port = redis_url.rsplit(":", 1)[1].split("/")[0]
    monkeypatch.setenv("STATECAST_STACK_DIR", str(tmp_path / "stack"))
    monkeypatch.setenv("STATECAST_STACK_KAFKA_PORT", kafka_port)
    monkeypatch.setenv("STATECAST_STACK_REDIS_PORT", redis_port)
    code = main(
        [
            "bench",
            "--use-stack",
            "--no-pin",
            "--events",
            "3000",
            "--streams",
            "300",
            "--partitions",
            "4",
            "--naive-events",
            "300",
            "--naive-seconds",
            "3",
            "--latency-seconds",
            "2",
            "--rates",
            "400",
            "--workdir",
            str(tmp_path / "bench"),
        ]
    )
    out = capsys.readouterr().out.strip()
    assert code == 0
    result = orjson.loads(out)  # exactly one JSON object on stdout
    for key in KEYS:
        assert key in result, key
    assert result["events"] == 3000
    assert result["naive"]["events"] > 0
    assert result["naive_eps"] > 0
    assert result["statecast_eps"] > 0
    assert math.isclose(
        result["ratio"], result["statecast_eps"] / result["naive_eps"], rel_tol=0.01
    )
    assert result["cpu_us_per_event"] > 0
    for stage in STAGES:
        assert result["stages_us_per_event"][stage] >= 0
    assert result["stages_us_per_event"]["inference"] > 0
    assert result["stages_us_per_event"]["publish"] > 0
    latency = result["latency"]
    assert latency["matched"] == latency["sent"] > 0
    assert 0 < result["p50_ms"] <= result["p99_ms"] <= latency["max_ms"]
    assert result["machine"]["cores"] >= 1
    assert set(result["targets"]) == {
        "statecast_eps>=35000",
        "ratio>=30",
        "cpu_us_per_event<=16.8",
        "p99_ms<=50",
        "p99_ms<=50@10000eps",
    }
    (fixed,) = result["fixed_rate"]
    assert fixed["offered_eps"] == 400
    assert fixed["matched"] == fixed["sent"] > 0
    # The worker's own record-to-ack p99 comes from its histogram over the same phase.
    assert fixed["worker_p99_ms"] is not None
    assert fixed["worker_p99_ms"] > 0
    assert fixed["core_use"]["workers"] > 0
    print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())


def test_bench_on_gan_synthesised_streams(
    kafka_bootstrap: str,
    redis_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``--synthetic gan``: the backlog comes from the GAN synthesiser and the worker drains
    all of it (the synthesiser's realism is tested in test_gan_synthetic)."""
    kafka_port = kafka_bootstrap.rsplit(":", 1)[1]
    redis_port = redis_url.rsplit(":", 1)[1].split("/")[0]
    monkeypatch.setenv("STATECAST_STACK_DIR", str(tmp_path / "stack"))
    monkeypatch.setenv("STATECAST_STACK_KAFKA_PORT", kafka_port)
    monkeypatch.setenv("STATECAST_STACK_REDIS_PORT", redis_port)
    args = ["bench", "--use-stack", "--no-pin", "--synthetic", "gan", "--skip-naive"]
    args += ["--events", "2000", "--streams", "500", "--partitions", "2"]
    args += ["--latency-seconds", "1", "--rates", "", "--workdir", str(tmp_path / "bench")]
    code = main(args)
    out = capsys.readouterr().out.strip()
    assert code == 0
    result = orjson.loads(out.splitlines()[-1])
    assert result["synthetic"] == "gan"
    assert result["events"] == 2000
    assert result["generator_eps"] > 0
    assert result["statecast_eps"] > 0
    print(out)
