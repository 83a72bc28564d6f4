"""``statecast train <model>``: run a model's training recipe from the registry.

Recipe options beyond the common ones go through ``--set key=value`` (values parsed as
JSON when they parse, else kept as strings), e.g. ``statecast train sensor_lstm --set
hidden=32 --set cell=rnn``.
"""

from __future__ import annotations

import argparse
import inspect
import logging
from typing import Any

import orjson

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from statecast.models.registry import RECIPES

    parser.add_argument("model", choices=sorted(RECIPES), help="model to train")
    parser.add_argument("--epochs", type=int, default=None, help="maximum epochs")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default 0)")
    parser.add_argument(
        "--max-seconds", type=float, default=None, help="wall-clock budget for the training loop"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any other keyword of the recipe (repeatable)",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--set expects KEY=VALUE, got {pair!r}")
        try:
            out[key] = orjson.loads(raw)
        except orjson.JSONDecodeError:
            out[key] = raw
    return out


def run(args: argparse.Namespace) -> int:
    from statecast.models.registry import get_recipe

    try:
        kwargs = parse_overrides(args.set)
    except ValueError as exc:
        print(f"error: {exc}")
        return 2
    for key in ("epochs", "seed", "max_seconds"):
        value = getattr(args, key)
        if value is not None:
            kwargs[key] = value
    if args.no_progress:
        kwargs["progress"] = False
    train = get_recipe(args.model).resolve("train")
    try:
        inspect.signature(train).bind(**kwargs)
    except TypeError as exc:
        print(f"error: {args.model}: {exc}")
        return 2
    path = train(**kwargs)
    print(f"checkpoint: {path}")
    print(f"next: statecast export {args.model}")
    return 0
