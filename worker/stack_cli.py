"""``statecast stack up|down|status``: the embedded broker and Redis for development."""

from __future__ import annotations

import argparse
from pathlib import Path

from statecast.worker.devstack import StackConfig, StackError, stack_down, stack_status, stack_up

DEFAULT_DIR = Path(".stack")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["up", "down", "status"])
    parser.add_argument(
        "--dir", type=Path, default=None, help="PID files and logs (env STATECAST_STACK_DIR)"
    )
    parser.add_argument("--kafka-port", type=int, default=None, help="default 19092")
    parser.add_argument("--redis-port", type=int, default=None, help="default 16379")


def config_from_args(args: argparse.Namespace) -> StackConfig:
    base = StackConfig.from_env(DEFAULT_DIR)
    return StackConfig(
        workdir=args.dir or base.workdir,
        kafka_port=args.kafka_port or base.kafka_port,
        redis_port=args.redis_port or base.redis_port,
    )


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    try:
        if args.action == "up":
            lines = stack_up(config)
            lines.append(f"bootstrap servers: {config.bootstrap_servers}")
            lines.append(f"redis url: {config.redis_url}")
            lines.append(f"logs and PID files: {config.workdir}/")
            ok = True
        elif args.action == "down":
            lines, ok = stack_down(config), True
        else:
            ok, lines = stack_status(config)
    except StackError as exc:
        print(f"error: {exc}")
        return 1
    for line in lines:
        print(line)
    return 0 if ok else 1
