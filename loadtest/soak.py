"""The hostile soak: every route at once, hostile records of every class, kill -9 of the worker.

``python -m statecast.loadtest.soak --records 100000 --kills 3`` (against a running broker and
Redis, or ``--start-stack`` for a private Tansu and redis-server) does, with a seed:

1. builds the records (:mod:`statecast.loadtest.soak_data`): valid streams on the forecast,
   text (conversation mode) and frame routes, mixed with ``--hostile`` of hostile records
   covering every class, each with the dead-letter reason it must get; it also stores
   values we did not write (a list, garbage bytes) under some valid streams' state keys;
2. produces them in ``kills + 1`` slices; after each slice, a real ``statecast worker``
   process runs, SIGKILLed mid-slice: by its own fault hook (``STATECAST_TEST_CRASH_AT``,
   the test-only SIGKILL after the n-th batch reaches a stage), cycling through the three
   kill points of the delivery order (after publish, after the state write, after the
   commit), so every kill lands while records are in flight (a wall-clock kill of a fast
   worker lands when it is idle); a run the hook missed is killed from outside. The last
   run is not killed and stops when idle;
3. checks, and prints as one JSON object:
   - the worker never exited on its own before its kill (an exit on input fails the soak);
   - every input offset has exactly one outcome: a prediction (its id) or a dead letter (its
     source), after dropping duplicate ids; every hostile record's dead letter has its
     expected reason; no valid record is dead-lettered;
   - every valid stream's final state in Redis equals a fault-free offline run (the same
     codec and ONNX step from a zero state over its accepted records in offset order), and
     records its last offset; streams named only by refused records have no state;
   - the worker's peak RSS (VmHWM, sampled every 0.2 s) stays under ``--rss-ceiling-mib``.

The test suite runs a scaled-down soak (tests/test_hostile_soak.py); the figures of a full
run are in docs/hostile-input.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from statecast.loadtest.soak_data import FORECAST, FRAMES, TEXT, SoakData, SoakRecord, build
from statecast.loadtest.topics import ensure_topics, partition_counts
from statecast.worker.batching import StreamWork, run_waves
from statecast.worker.codecs.base import Decoded, RawRecord
from statecast.worker.devstack import Service, free_port
from statecast.worker.routing import parse_routes
from statecast.worker.served import ServedModel, load_models
from statecast.worker.settings import CRASH_STAGES, KafkaSettings, Settings
from statecast.worker.state.redis_conn import RedisSettings, connect_redis
from statecast.worker.state.store import StateStore, state_key

ASSIGNED_MARK = "assigned [("
MODELS = {FORECAST: "sensor_lstm", TEXT: "sentiment_lstm", FRAMES: "video_lstm"}
OPTIONS = {FORECAST: "", TEXT: "?mode=conversation", FRAMES: ""}
STATE_ATOL = 1e-4


@dataclass
class SoakConfig:
    bootstrap: str
    redis_url: str
    records: int = 100_000
    hostile_share: float = 0.12
    kills: int = 3
    seed: int = 0
    partitions: int = 4
    max_batch: int = 512
    kill_fallback_s: float = 60.0  # kill from outside if the hook has not fired by then
    final_idle_s: float = 8.0
    rss_ceiling_mib: float = 1024.0
    session_timeout_ms: int = 3000
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="soak-")))
    run_id: str = field(default_factory=lambda: f"{os.getpid()}-{int(time.time())}")


@dataclass
class WorkerRun:
    label: str
    returncode: int
    killed: bool
    seconds: float
    peak_rss_mib: float
    log: Path


# -- setup ---------------------------------------------------------------------------------


def _settings(cfg: SoakConfig, topics: dict[str, str], preds: str, dlq: str) -> Settings:
    routes = ";".join(f"{topics[r]}={MODELS[r]}{OPTIONS[r]}" for r in MODELS)
    return Settings(
        kafka=KafkaSettings(
            bootstrap_servers=cfg.bootstrap,
            group_id=f"soak-{cfg.run_id}",
            session_timeout_ms=cfg.session_timeout_ms,
        ),
        redis=RedisSettings(url=cfg.redis_url),
        routes=parse_routes(routes),
        predictions_topic=preds,
        dlq_topic=dlq,
        state_prefix=f"soak-{cfg.run_id}",
        max_batch_records=cfg.max_batch,
        http_port=0,
        device="cpu",
    )


async def _poison_redis(settings: Settings, served: dict[str, ServedModel], data: SoakData) -> None:
    client = aioredis.Redis.from_url(settings.redis.url)
    try:
        for (route, stream), how in data.redis_poison.items():
            spec = served[route].spec
            key = state_key(settings.state_prefix, spec.name, spec.state_version, stream)
            if how == "wrong_type":
                await client.rpush(key, b"a list where a state should be")
            else:
                await client.set(key, b"SCST garbage that is no state at all")
    finally:
        await client.aclose()


async def _produce(
    bootstrap: str, topics: dict[str, str], records: Sequence[SoakRecord]
) -> list[tuple[str, int, int]]:
    """Produce in order; returns each record's (topic, partition, offset)."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=5, max_request_size=1 << 20
    )
    await producer.start()
    try:
        futures = [await producer.send(topics[r.route], r.value, key=r.key) for r in records]
        metas = await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return [(m.topic, m.partition, m.offset) for m in metas]


