"""``statecast export [model ...]``: write ONNX step models and their manifest entries."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "models", nargs="*", metavar="MODEL", help="models to export (default: all in the registry)"
    )


def run(args: argparse.Namespace) -> int:
    from statecast.models.registry import RECIPES, get_recipe

    names = list(args.models) or sorted(RECIPES)
    for name in names:
        try:
            recipe = get_recipe(name)
        except KeyError as exc:
            print(f"error: {exc.args[0]}")
            return 2
        entry = recipe.resolve("export")()
        metrics = " ".join(f"{k}={v}" for k, v in sorted(entry.metrics.items()) if _scalar(v))
        print(f"{entry.name}@{entry.version}: {entry.onnx} sha256={entry.sha256[:12]} {metrics}")
    return 0


def _scalar(value: object) -> bool:
    return isinstance(value, (int, float, str))
