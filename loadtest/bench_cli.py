"""``statecast bench [--quick]``: naive worker vs statecast's worker on the same events.

Progress goes to stderr; stdout carries exactly one JSON object. Targets are reported in
it (``targets``), never enforced: the exit status is 0 whenever the benchmark ran.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from dataclasses import replace
from pathlib import Path

import orjson

from statecast.loadtest.bench import BenchSettings, finish, run_bench
from statecast.loadtest.bench_proc import ChildError
from statecast.worker.devstack import StackConfig
from statecast.worker.stack_cli import DEFAULT_DIR


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="a smaller run, under two minutes")
    parser.add_argument("--model", default="sensor_lstm", help="manifest model to serve")
    parser.add_argument(
        "--series",
        default=None,
        choices=["sensor", "prices", "frames", "text"],
        help="real series to replay",
    )
    parser.add_argument("--events", type=int, default=None, help="backlog events")
    parser.add_argument("--streams", type=int, default=None, help="concurrent streams")
    parser.add_argument("--partitions", type=int, default=None)
    parser.add_argument("--workers", type=int, default=1, help="statecast worker processes")
    parser.add_argument("--naive-seconds", type=float, default=None)
    parser.add_argument("--naive-events", type=int, default=None)
    parser.add_argument("--latency-seconds", type=float, default=None)
    parser.add_argument(
        "--drain-timeout", type=float, default=None, help="seconds allowed to drain the backlog"
    )
    parser.add_argument(
        "--rates",
        default=None,
        help="fixed offered rates for the latency phases, comma-separated events/s "
        "(default 5000,10000,20000; '' for none)",
    )
    parser.add_argument(
        "--no-pipeline", action="store_true", help="the worker runs one batch at a time"
    )
    parser.add_argument(
        "--checkpoint-interval-ms",
        type=int,
        default=None,
        help="the worker's STATECAST_CHECKPOINT_INTERVAL_MS (default 0: every batch)",
    )
    parser.add_argument(
        "--synthetic",
        choices=("gan",),
        default=None,
        help="gan: the sensor streams are synthesised by gan_demand (distinct days per "
        "stream) instead of replayed from the real series",
    )
    parser.add_argument("--skip-naive", action="store_true")
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to cores")
    parser.add_argument("--manifest", type=Path, default=None)
    parser.add_argument(
        "--workdir", type=Path, default=None, help="keep the processes' logs here (default: temp)"
    )
    parser.add_argument(
        "--use-stack",
        action="store_true",
        help="use the running embedded stack (statecast stack up) instead of starting one",
    )


def settings_from_args(args: argparse.Namespace) -> BenchSettings:
    base = BenchSettings.quick() if args.quick else BenchSettings()
    default_series = {"price_gru": "prices", "video_lstm": "frames", "sentiment_lstm": "text"}
    series = args.series or default_series.get(args.model, "sensor")
    overrides: dict[str, object] = {
        "model": args.model,
        "series": series,
        "workers": args.workers,
        "skip_naive": args.skip_naive,
        "pin": not args.no_pin,
        "pipeline": not args.no_pipeline,
        "synthetic": args.synthetic,
    }
    for name in (
        "events",
        "streams",
        "partitions",
        "naive_seconds",
        "naive_events",
        "latency_seconds",
        "checkpoint_interval_ms",
        "manifest",
        "workdir",
    ):
        value = getattr(args, name)
        if value is not None:
            overrides[name] = value
    if args.drain_timeout is not None:
        overrides["drain_timeout_s"] = args.drain_timeout
    if args.rates is not None:
        overrides["rates"] = tuple(float(r) for r in args.rates.split(",") if r.strip())
    if args.use_stack:
        overrides["stack"] = StackConfig.from_env(DEFAULT_DIR)
    return replace(base, **overrides)  # type: ignore[arg-type]


def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    try:
        result = asyncio.run(run_bench(settings))
    except ChildError as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        return 1
    print(orjson.dumps(finish(result)).decode())
    return 0
