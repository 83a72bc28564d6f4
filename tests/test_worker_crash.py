"""Crash safety: ``kill -9`` of the worker process at many points, then restart.

One replayed stream set, one consumer group, one state prefix. The worker runs as a child
process (``python -m statecast worker``, configured by ``STATECAST_*`` as in production) and
is SIGKILLed repeatedly:

- by its own fault hook ``STATECAST_TEST_CRASH_AT`` between publish and state write
  (``after_publish``), between state write and offset commit (``after_state_write``) and
  after the commit (``after_commit``);
- from outside, at random wall-clock moments after it got its partitions.

A last run without faults drains the topic. Then:

- every stream's state in Redis equals the states of a fault-free worker run over the same
  topic (another group, another state prefix) and the same ONNX step run offline over the
  stream, and holds the stream's last offset: nothing was applied twice, nothing skipped;
- every input offset has at least one prediction; duplicates exist (the after_publish kill
  guarantees some) and share their id and content.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import re
import signal
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from statecast.worker.devstack import TANSU_SESSION_TIMEOUT_MS
from statecast.worker.loop import Worker
from statecast.worker.routing import Route
from statecast.worker.state.redis_conn import RedisSettings, connect_redis
from statecast.worker.state.store import StateStore, state_key
from tests.fixtures.delivery import check_outcome
from tests.fixtures.kafka import create_topic, produce
from tests.fixtures.streams import interleave, make_series
from tests.fixtures.tiny_models import (
    TinyModel,
    tiny_forecast_model,
    worker_settings,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
ASSIGNED_MARK = "assigned [("
IN_FLIGHT = re.compile(r"SIGKILL with (\d+) poll\(s\) in flight")
CRASH_SESSION_TIMEOUT_MS = min(3000, TANSU_SESSION_TIMEOUT_MS)

# -- running the worker as a child process ------------------------------------------------


@dataclass(frozen=True)
class WorkerRun:
    prefix: str  # the state key prefix it ran with
    seed: int  # of the random kill moments
    label: str
    returncode: int
    log: str
    seconds: float

    @property
    def killed(self) -> bool:
        return self.returncode == -signal.SIGKILL


def worker_env(settings: Mapping[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STATECAST_")}
    env.update(settings)
    return env


def _read_log(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


async def _wait_for_text(
    path: Path, text: str, proc: asyncio.subprocess.Process, within_s: float
) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline and proc.returncode is None:
        if text in _read_log(path):
            return True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), 0.05)
    return False


async def run_worker(
    prefix: str,
    seed: int,
    label: str,
    env: Mapping[str, str],
    log_path: Path,
    *,
    idle_timeout_s: float,
    kill_after_assigned_s: float | None = None,
    within_s: float = 45.0,
) -> WorkerRun:
    """Start a worker; SIGKILL it ``kill_after_assigned_s`` after it logged its partition
    assignment (if given); wait for it to end, bounded by ``within_s``."""
    t0 = time.monotonic()
    cmd = [sys.executable, "-m", "statecast", "worker", "--idle-timeout", str(idle_timeout_s)]
    with log_path.open("wb") as fh:
        proc = await asyncio.create_subprocess_exec(
            *cmd, env=dict(env), cwd=ROOT, stdout=fh, stderr=asyncio.subprocess.STDOUT
        )
    try:
        if kill_after_assigned_s is not None and await _wait_for_text(
            log_path, ASSIGNED_MARK, proc, within_s
        ):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), kill_after_assigned_s)
            if proc.returncode is None:
                proc.send_signal(signal.SIGKILL)
        left = max(1.0, within_s - (time.monotonic() - t0))
        rc = await asyncio.wait_for(proc.wait(), left)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return WorkerRun(prefix, seed, label, rc, _read_log(log_path), time.monotonic() - t0)


# -- data and reading back ----------------------------------------------------------------


@pytest.fixture(scope="module")
def lstm(tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    return tiny_forecast_model(tmp_path_factory.mktemp("crash-model"), seed=7)


@dataclass(frozen=True)
class Mode:
    """How the killed workers run, and which hooks kill them."""

    name: str
    checkpoint_interval_ms: int
    hooks: tuple[str, str, str]  # after_publish, after_state_write, after_commit with counts


MODES = (
    # Pipelined (the default): batch N+1 is computed while N delivers, so kills land with
    # two batches in flight; every batch writes its states and commits.
    Mode("pipelined", 0, ("after_publish:3", "after_state_write:5", "after_commit:8")),
    # Checkpointed: states and offsets only every 50 ms, predictions every batch; kills
    # land between checkpoints with many published, unwritten batches (and at them).
    Mode("checkpointed", 50, ("after_publish:6", "after_state_write:1", "after_commit:2")),
)


@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.name)
async def test_kill_9_at_many_points_then_restart(
    mode: Mode,
    lstm: TinyModel,
    kafka_bootstrap: str,
    redis_url: str,
    unique: Callable[[str], str],
    tmp_path: Path,
) -> None:
    series = make_series(n_streams=32, n_events=100, seed=3)
    topic, preds, dlq = unique("sensor"), unique("predictions"), unique("dlq")
    for t in (topic, preds, dlq):
        await create_topic(kafka_bootstrap, t, partitions=3)
    # The stream arrives in slices, one before each run (and the last before the final
    # run), so every run starts with a backlog however slow this machine's restarts are:
    # every kill lands mid-stream and the final run always has work left.
    records = interleave(series, seed=4)
    n_slices = 6
    slices = [
        records[i * len(records) // n_slices : (i + 1) * len(records) // n_slices]
        for i in range(n_slices)
    ]
    runs = await _kill_and_restart(
        kafka_bootstrap, redis_url, lstm, topic, preds, dlq, unique, tmp_path, slices, mode
    )
    duplicates = await check_outcome(
        bootstrap=kafka_bootstrap,
        redis_url=redis_url,
        model=lstm,
        series=series,
        topic=topic,
        predictions_topic=preds,
        prefix=runs[0].prefix,
    )
    assert duplicates > 0, "the after_publish kill must have produced re-published predictions"
    in_flight = [int(n) for r in runs for n in IN_FLIGHT.findall(r.log)]
    if mode.checkpoint_interval_ms == 0:
        # The hook reports the polls in flight when it fired: with pipelining, batch N+1
        # is taken in (and computed) while batch N publishes, writes and commits.
        assert any(n >= 2 for n in in_flight), in_flight
    await compare_with_fault_free_run(
        kafka_bootstrap, redis_url, lstm, topic, dlq, unique, list(series), records, runs[0].prefix
    )
    print(
        f"\n[crash test, {mode.name}] {len(runs) - 1} kills, in flight at hooks {in_flight}, "
        f"{duplicates} duplicate predictions; run seconds "
        + ", ".join(f"{r.label} {r.seconds:.1f}" for r in runs)
        + f" (kill seed {runs[0].seed})"
    )


async def compare_with_fault_free_run(
    kafka_bootstrap: str,
    redis_url: str,
    lstm: TinyModel,
    topic: str,
    dlq: str,
    unique: Callable[[str], str],
    streams: list[str],
    records: list[tuple[bytes, bytes]],
    crashed_prefix: str,
) -> None:
    """Run one worker without faults over the whole topic (in process, own group, own
    state prefix, own predictions topic) and compare its final states with the crashed
    run's, key by key."""
    preds = unique("faultfree-predictions")
    await create_topic(kafka_bootstrap, preds, partitions=3)
    settings = worker_settings(
        bootstrap=kafka_bootstrap,
        redis_url=redis_url,
        model=lstm,
        routes=[Route(topic, lstm.spec.name)],
        predictions=preds,
        dlq=dlq,
        group=unique("faultfree-group"),
        prefix=unique("faultfree"),
        max_batch_records=256,
    )
    settings = replace(
        settings, kafka=replace(settings.kafka, session_timeout_ms=CRASH_SESSION_TIMEOUT_MS)
    )
    total = len(records)
    stats = await Worker(settings, CollectorRegistry()).run(max_records=total, idle_timeout_s=20)
    assert stats.records == total
    assert stats.predictions == total
    spec = lstm.spec
    client = await connect_redis(RedisSettings(url=redis_url))
    try:
        store = StateStore(client, 60, spec.states, spec.state_version)
        crashed = await store.read_many(
            [state_key(crashed_prefix, spec.name, spec.state_version, s) for s in streams]
        )
        clean = await store.read_many(
            [state_key(settings.state_prefix, spec.name, spec.state_version, s) for s in streams]
        )
    finally:
        await client.aclose()
    for stream, a, b in zip(streams, crashed, clean, strict=True):
        assert a.state is not None, stream
        assert b.state is not None, stream
        assert (a.state.partition, a.state.offset) == (b.state.partition, b.state.offset), stream
        for name in a.state.tensors:
            # Wave batch sizes differ between the runs: float rounding may, nothing else.
            np.testing.assert_allclose(
                a.state.tensors[name], b.state.tensors[name], atol=1e-5, err_msg=stream
            )


