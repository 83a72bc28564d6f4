"""The step-model contract and the manifest: pure logic."""

from __future__ import annotations

from pathlib import Path

import pytest

from statecast.contract.manifest import (
    ManifestEntry,
    ManifestError,
    check_digest,
    load_manifest,
    sha256_file,
    upsert_entry,
)
from statecast.contract.spec import (
    SPEC_KEY,
    ModelSpec,
    OutputSpec,
    SpecError,
    StateSpec,
    TensorSpec,
)

pytestmark = pytest.mark.unit


def _spec(hidden: int = 32) -> ModelSpec:
    return ModelSpec(
        name="demo",
        version="1",
        kind="forecast",
        inputs=(TensorSpec("x", "float32", (-1, 3)),),
        outputs=(OutputSpec("y", "GW", ("mean",)),),
        states=(StateSpec("h", 1, hidden), StateSpec("c", 1, hidden)),
        preprocess={"features": ["a", "b", "c"]},
    )


def test_spec_round_trips_through_metadata() -> None:
    spec = _spec()
    back = ModelSpec.from_metadata({SPEC_KEY: spec.to_json()})
    assert back == spec
    assert back.features == ("a", "b", "c")
    assert back.states[0].input_name == "state_in.h"
    assert back.ref == "demo@1"


def test_state_version_follows_the_state_spec() -> None:
    assert _spec(32).state_version == _spec(32).state_version
    assert _spec(32).state_version != _spec(64).state_version


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ({}, "not a statecast step model"),
        ({SPEC_KEY: "{not json"}, "not JSON"),
        ({SPEC_KEY: "[]"}, "JSON object"),
        ({SPEC_KEY: '{"format": 1, "kind": "forecast"}'}, "malformed"),
        ({SPEC_KEY: '{"format": 99}'}, "unsupported spec format"),
    ],
)
def test_bad_metadata_is_refused_with_a_reason(metadata: dict[str, str], message: str) -> None:
    with pytest.raises(SpecError, match=message):
        ModelSpec.from_metadata(metadata)


def test_first_input_must_be_x() -> None:
    with pytest.raises(SpecError, match="named 'x'"):
        ModelSpec(
            name="m",
            version="1",
            kind="forecast",
            inputs=(TensorSpec("features", "float32", (-1, 3)),),
            outputs=(OutputSpec("y", ""),),
            states=(StateSpec("h", 1, 4),),
        )


def test_manifest_digest_check(tmp_path: Path) -> None:
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"graph")
    manifest = tmp_path / "manifest.json"
    entry = ManifestEntry("m", "1", "forecast", "m.onnx", sha256_file(onnx), {"test_mae": 1.0})
    upsert_entry(entry, manifest)
    loaded = load_manifest(manifest)["m"]
    assert loaded == entry
    assert check_digest(loaded, tmp_path) == onnx
    onnx.write_bytes(b"graph, altered")
    with pytest.raises(ManifestError, match="sha256"):
        check_digest(loaded, tmp_path)
