"""``statecast replay``: replay the real series into Kafka as many streams, optionally measured.

Examples::

    statecast replay --topic sensor --streams 10000 --rate 20000 --seconds 30 --measure
    statecast replay --topic sensor --topic prices --streams 1000 --count 100000

Prints a live progress line on stderr and one JSON summary on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable

import orjson

from statecast.loadtest.generator import Generator, GeneratorConfig
from statecast.loadtest.replay import ReplaySettings, TopicLoad, run_replay
from statecast.worker.devstack import StackConfig
from statecast.worker.stack_cli import DEFAULT_DIR

MAX_STREAMS = 1_000_000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--bootstrap", default=None, help="Kafka bootstrap servers (default: the embedded stack)"
    )
    parser.add_argument(
        "--topic",
        action="append",
        choices=["sensor", "prices"],
        help="input topic(s) to replay into; repeat for several (default: sensor)",
    )
    parser.add_argument(
        "--streams", type=int, default=1000, help="concurrent streams per topic (1..1,000,000)"
    )
    parser.add_argument("--rate", type=float, default=None, help="events/s (default: max)")
    parser.add_argument("--count", type=int, default=None, help="stop after this many events")
    parser.add_argument("--seconds", type=float, default=None, help="stop after this long")
    parser.add_argument(
        "--partitions", type=int, default=8, help="partitions of topics this creates"
    )
    parser.add_argument(
        "--measure", action="store_true", help="match predictions and report latency"
    )
    parser.add_argument("--predictions-topic", default="predictions")
    parser.add_argument(
        "--ts-now", action="store_true", help="stamp events with the send time, not the data's"
    )
    parser.add_argument("--seed", type=int, default=7, help="seed of the streams' start rows")
    parser.add_argument(
        "--synthetic",
        choices=["gan"],
        default=None,
        help="sensor streams synthesised by the gan_demand generator, all distinct"
        " (loadtest/synthetic.py), instead of replays of the real series",
    )


def settings_from_args(args: argparse.Namespace) -> ReplaySettings:
    if not 1 <= args.streams <= MAX_STREAMS:
        raise SystemExit(f"--streams must be in 1..{MAX_STREAMS:,}")
    count, seconds = args.count, args.seconds
    if count is None and seconds is None:
        count = 100_000
    bootstrap = args.bootstrap or StackConfig.from_env(DEFAULT_DIR).bootstrap_servers
    return ReplaySettings(
        bootstrap=bootstrap,
        loads=tuple(TopicLoad(t, args.streams) for t in (args.topic or ["sensor"])),
        generator=GeneratorConfig(
            rate=args.rate, count=count, duration_s=seconds, ts_now=args.ts_now
        ),
        partitions=args.partitions,
        measure=args.measure,
        predictions_topic=args.predictions_topic,
        seed=args.seed,
    )


def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    factory: Callable[..., Generator] = Generator
    if args.synthetic == "gan":
        from statecast.loadtest.synthetic import generator_factory

        if {load.topic for load in settings.loads} != {"sensor"}:
            raise SystemExit("--synthetic gan synthesises sensor streams: use --topic sensor")
        factory = generator_factory(args.seed)
    summary = asyncio.run(run_replay(settings, generator_factory=factory))
    print(orjson.dumps(summary).decode())
    return 0
