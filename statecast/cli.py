"""The ``statecast`` console script: one subcommand per concern, imported lazily.

Each subcommand lives in its own module exposing ``add_arguments(parser)`` and
``run(args) -> int``. Importing lazily keeps ``statecast stack up`` free of onnxruntime and
``statecast worker`` free of torch.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence
from typing import Protocol, cast

# name -> (module, one-line help). Modules are imported only when their command runs.
COMMANDS: dict[str, tuple[str, str]] = {
    "stack": ("statecast.worker.stack_cli", "start/stop the embedded Kafka broker and Redis"),
    "worker": ("statecast.worker.worker_cli", "run the streaming inference worker"),
    "train": ("statecast.models.train_cli", "train a model on its real data set"),
    "export": ("statecast.export.export_cli", "export trained models as ONNX step models"),
    "models": ("statecast.export.models_cli", "list and verify the shipped models"),
    "import": ("statecast.export.import_cli", "import a Keras .keras model as a step model"),
    "replay": ("statecast.loadtest.replay_cli", "replay real data sets into Kafka as many streams"),
    "bench": ("statecast.loadtest.bench_cli", "benchmark statecast against a naive worker"),
    "demo": ("statecast.loadtest.demo_cli", "bring up the stack, the worker and a live replay"),
}


class CommandModule(Protocol):
    def add_arguments(self, parser: argparse.ArgumentParser) -> None: ...

    def run(self, args: argparse.Namespace) -> int: ...


def _load(name: str) -> CommandModule:
    module_name, _ = COMMANDS[name]
    return cast(CommandModule, importlib.import_module(module_name))


def build_parser(argv: Sequence[str]) -> tuple[argparse.ArgumentParser, CommandModule | None]:
    parser = argparse.ArgumentParser(prog="statecast", description=__doc__.splitlines()[0])
    parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    chosen = next((a for a in argv if a in COMMANDS), None)
    module: CommandModule | None = None
    for name, (_, help_text) in COMMANDS.items():
        sp = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            module = _load(name)
            module.add_arguments(sp)
    return parser, module


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser, module = build_parser(args_list)
    args = parser.parse_args(args_list)
    if module is None:
        parser.print_help()
        return 2
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    return module.run(args)


if __name__ == "__main__":
    raise SystemExit(main())