async def _kill_and_restart(
    kafka_bootstrap: str,
    redis_url: str,
    lstm: TinyModel,
    topic: str,
    preds: str,
    dlq: str,
    unique: Callable[[str], str],
    tmp_path: Path,
    slices: list[list[tuple[bytes, bytes]]],
    mode: Mode,
) -> list[WorkerRun]:
    prefix = unique("crash")
    settings = worker_settings(
        bootstrap=kafka_bootstrap,
        redis_url=redis_url,
        model=lstm,
        routes=[Route(topic, lstm.spec.name)],
        predictions=preds,
        dlq=dlq,
        group=unique("group"),
        prefix=prefix,
        # Small batches: many batches, so every kill lands mid-stream.
        max_batch_records=16,
        checkpoint_interval_ms=mode.checkpoint_interval_ms,
    )
    # Shorter than the suite's 6 s: a SIGKILLed member stays in the group until its
    # session expires, and every restart here waits for that.
    settings = replace(
        settings, kafka=replace(settings.kafka, session_timeout_ms=CRASH_SESSION_TIMEOUT_MS)
    )
    env = worker_env(settings.to_env())
    # Fresh kill moments every run; the seed is in every failure message to replay one.
    seed = random.SystemRandom().randrange(1 << 32)
    rng = random.Random(seed)
    plan: list[tuple[str, str | None, float | None]] = [
        (f"hook {mode.hooks[0]}", mode.hooks[0], None),
        ("random kill", None, rng.uniform(0.05, 0.4)),
        (f"hook {mode.hooks[1]}", mode.hooks[1], None),
        ("random kill", None, rng.uniform(0.05, 0.4)),
        (f"hook {mode.hooks[2]}", mode.hooks[2], None),
    ]
    runs: list[WorkerRun] = []
    assert len(slices) == len(plan) + 1
    for i, (label, crash_at, kill_after) in enumerate(plan):
        await produce(kafka_bootstrap, topic, slices[i])
        run_env = dict(env)
        if crash_at is not None:
            run_env["STATECAST_TEST_CRASH_AT"] = crash_at
        run = await run_worker(
            prefix,
            seed,
            label,
            run_env,
            tmp_path / f"run{i}.log",
            idle_timeout_s=10,
            kill_after_assigned_s=kill_after,
        )
        runs.append(run)
        assert run.killed, (
            f"run {i} ({label}, seed {seed}) was not killed: rc {run.returncode}\n{run.log[-3000:]}"
        )
        if crash_at is not None:
            assert "STATECAST_TEST_CRASH_AT" in run.log, run.log[-3000:]
    await produce(kafka_bootstrap, topic, slices[-1])
    final = await run_worker(prefix, seed, "final", env, tmp_path / "final.log", idle_timeout_s=2)
    runs.append(final)
    assert final.returncode == 0, f"seed {seed}\n{final.log[-3000:]}"
    # The kills left work for the final run: they really landed mid-stream.
    assert "stopped: 0 records" not in final.log, final.log[-2000:]

    return runs