# -- running the worker --------------------------------------------------------------------


def _peak_rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _close(a: Any, b: Any) -> bool:
    """Two predictions equal up to ``STATE_ATOL`` (numbers) and exactly (everything else)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float | int) and isinstance(b, float | int):
        return abs(a - b) <= STATE_ATOL
    return bool(a == b)


def _stop_line(log_path: Path) -> str:
    """How a run ended, from its log: the fault hook's line or the worker's stop summary."""
    for line in reversed(log_path.read_text(errors="replace").splitlines()):
        if "STATECAST_TEST_CRASH_AT=" in line or "stopped:" in line:
            return line.split(" ", 3)[-1][:200]
    return "killed from outside" if log_path.exists() else ""


def _replays(log_path: Path) -> int:
    """Records the offset fence skipped in a run that stopped cleanly (its stop line)."""
    found = re.search(r"(\d+) replays skipped", log_path.read_text(errors="replace"))
    return int(found.group(1)) if found else 0


def _assigned(log_path: Path) -> bool:
    return ASSIGNED_MARK in log_path.read_text(errors="replace")


async def _run_worker(
    env: dict[str, str],
    log_path: Path,
    label: str,
    kill_after_s: float | None,
    idle_s: float,
) -> WorkerRun:
    """Run a worker until it exits; with ``kill_after_s``, SIGKILL it that long after it got
    its partitions if it is still alive (a hook in ``env`` may kill it first)."""
    t0 = time.monotonic()
    cmd = [sys.executable, "-m", "statecast", "worker", "--idle-timeout", str(idle_s)]
    peak = 0.0
    with log_path.open("wb") as fh:
        proc = await asyncio.create_subprocess_exec(
            *cmd, env=env, stdout=fh, stderr=asyncio.subprocess.STDOUT
        )
    try:
        kill_at: float | None = None
        while proc.returncode is None:
            peak = max(peak, _peak_rss_mib(proc.pid))
            if kill_after_s is not None and kill_at is None and _assigned(log_path):
                kill_at = time.monotonic() + kill_after_s
            if kill_at is not None and time.monotonic() >= kill_at:
                proc.send_signal(signal.SIGKILL)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), 0.2)
            if time.monotonic() - t0 > 1800:
                proc.kill()
                raise RuntimeError(f"{label}: the worker did not finish within 30 minutes")
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    rc = proc.returncode if proc.returncode is not None else -9
    killed = rc == -signal.SIGKILL
    return WorkerRun(label, rc, killed, time.monotonic() - t0, round(peak, 1), log_path)


# -- reading back --------------------------------------------------------------------------


async def _read_all(bootstrap: str, topic: str) -> list[Any]:
    counts = await partition_counts(bootstrap, [topic], wait_s=5.0)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_bytes=32 << 20,
        max_partition_fetch_bytes=8 << 20,
    )
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(counts.get(topic, 0))]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        out: list[Any] = []
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            positions = [await consumer.position(tp) for tp in tps]
            if all(pos >= ends[tp] for pos, tp in zip(positions, tps, strict=True)):
                break
            for recs in (await consumer.getmany(timeout_ms=500, max_records=20_000)).values():
                out.extend(recs)
        return out
    finally:
        await consumer.stop()


def _offline_states(
    served: ServedModel, raws: Sequence[RawRecord]
) -> dict[str, tuple[dict[str, np.ndarray[Any, Any]], int]]:
    """Fault-free reference: each stream's state after its accepted records, from zero, and
    its last applied offset."""
    decoded = served.codec.decode(raws)
    streams: dict[str, StreamWork] = {}
    for raw, res in zip(raws, decoded, strict=True):
        if isinstance(res, Decoded):
            w = streams.setdefault(res.stream, StreamWork(res.stream, res.stream, raw.partition))
            w.records.append((raw, res))
    works = list(streams.values())
    out: dict[str, tuple[dict[str, np.ndarray[Any, Any]], int]] = {}
    for i in range(0, len(works), 256):
        chunk = works[i : i + 256]
        outcome = run_waves(served.session, served.codec, served.spec.states, chunk)
        for w, final in zip(chunk, outcome.final_states, strict=True):
            out[w.stream] = (final, w.records[-1][0].offset)
    return out


# -- the soak ------------------------------------------------------------------------------


async def run_soak(cfg: SoakConfig) -> dict[str, Any]:
    t_start = time.monotonic()
    topics = {r: f"soak-{r}-{cfg.run_id}" for r in MODELS}
    preds, dlq = f"soak-predictions-{cfg.run_id}", f"soak-dlq-{cfg.run_id}"
    settings = _settings(cfg, topics, preds, dlq)
    served_list = load_models(settings)
    served = {r: m for r in MODELS for m in served_list if m.route.topic == topics[r]}
    features = served[FORECAST].spec.features
    pre = served[FRAMES].spec.preprocess
    data = build(
        cfg.records, cfg.hostile_share, features, (int(pre["height"]), int(pre["width"])), cfg.seed
    )
    await ensure_topics(
        cfg.bootstrap,
        {
            **{t: cfg.partitions for t in topics.values()},
            preds: cfg.partitions,
            dlq: cfg.partitions,
        },
    )
    await _poison_redis(settings, served, data)
    env = {k: v for k, v in os.environ.items() if not k.startswith("STATECAST_")}
    env.update(settings.to_env())
    n_slices = cfg.kills + 1
    bounds = [len(data.records) * i // n_slices for i in range(n_slices + 1)]
    positions: list[tuple[str, int, int]] = []
    runs: list[WorkerRun] = []
    for i in range(n_slices):
        sliced = data.records[bounds[i] : bounds[i + 1]]
        positions += await _produce(cfg.bootstrap, topics, sliced)
        last = i == n_slices - 1
        run_env = dict(env)
        label = "final"
        if not last:
            # The n-th batch of the slice (3 lanes share the batches): mid-slice.
            n = max(2, min(8, len(sliced) // (6 * cfg.max_batch)))
            stage = CRASH_STAGES[i % len(CRASH_STAGES)]
            run_env["STATECAST_TEST_CRASH_AT"] = f"{stage}:{n}"
            label = f"kill {i + 1} at {stage}:{n}"
        runs.append(
            await _run_worker(
                run_env,
                cfg.workdir / f"run{i}.log",
                label,
                None if last else cfg.kill_fallback_s,
                cfg.final_idle_s if last else 3600.0,
            )
        )
    produced_s = time.monotonic() - t_start
    failures: list[str] = []
    for run in runs[:-1]:
        if not run.killed or run.returncode != -signal.SIGKILL:
            failures.append(f"{run.label}: the worker exited on its own (rc {run.returncode})")
    if runs[-1].returncode != 0:
        failures.append(f"final run: rc {runs[-1].returncode}")

    # -- outcomes ----------------------------------------------------------------------
    pred_msgs = await _read_all(cfg.bootstrap, preds)
    dead_msgs = await _read_all(cfg.bootstrap, dlq)
    by_id: dict[str, list[Any]] = {}
    for m in pred_msgs:
        body = orjson.loads(m.value)
        by_id.setdefault(body["id"], []).append(body["prediction"])
    dead_by_source: dict[str, set[str]] = {}
    for m in dead_msgs:
        headers = dict(m.headers)
        dead_by_source.setdefault(headers["statecast.source"].decode(), set()).add(
            headers["statecast.reason"].decode()
        )
    outcome_counts: Counter[str] = Counter()
    wrong_reason: Counter[str] = Counter()
    for rec, (topic, part, off) in zip(data.records, positions, strict=True):
        ident = f"{topic}/{part}/{off}"
        has_pred, reasons = ident in by_id, dead_by_source.get(ident, set())
        if has_pred and reasons:
            outcome_counts["both"] += 1
        elif not has_pred and not reasons:
            outcome_counts["none"] += 1
        elif len(reasons) > 1:
            outcome_counts["several_reasons"] += 1
        elif rec.reason is None:
            outcome_counts["prediction" if has_pred else "valid_dead_lettered"] += 1
        elif has_pred:
            outcome_counts["hostile_predicted"] += 1
        else:
            outcome_counts["dead_letter"] += 1
            if rec.reason not in reasons:
                wrong_reason[f"{rec.hostile}: {sorted(reasons)} != {rec.reason}"] += 1
    duplicates = sum(len(v) - 1 for v in by_id.values())
    # A replayed record is recomputed in another batch: other wave sizes can move float32
    # results in the last bits, so duplicates must agree within the state tolerance.
    differing = sum(1 for v in by_id.values() if any(not _close(v[0], o) for o in v[1:]))
    for bad in ("both", "none", "several_reasons", "valid_dead_lettered", "hostile_predicted"):
        if outcome_counts[bad]:
            failures.append(f"{outcome_counts[bad]} input offsets with outcome {bad!r}")
    if wrong_reason:
        failures.append(f"dead letters with another reason: {dict(wrong_reason)}")
    if differing:
        failures.append(f"{differing} duplicated prediction ids with different predictions")

    # -- states ------------------------------------------------------------------------
    client = await connect_redis(settings.redis)
    state_mismatches: list[str] = []
    streams_checked = 0
    try:
        for route, model in served.items():
            raws = [
                RawRecord(t, p, o, 0, r.key, r.value)
                for r, (t, p, o) in zip(data.records, positions, strict=True)
                if r.route == route
            ]
            raws.sort(key=lambda r: (r.partition, r.offset))
            reference = _offline_states(model, raws)
            store = StateStore(
                client, settings.state_ttl_s, model.spec.states, model.spec.state_version
            )
            names = sorted(reference)
            keys = [
                state_key(settings.state_prefix, model.name, model.spec.state_version, s)
                for s in names
            ]
            stored = []
            for i in range(0, len(keys), 2000):
                stored += await store.read_many(keys[i : i + 2000])
            for name, res in zip(names, stored, strict=True):
                want, last_offset = reference[name]
                streams_checked += 1
                if res.state is None:
                    state_mismatches.append(f"{route}/{name}: no state ({res.status.value})")
                    continue
                worst = max(float(np.abs(res.state.tensors[k] - want[k]).max()) for k in want)
                if worst > STATE_ATOL or res.state.offset != last_offset:
                    state_mismatches.append(
                        f"{route}/{name}: max |diff| {worst:.2e}, offset {res.state.offset} "
                        f"!= {last_offset}"
                    )
            for orphan in ("someone-else", "other-conv"):
                key = state_key(settings.state_prefix, model.name, model.spec.state_version, orphan)
                if await client.exists(key):
                    state_mismatches.append(f"{route}/{orphan}: a refused record wrote state")
    finally:
        await client.aclose()
    if state_mismatches:
        failures.append(
            f"{len(state_mismatches)} streams off the reference: {state_mismatches[:5]}"
        )
    peak = max(r.peak_rss_mib for r in runs)
    if peak > cfg.rss_ceiling_mib:
        failures.append(f"peak RSS {peak} MiB over the ceiling {cfg.rss_ceiling_mib} MiB")
    hostile_by_class = Counter(r.hostile for r in data.records if r.hostile is not None)
    return {
        "passed": not failures,
        "failures": failures,
        "records": len(data.records),
        "hostile": data.hostile,
        "hostile_share": round(data.hostile / len(data.records), 4),
        "hostile_classes": len(hostile_by_class),
        "hostile_by_class": dict(sorted(hostile_by_class.items())),
        "redis_values_not_ours": len(data.redis_poison),
        "records_by_route": dict(Counter(r.route for r in data.records)),
        "kills": sum(1 for r in runs if r.killed),
        "runs": [
            {
                "label": r.label,
                "rc": r.returncode,
                "seconds": round(r.seconds, 1),
                "peak_rss_mib": r.peak_rss_mib,
                "stopped": _stop_line(r.log),
            }
            for r in runs
        ],
        "outcomes": dict(outcome_counts),
        "predictions_read": len(pred_msgs),
        "duplicate_predictions": duplicates,
        "replays_skipped_final_run": _replays(runs[-1].log),
        "dead_letters_read": len(dead_msgs),
        "streams_checked": streams_checked,
        "state_atol": STATE_ATOL,
        "peak_rss_mib": peak,
        "rss_ceiling_mib": cfg.rss_ceiling_mib,
        "seconds": round(time.monotonic() - t_start, 1),
        "seconds_to_last_run_end": round(produced_s, 1),
        "workdir": str(cfg.workdir),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description="Hostile soak of a live statecast worker.")
    parser.add_argument("--bootstrap", default=None, help="Kafka bootstrap (else --start-stack)")
    parser.add_argument("--redis-url", default=None)
    parser.add_argument(
        "--start-stack", action="store_true", help="start a private Tansu and Redis"
    )
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--hostile", type=float, default=0.12)
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-batch", type=int, default=512)
    parser.add_argument("--rss-ceiling-mib", type=float, default=1024.0)
    args = parser.parse_args()
    services: list[Service] = []
    workdir = Path(tempfile.mkdtemp(prefix="soak-"))
    try:
        if args.start_stack:
            for name in ("kafka", "redis"):
                svc = Service(name, free_port(), workdir / name)
                (workdir / name).mkdir()
                svc.start(timeout=30, detach=False)
                services.append(svc)
            bootstrap = f"{services[0].host}:{services[0].port}"
            redis_url = f"redis://{services[1].host}:{services[1].port}/0"
        else:
            if not args.bootstrap or not args.redis_url:
                parser.error("give --bootstrap and --redis-url, or --start-stack")
            bootstrap, redis_url = args.bootstrap, args.redis_url
        cfg = SoakConfig(
            bootstrap=bootstrap,
            redis_url=redis_url,
            records=args.records,
            hostile_share=args.hostile,
            kills=args.kills,
            seed=args.seed,
            max_batch=args.max_batch,
            rss_ceiling_mib=args.rss_ceiling_mib,
            workdir=workdir,
        )
        report = asyncio.run(run_soak(cfg))
    finally:
        for svc in services:
            svc.stop()
    print(json.dumps(report, indent=1))
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
