"""``statecast models list|verify|evaluate``: what is shipped, and whether it is what was measured.

``verify`` checks, for every manifest entry: the ONNX file's sha256 (and its artefacts'),
that the spec in its metadata names the same model, version and kind, and parity of the
ONNX step model against the PyTorch model rebuilt from its checkpoint (through the model's
registry recipe, within 1e-4). It prints one line per check and exits 1 on any failure.
"""

from __future__ import annotations

import argparse
import inspect
from pathlib import Path

from statecast.contract.manifest import (
    DEFAULT_MANIFEST,
    ManifestEntry,
    ManifestError,
    check_digest,
    load_manifest,
)
from statecast.contract.spec import ModelSpec, SpecError
from statecast.export.parity import PARITY_TOLERANCE
from statecast.worker.inference import InferenceError, build_session

# Imported models (statecast import) carry Keras's outputs beside the ONNX file instead of a
# registry recipe; check_digest has already pinned that file by sha256.
REFERENCE_ARTEFACT = "parity_reference"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["list", "verify", "evaluate"])
    parser.add_argument("names", nargs="*", metavar="MODEL", help="only these models")
    parser.add_argument(
        "--manifest", type=Path, default=DEFAULT_MANIFEST, help="default models/manifest.json"
    )
    parser.add_argument(
        "--root",
        type=Path,
        default=None,
        help="directory the manifest's paths are relative to (default: the manifest's repo)",
    )
    parser.add_argument(
        "--skip-parity", action="store_true", help="check digests and metadata only"
    )
    # ``evaluate`` (export/evaluate_cli.py) recomputes each headline figure from the ONNX file.
    from statecast.export import evaluate_cli

    evaluate_cli.add_arguments(parser)


def _selected(entries: dict[str, ManifestEntry], names: list[str]) -> list[ManifestEntry]:
    missing = sorted(set(names) - set(entries))
    if missing:
        raise ManifestError(f"not in the manifest: {', '.join(missing)}")
    return [entries[n] for n in sorted(entries) if not names or n in names]


def list_models(entries: list[ManifestEntry]) -> None:
    for e in entries:
        figures = " ".join(
            f"{k}={v}" for k, v in sorted(e.metrics.items()) if isinstance(v, (int, float, str))
        )
        print(f"{e.name}@{e.version} [{e.kind}] {e.onnx} sha256={e.sha256[:12]} {figures}")


def verify_entry(entry: ManifestEntry, root: Path, parity: bool) -> list[str]:
    """Problems found with one entry (empty when it verifies)."""
    try:
        path = check_digest(entry, root)
    except ManifestError as exc:
        return [str(exc)]
    try:
        # Read the way the worker reads it (onnxruntime, no torch): a wheel installed
        # without the training extras verifies its models.
        spec = ModelSpec.from_metadata(build_session(path).get_modelmeta().custom_metadata_map)
    except (SpecError, InferenceError, OSError, ValueError) as exc:
        return [f"{entry.name}: unreadable model spec: {exc}"]
    found = (spec.name, spec.version, spec.kind)
    if found != (entry.name, entry.version, entry.kind):
        return [f"{entry.name}: ONNX spec says {found}, manifest says {entry.name, entry.version}"]
    print(f"ok   {entry.name}: sha256 {entry.sha256[:12]}, spec {spec.ref} ({spec.kind})")
    if not parity:
        return []
    return _check_parity(entry, path)


def _check_parity(entry: ManifestEntry, path: Path) -> list[str]:
    from statecast.models.registry import RECIPES

    recipe = RECIPES.get(entry.name)
    if recipe is None and REFERENCE_ARTEFACT in entry.artefacts:
        return _check_reference_parity(entry, path)
    if recipe is None:
        return [f"{entry.name}: no registry recipe, cannot check parity"]
    fn = recipe.resolve("parity")
    accepts_path = "onnx_path" in inspect.signature(fn).parameters
    diff = float(fn(onnx_path=path) if accepts_path else fn())
    if not diff <= PARITY_TOLERANCE:
        return [f"{entry.name}: parity max abs diff {diff:.3g} exceeds {PARITY_TOLERANCE:g}"]
    print(f"ok   {entry.name}: parity max abs diff {diff:.3g} <= {PARITY_TOLERANCE:g}")
    return []


def _check_reference_parity(entry: ManifestEntry, path: Path) -> list[str]:
    """An imported model: replay its stored Keras reference through onnxruntime alone."""
    from statecast.export.keras.refstore import load_reference
    from statecast.export.parity import step_parity

    ref_path = path.parent / Path(entry.artefacts[REFERENCE_ARTEFACT].path).name
    diff = max(step_parity(path, r.steps, r.expected) for r in load_reference(ref_path))
    if not diff <= PARITY_TOLERANCE:
        return [f"{entry.name}: parity max abs diff {diff:.3g} exceeds {PARITY_TOLERANCE:g}"]
    print(f"ok   {entry.name}: parity vs stored keras reference {diff:.3g} <= {PARITY_TOLERANCE:g}")
    return []


def run(args: argparse.Namespace) -> int:
    manifest: Path = args.manifest
    root: Path = args.root or manifest.resolve().parent.parent
    try:
        entries = _selected(load_manifest(manifest), list(args.names))
    except ManifestError as exc:
        print(f"error: {exc}")
        return 1
    if args.action == "list":
        list_models(entries)
        return 0
    if args.action == "evaluate":
        from statecast.export.evaluate_cli import run_evaluate

        return run_evaluate(entries, root, args.limit, args.tolerance)
    failed = 0
    for entry in entries:
        problems = verify_entry(entry, root, parity=not args.skip_parity)
        for problem in problems:
            print(f"FAIL {problem}")
        failed += bool(problems)
    print(f"{len(entries) - failed}/{len(entries)} models verified")
    return 1 if failed else 0
