"""The step-model contract shared by the exporters (writers) and the worker (reader).

Every servable ONNX file carries one ``metadata_props`` entry, :data:`SPEC_KEY`, whose value
is the JSON form of :class:`ModelSpec`. The worker needs nothing else to serve the model:
no training code, no checkpoint.

Conventions fixed here (see ../shared/DESIGN.md, "The step-model contract"):

- The first non-state input is ``x``. Forecast models take *raw* feature values in
  ``spec.features`` order; normalisation is baked into the graph and recorded in
  ``spec.preprocess["normalisation"]`` for reference only. Outputs are in real units.
- The same holds for every kind: a ``normalisation`` or ``pixel_scale`` in ``preprocess``
  (video, frames) is applied inside the graph; feed raw values (pixels 0-255). Applying it
  again outside puts ``frame_cnn`` at chance (0.10 on the test images instead of 0.876).
- Every state tensor ``<name>`` is an input ``state_in.<name>`` and an output
  ``state_out.<name>`` of shape ``[layers, B, hidden]``; zeros mean "new stream".
- ``state_version`` is derived from the model name and the state spec, so a model whose
  state layout changes never reads the state of its predecessor.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

SPEC_KEY = "statecast.spec"
SPEC_FORMAT = 1
STATE_IN_PREFIX = "state_in."
STATE_OUT_PREFIX = "state_out."

# "classify": a per-frame image classifier on the frame route (often stateless).
# "generate": a next-token model whose route also continues the text (worker/generation.py).
# "synthesis": a stateless generator the load tool runs (never routed in the worker).
# "decoder": a word decoder run from a copy of another model's state (video captions); a
# route's codec loads it beside the routed model, it is never routed itself.
ModelKind = Literal[
    "forecast", "sentiment", "video", "classify", "generate", "synthesis", "decoder"
]
_KINDS: tuple[str, ...] = (
    "forecast",
    "sentiment",
    "video",
    "classify",
    "generate",
    "synthesis",
    "decoder",
)
_DTYPES: tuple[str, ...] = ("float32", "int64", "uint8")


class SpecError(ValueError):
    """The metadata does not describe a servable step model."""


@dataclass(frozen=True)
class TensorSpec:
    """A non-state input of the step graph. ``shape`` uses -1 for dynamic axes."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TensorSpec:
        dtype = str(d["dtype"])
        if dtype not in _DTYPES:
            raise SpecError(f"unsupported dtype {dtype!r}")
        return cls(name=str(d["name"]), dtype=dtype, shape=tuple(int(s) for s in d["shape"]))


@dataclass(frozen=True)
class OutputSpec:
    """A prediction output. ``fields`` names the columns of its last axis, if it has one."""

    name: str
    unit: str
    fields: tuple[str, ...] = ()
    description: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "unit": self.unit,
            "fields": list(self.fields),
            "description": self.description,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> OutputSpec:
        return cls(
            name=str(d["name"]),
            unit=str(d.get("unit", "")),
            fields=tuple(str(f) for f in d.get("fields", ())),
            description=str(d.get("description", "")),
        )


@dataclass(frozen=True)
class StateSpec:
    """One recurrent state tensor, ``[layers, B, hidden]`` in the graph."""

    name: str
    layers: int
    hidden: int
    dtype: str = "float32"

    @property
    def input_name(self) -> str:
        return STATE_IN_PREFIX + self.name

    @property
    def output_name(self) -> str:
        return STATE_OUT_PREFIX + self.name

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "layers": self.layers,
            "hidden": self.hidden,
            "dtype": self.dtype,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StateSpec:
        spec = cls(
            name=str(d["name"]),
            layers=int(d["layers"]),
            hidden=int(d["hidden"]),
            dtype=str(d.get("dtype", "float32")),
        )
        if spec.dtype != "float32":
            raise SpecError(f"state {spec.name!r}: only float32 state is supported")
        if spec.layers < 1 or spec.hidden < 1:
            raise SpecError(f"state {spec.name!r}: layers and hidden must be positive")
        return spec


def derive_state_version(name: str, states: tuple[StateSpec, ...]) -> str:
    """A short stable digest of what a stored state means; changes with the state spec."""
    payload = orjson.dumps(
        {"name": name, "states": [s.to_dict() for s in states]}, option=orjson.OPT_SORT_KEYS
    )
    return "s" + hashlib.sha256(payload).hexdigest()[:12]


@dataclass(frozen=True)
class ModelSpec:
    """What the worker needs to serve one exported step model."""

    name: str
    version: str
    kind: ModelKind
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[OutputSpec, ...]
    states: tuple[StateSpec, ...]
    # Kind-specific serving data: "features" (list of names) and "normalisation"
    # ({"mean": [...], "std": [...]}) for forecasts; tokenizer reference and chunk length
    # for sentiment; frame height/width/channels for video.
    preprocess: dict[str, Any] = field(default_factory=dict)
    state_version: str = ""

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise SpecError(f"unknown model kind {self.kind!r}")
        if not self.inputs or self.inputs[0].name != "x":
            raise SpecError("the first input must be named 'x'")
        # No state tensors is valid: a per-frame classifier is a step model whose next state
        # is nothing (the worker then keeps no per-stream state for it).
        if not self.outputs:
            raise SpecError("a step model needs at least one prediction output")
        if not self.state_version:
            object.__setattr__(self, "state_version", derive_state_version(self.name, self.states))

    @property
    def ref(self) -> str:
        """``name@version`` as it appears in predictions."""
        return f"{self.name}@{self.version}"

    @property
    def features(self) -> tuple[str, ...]:
        return tuple(str(f) for f in self.preprocess.get("features", ()))

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": SPEC_FORMAT,
            "name": self.name,
            "version": self.version,
            "kind": self.kind,
            "inputs": [i.to_dict() for i in self.inputs],
            "outputs": [o.to_dict() for o in self.outputs],
            "states": [s.to_dict() for s in self.states],
            "preprocess": self.preprocess,
            "state_version": self.state_version,
        }

    def to_json(self) -> str:
        return orjson.dumps(self.to_dict(), option=orjson.OPT_SORT_KEYS).decode()

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelSpec:
        try:
            if int(d.get("format", 0)) != SPEC_FORMAT:
                raise SpecError(f"unsupported spec format {d.get('format')!r}")
            kind = str(d["kind"])
            if kind not in _KINDS:
                raise SpecError(f"unknown model kind {kind!r}")
            return cls(
                name=str(d["name"]),
                version=str(d["version"]),
                kind=kind,  # type: ignore[arg-type]
                inputs=tuple(TensorSpec.from_dict(i) for i in d["inputs"]),
                outputs=tuple(OutputSpec.from_dict(o) for o in d["outputs"]),
                states=tuple(StateSpec.from_dict(s) for s in d["states"]),
                preprocess=dict(d.get("preprocess", {})),
                state_version=str(d.get("state_version", "")),
            )
        except (KeyError, TypeError) as exc:
            raise SpecError(f"malformed model spec: {exc!r}") from exc

    @classmethod
    def from_json(cls, text: str | bytes) -> ModelSpec:
        try:
            data = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise SpecError(f"model spec is not JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise SpecError("model spec must be a JSON object")
        return cls.from_dict(data)

    @classmethod
    def from_metadata(cls, metadata: dict[str, str]) -> ModelSpec:
        """Read the spec from an ONNX ``metadata_props`` map (as onnxruntime returns it)."""
        if SPEC_KEY not in metadata:
            raise SpecError(f"ONNX metadata has no {SPEC_KEY!r} entry; not a statecast step model")
        return cls.from_json(metadata[SPEC_KEY])
