"""Loading the models a worker serves: manifest entry -> digest check -> session -> spec.

A model is served only when its ONNX file matches the manifest's sha256, its embedded
:class:`ModelSpec` names the same model, version and kind as the manifest, and the graph's
inputs and outputs are the ones the spec promises. Anything else refuses to start.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from statecast.contract.manifest import ManifestEntry, ManifestError, check_digest, load_manifest
from statecast.contract.spec import ModelSpec, SpecError
from statecast.worker.codecs import codec_for
from statecast.worker.codecs.base import Codec
from statecast.worker.inference import StepSession
from statecast.worker.routing import Route
from statecast.worker.settings import Settings


class ModelLoadError(RuntimeError):
    """A routed model is missing, altered or inconsistent with its manifest entry."""


@dataclass(frozen=True)
class ServedModel:
    """Everything the loop needs for one route."""

    route: Route
    entry: ManifestEntry
    spec: ModelSpec
    session: StepSession
    codec: Codec

    @property
    def name(self) -> str:
        return self.spec.name


def check_spec(spec: ModelSpec, entry: ManifestEntry, session: StepSession) -> None:
    if (spec.name, spec.version, spec.kind) != (entry.name, entry.version, entry.kind):
        raise ModelLoadError(
            f"{entry.onnx}: embedded spec says {spec.name}@{spec.version} ({spec.kind}), "
            f"manifest says {entry.name}@{entry.version} ({entry.kind})"
        )
    want_in = {i.name for i in spec.inputs} | {s.input_name for s in spec.states}
    want_out = {o.name for o in spec.outputs} | {s.output_name for s in spec.states}
    if want_in != set(session.input_names):
        raise ModelLoadError(
            f"{entry.name}: graph inputs {sorted(session.input_names)} != spec {sorted(want_in)}"
        )
    missing_out = want_out - set(session.output_names)
    if missing_out:
        raise ModelLoadError(f"{entry.name}: graph lacks outputs {sorted(missing_out)}")


def load_models(settings: Settings, routes: Sequence[Route] | None = None) -> list[ServedModel]:
    try:
        manifest = load_manifest(settings.manifest_path)
    except ManifestError as exc:
        raise ModelLoadError(str(exc)) from exc
    served: list[ServedModel] = []
    for route in routes if routes is not None else settings.routes:
        entry = manifest.get(route.model)
        if entry is None:
            raise ModelLoadError(
                f"route {route.topic}={route.model}: no such model in {settings.manifest_path} "
                f"(it lists {sorted(manifest)})"
            )
        try:
            path = check_digest(entry, settings.model_root)
        except ManifestError as exc:
            raise ModelLoadError(str(exc)) from exc
        session = StepSession(
            path, settings.device, settings.intra_op_threads, settings.inter_op_threads
        )
        try:
            spec = ModelSpec.from_metadata(session.metadata())
        except SpecError as exc:
            raise ModelLoadError(f"{entry.onnx}: {exc}") from exc
        check_spec(spec, entry, session)
        try:
            codec = codec_for(spec, route.codec_options, _model_dir(path))
        except (ValueError, ImportError, OSError) as exc:
            raise ModelLoadError(f"route {route.topic}={route.model}: {exc}") from exc
        served.append(ServedModel(route, entry, spec, session, codec))
    return served


def _model_dir(onnx_path: Path) -> Path:
    return onnx_path.parent
