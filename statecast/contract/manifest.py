"""``models/manifest.json``: the list of shipped models, their files and measured figures.

The worker refuses an ONNX file whose sha256 does not match its manifest entry; the
exporters write entries; ``statecast models verify`` recomputes every digest.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from statecast.contract.paths import PACKAGE_ROOT

DEFAULT_MANIFEST = PACKAGE_ROOT / "models" / "manifest.json"


class ManifestError(ValueError):
    """The manifest is missing, malformed, or does not match the files it names."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class Artefact:
    """A file a model needs beside its ONNX graph (a tokenizer, say), pinned by digest."""

    path: str
    sha256: str


@dataclass(frozen=True)
class ManifestEntry:
    name: str
    version: str
    kind: str
    onnx: str
    sha256: str
    metrics: dict[str, Any] = field(default_factory=dict)
    artefacts: dict[str, Artefact] = field(default_factory=dict)

    def onnx_path(self, root: Path = PACKAGE_ROOT) -> Path:
        return root / self.onnx

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "kind": self.kind,
            "onnx": self.onnx,
            "sha256": self.sha256,
            "metrics": self.metrics,
            "artefacts": {
                k: {"path": a.path, "sha256": a.sha256} for k, a in sorted(self.artefacts.items())
            },
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ManifestEntry:
        try:
            return cls(
                name=str(d["name"]),
                version=str(d["version"]),
                kind=str(d["kind"]),
                onnx=str(d["onnx"]),
                sha256=str(d["sha256"]),
                metrics=dict(d.get("metrics", {})),
                artefacts={
                    str(k): Artefact(path=str(v["path"]), sha256=str(v["sha256"]))
                    for k, v in dict(d.get("artefacts", {})).items()
                },
            )
        except (KeyError, TypeError) as exc:
            raise ManifestError(f"malformed manifest entry: {exc!r}") from exc


def load_manifest(path: Path = DEFAULT_MANIFEST) -> dict[str, ManifestEntry]:
    """Entries by model name."""
    try:
        data = orjson.loads(path.read_bytes())
    except FileNotFoundError as exc:
        raise ManifestError(f"no manifest at {path}") from exc
    except orjson.JSONDecodeError as exc:
        raise ManifestError(f"manifest {path} is not JSON: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("models"), list):
        raise ManifestError(f"manifest {path} must be an object with a 'models' list")
    entries = [ManifestEntry.from_dict(m) for m in data["models"]]
    return {e.name: e for e in entries}


def save_manifest(entries: dict[str, ManifestEntry], path: Path = DEFAULT_MANIFEST) -> None:
    """Write entries sorted by name, so regenerating one model leaves the others' lines alone."""
    doc = {"models": [entries[k].to_dict() for k in sorted(entries)]}
    path.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n")


def upsert_entry(entry: ManifestEntry, path: Path = DEFAULT_MANIFEST) -> None:
    entries = load_manifest(path) if path.exists() else {}
    entries[entry.name] = entry
    save_manifest(entries, path)


def check_digest(entry: ManifestEntry, root: Path = PACKAGE_ROOT) -> Path:
    """The ONNX path of ``entry`` after checking its sha256 (and its artefacts')."""
    onnx_path = entry.onnx_path(root)
    if not onnx_path.is_file():
        raise ManifestError(f"{entry.name}: ONNX file {onnx_path} is missing")
    actual = sha256_file(onnx_path)
    if actual != entry.sha256:
        raise ManifestError(
            f"{entry.name}: sha256 of {entry.onnx} is {actual}, manifest says {entry.sha256}"
        )
    for key, art in entry.artefacts.items():
        art_path = root / art.path
        if not art_path.is_file() or sha256_file(art_path) != art.sha256:
            raise ManifestError(f"{entry.name}: artefact {key} ({art.path}) is missing or altered")
    return onnx_path
