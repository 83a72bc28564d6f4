"""``statecast import model.keras --name N --kind K``: serve a Keras model as a step model.

Reads the file with Keras 3 on the torch backend (``pip install 'statecast[import]'``),
converts it layer by layer, writes ``<out-dir>/<name>.onnx``, its parity reference and a
manifest entry; afterwards ``STATECAST_ROUTES="topic=<name>"`` serves it. Exit status 2
when the model is refused (the message names the layer and why), 1 on a parity failure.
See docs/bring-your-own-model.md.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np

from statecast.contract.manifest import DEFAULT_MANIFEST

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", type=Path, help="the .keras file")
    parser.add_argument("--name", required=True, help="model name (route target)")
    parser.add_argument(
        "--kind", required=True, choices=["forecast", "sentiment", "video", "classify"]
    )
    parser.add_argument(
        "--mode",
        choices=["window", "stateful"],
        default=None,
        help="window: state = the last W inputs, predictions equal model.predict on that "
        "window; stateful: state = the recurrent layers' h/c, one event per step "
        "(default: window when the model's input fixes its time length, stateful when it "
        "is None; sentiment is always stateful)",
    )
    parser.add_argument("--features", help="forecast: input feature names, in model order")
    parser.add_argument("--targets", help="forecast: names of the output columns")
    parser.add_argument("--classes", help="classify/video: class names, in output order")
    parser.add_argument("--input-mean", help="forecast: per-feature mean the model was fed minus")
    parser.add_argument("--input-std", help="forecast: per-feature std the model was fed over")
    parser.add_argument("--output-mean", help="forecast: output = model * std + mean")
    parser.add_argument("--output-std", help="forecast: output = model * std + mean")
    parser.add_argument(
        "--pixel-scale", type=float, default=1.0 / 255.0, help="frames: pixels (0-255) times this"
    )
    parser.add_argument("--tokenizer", type=Path, help="sentiment: tokenizers JSON file")
    parser.add_argument("--chunk", type=int, default=128, help="sentiment: tokens per step")
    parser.add_argument("--version", default="1")
    parser.add_argument("--sample", type=Path, help=".npy of real inputs for a second parity check")
    parser.add_argument("--out-dir", type=Path, default=None, help="default: <root>/models/onnx")
    parser.add_argument("--manifest", type=Path, default=DEFAULT_MANIFEST)


def run(args: argparse.Namespace) -> int:
    from statecast.export.keras.importer import (
        ImportError_,
        ImportOptions,
        import_keras,
        parse_floats,
        parse_names,
        summary,
    )
    from statecast.export.parity import ParityError

    manifest: Path = args.manifest
    root = manifest.resolve().parent.parent
    opts = ImportOptions(
        name=args.name,
        kind=args.kind,
        mode=args.mode,
        features=parse_names(args.features),
        targets=parse_names(args.targets),
        classes=parse_names(args.classes),
        input_mean=parse_floats(args.input_mean),
        input_std=parse_floats(args.input_std),
        output_mean=parse_floats(args.output_mean),
        output_std=parse_floats(args.output_std),
        pixel_scale=args.pixel_scale,
        chunk=args.chunk,
        tokenizer=args.tokenizer,
        version=args.version,
    )
    sample = np.load(args.sample, allow_pickle=False) if args.sample else None
    try:
        result = import_keras(
            args.source,
            opts,
            out_dir=args.out_dir or root / "models" / "onnx",
            manifest=manifest,
            root=root,
            sample=sample,
        )
    except ImportError_ as exc:
        print(f"error: {exc}")
        return 2
    except ParityError as exc:
        print(f"error: {exc}")
        return 1
    for line in summary(result):
        print(line)
    return 0
