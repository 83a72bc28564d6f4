"""Does a slow route hold back a fast one? Forecast latency alone, then beside a text load.

``python -m statecast.loadtest.bench_routes`` starts its own broker and Redis, one worker
(``statecast.loadtest.bench_worker``) serving ``sensor_lstm`` on a sensor topic and
``sentiment_lstm`` (whole reviews) on a text topic, then offers:

1. sensor events alone at ``--sensor-rate`` for ``--seconds``;
2. the same sensor load plus IMDB reviews at ``--text-rate`` for ``--seconds``.

For each phase it reports the forecast route's record-to-ack p50/p99 from the worker's own
histogram (``statecast_event_latency_seconds{model="sensor_lstm"}``, the difference over
the phase), the text route's, and the ratio of the two forecast p99s (issue 18's target:
at most 1.5). Prints one JSON object. Figures, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import tempfile
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson

from statecast.loadtest import machine
from statecast.loadtest.bench_proc import ChildProcess, spawn
from statecast.loadtest.bench_worker import histogram_quantile
from statecast.loadtest.generator import Generator, GeneratorConfig, StreamPlan, make_producer
from statecast.loadtest.latency import SendLog
from statecast.loadtest.series import series_for_topic
from statecast.loadtest.topics import ensure_topics
from statecast.worker.devstack import TANSU_SESSION_TIMEOUT_MS, Service, free_port
from statecast.worker.routing import Route
from statecast.worker.settings import KafkaSettings, Settings
from statecast.worker.state.redis_conn import RedisSettings

FORECAST, TEXT = "sensor_lstm", "sentiment_lstm"


def _delta_quantiles(before: dict[str, Any], after: dict[str, Any], model: str) -> dict[str, Any]:
    old = {float(le): float(n) for le, n in before["latency_buckets_by_model"][model]}
    delta = {
        float(le): float(n) - old.get(float(le), 0.0)
        for le, n in after["latency_buckets_by_model"][model]
    }
    out: dict[str, Any] = {"predictions": int(max(delta.values(), default=0.0))}
    for q in (0.5, 0.99):
        v = histogram_quantile(delta, q)
        out[f"p{int(q * 100)}_ms"] = round(v * 1000, 1) if v is not None else None
    return out


async def _snapshot(worker: ChildProcess) -> dict[str, Any]:
    worker.proc.send_signal(signal.SIGUSR1)
    return await worker.expect("snapshot", 30)


async def _phase(
    worker: ChildProcess, gens: list[tuple[Generator, float]], seconds: float
) -> dict[str, Any]:
    before = await _snapshot(worker)
    cpu0, t0 = float(before["cpu_s"]), time.monotonic()
    await asyncio.gather(
        *(g.run(GeneratorConfig(rate=rate, duration_s=seconds)) for g, rate in gens)
    )
    await asyncio.sleep(2.0)  # let the last events come back
    after = await _snapshot(worker)
    return {
        "forecast": _delta_quantiles(before, after, FORECAST),
        "text": _delta_quantiles(before, after, TEXT),
        "worker_core_use": round((float(after["cpu_s"]) - cpu0) / (time.monotonic() - t0), 2),
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    run_id = uuid.uuid4().hex[:8]
    sensor, text = f"sensor-{run_id}", f"text-{run_id}"
    preds, dlq = f"predictions-{run_id}", f"dlq-{run_id}"
    with tempfile.TemporaryDirectory(prefix="statecast-routes-") as tmp:
        workdir = Path(tmp)
        services = [Service(n, free_port(), workdir) for n in ("kafka", "redis")]
        for svc in services:
            await asyncio.to_thread(svc.start, 30, False)
        kafka, redis = services
        bootstrap = f"{kafka.host}:{kafka.port}"
        try:
            await ensure_topics(bootstrap, {sensor: 4, text: 4, preds: 4, dlq: 1})
            settings = replace(
                Settings(),
                kafka=KafkaSettings(
                    bootstrap_servers=bootstrap,
                    group_id=f"routes-{run_id}",
                    session_timeout_ms=TANSU_SESSION_TIMEOUT_MS,
                    auto_offset_reset="latest",
                ),
                redis=RedisSettings(url=f"redis://{redis.host}:{redis.port}/0"),
                routes=(Route(sensor, FORECAST), Route(text, TEXT)),
                predictions_topic=preds,
                dlq_topic=dlq,
                state_prefix=f"routes-{run_id}",
                http_port=0,
            )
            worker = await spawn(
                "worker",
                ["-m", "statecast.loadtest.bench_worker"],
                dict(os.environ) | settings.to_env(),
                workdir / "worker.log",
            )
            try:
                await worker.expect("assigned", 90)
                await asyncio.sleep(1.0)
                producer = make_producer(bootstrap)
                await producer.start()
                try:
                    s_series = tuple(await asyncio.to_thread(series_for_topic, "sensor"))
                    t_series = tuple(await asyncio.to_thread(series_for_topic, "text"))
                    s_gen = Generator(
                        producer,
                        [StreamPlan(sensor, s_series, args.sensor_streams, 4, id_prefix="s")],
                        GeneratorConfig(),
                        SendLog(),
                    )
                    t_gen = Generator(
                        producer,
                        [StreamPlan(text, t_series, args.text_streams, 4, id_prefix="t")],
                        GeneratorConfig(),
                        SendLog(),
                    )
                    alone = await _phase(worker, [(s_gen, args.sensor_rate)], args.seconds)
                    both = await _phase(
                        worker,
                        [(s_gen, args.sensor_rate), (t_gen, args.text_rate)],
                        args.seconds,
                    )
                finally:
                    await producer.stop()
            finally:
                await worker.stop()
        finally:
            for svc in reversed(services):
                await asyncio.to_thread(svc.stop)
    a99, b99 = alone["forecast"]["p99_ms"], both["forecast"]["p99_ms"]
    return {
        "sensor_rate": args.sensor_rate,
        "text_rate": args.text_rate,
        "seconds": args.seconds,
        "forecast_alone": alone,
        "forecast_with_text": both,
        "forecast_p99_ratio": round(b99 / a99, 2) if a99 and b99 else None,
        "target_ratio<=1.5": bool(a99 and b99 and b99 / a99 <= 1.5),
        "machine": machine.describe(),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m statecast.loadtest.bench_routes")
    p.add_argument("--sensor-rate", type=float, default=1000.0)
    p.add_argument("--sensor-streams", type=int, default=1000)
    p.add_argument("--text-rate", type=float, default=50.0, help="reviews/s")
    p.add_argument("--text-streams", type=int, default=50)
    p.add_argument("--seconds", type=float, default=15.0)
    args = p.parse_args(argv)
    result = asyncio.run(run(args))
    sys.stdout.write(orjson.dumps(result).decode() + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
