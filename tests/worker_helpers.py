"""Test support for the worker: tiny step models with a manifest, worker settings, references.

``tiny_forecast_model`` exports a small random-weight LSTM or GRU step graph exactly as the
real exporters do (``x`` + ``state_in.*`` -> prediction + ``state_out.*``, ModelSpec in the
metadata, manifest entry with sha256), so the worker is tested without the trained models.
``offline_predictions`` runs the same ONNX step over each stream's series one event at a
time (batch 1, carrying state): what the worker must reproduce through Kafka and Redis.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import orjson

from statecast.contract.manifest import ManifestEntry, sha256_file, upsert_entry
from statecast.contract.spec import SPEC_KEY, ModelSpec, OutputSpec, StateSpec, TensorSpec
from statecast.worker.routing import Route
from statecast.worker.settings import KafkaSettings, RedisOptions, Settings

SENSOR_FEATURES = ("demand", "temperature", "workday")


@dataclass(frozen=True)
class TinyModel:
    spec: ModelSpec
    manifest: Path
    root: Path
    onnx_path: Path


def tiny_forecast_model(
    root: Path,
    name: str = "sensor_lstm",
    features: Sequence[str] = SENSOR_FEATURES,
    cell: str = "lstm",
    hidden: int = 8,
    layers: int = 1,
    seed: int = 0,
) -> TinyModel:
    """Export a tiny random step model under ``root/models`` and register it in a manifest."""
    import torch  # only the tests that build models pay for importing torch

    torch.manual_seed(seed)
    n_feat = len(features)
    mean = np.linspace(10.0, 20.0, n_feat).astype(np.float32)
    std = np.linspace(2.0, 5.0, n_feat).astype(np.float32)

    class Step(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            rnn_cls = torch.nn.LSTM if cell == "lstm" else torch.nn.GRU
            self.rnn = rnn_cls(n_feat, hidden, layers)
            self.head = torch.nn.Linear(hidden, 1)
            self.register_buffer("mean", torch.from_numpy(mean))
            self.register_buffer("std", torch.from_numpy(std))

        def forward(self, x: Any, *state: Any) -> Any:
            z = ((x - self.mean) / self.std).unsqueeze(0)
            if cell == "lstm":
                y, (h, c) = self.rnn(z, (state[0], state[1]))
                return self.head(y[0]), h, c
            y, h = self.rnn(z, state[0])
            return self.head(y[0]), h

    state_names = ("h", "c") if cell == "lstm" else ("h",)
    states = tuple(StateSpec(s, layers, hidden) for s in state_names)
    spec = ModelSpec(
        name=name,
        version="0.0.1-test",
        kind="forecast",
        inputs=(TensorSpec("x", "float32", (-1, n_feat)),),
        outputs=(OutputSpec("demand_next", "GW"),),
        states=states,
        preprocess={
            "features": list(features),
            "normalisation": {"mean": mean.tolist(), "std": std.tolist()},
        },
    )
    onnx_dir = root / "models" / "onnx"
    onnx_dir.mkdir(parents=True, exist_ok=True)
    path = onnx_dir / f"{name}.onnx"
    in_names = ["x", *(s.input_name for s in states)]
    out_names = ["demand_next", *(s.output_name for s in states)]
    dyn: dict[str, dict[int, str]] = {"x": {0: "B"}, "demand_next": {0: "B"}}
    for s in states:
        dyn[s.input_name] = {1: "B"}
        dyn[s.output_name] = {1: "B"}
    model = Step().eval()
    args = (torch.zeros(2, n_feat), *(torch.zeros(layers, 2, hidden) for _ in states))
    with warnings.catch_warnings():
        # The TorchScript exporter (dynamo=False) is deprecated upstream but is what our
        # exporters use for RNN step graphs.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            args,
            str(path),
            input_names=in_names,
            output_names=out_names,
            dynamic_axes=dyn,
            opset_version=17,
            dynamo=False,
        )
    proto = onnx.load(str(path))
    entry = proto.metadata_props.add()
    entry.key, entry.value = SPEC_KEY, spec.to_json()
    onnx.save(proto, str(path))
    manifest = root / "models" / "manifest.json"
    upsert_entry(
        ManifestEntry(
            name=name,
            version=spec.version,
            kind="forecast",
            onnx=str(path.relative_to(root)),
            sha256=sha256_file(path),
        ),
        manifest,
    )
    return TinyModel(spec, manifest, root, path)


def worker_settings(
    *,
    bootstrap: str,
    redis_url: str,
    model: TinyModel,
    routes: Sequence[Route],
    predictions: str,
    dlq: str,
    group: str,
    prefix: str,
    **overrides: Any,
) -> Settings:
    base = Settings(
        kafka=KafkaSettings(bootstrap_servers=bootstrap, group_id=group, session_timeout_ms=6000),
        redis=RedisOptions(url=redis_url),
        routes=tuple(routes),
        manifest_path=model.manifest,
        model_root=model.root,
        predictions_topic=predictions,
        dlq_topic=dlq,
        state_prefix=prefix,
        http_port=0,
        retry_initial_s=0.05,
        retry_max_s=0.5,
    )
    return replace(base, **overrides)


def event(stream: str, ts: int, values: Mapping[str, float]) -> bytes:
    return orjson.dumps({"stream": stream, "ts": ts, "values": dict(values)})


def offline_predictions(
    onnx_path: Path, spec: ModelSpec, series: Sequence[Sequence[float]]
) -> tuple[list[float], dict[str, np.ndarray[Any, Any]]]:
    """One stream, one event at a time from a zero state: predictions and the final state."""
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    states = {s.name: np.zeros((s.layers, 1, s.hidden), np.float32) for s in spec.states}
    preds: list[float] = []
    out_names = [spec.outputs[0].name, *(s.output_name for s in spec.states)]
    for row in series:
        feeds: dict[str, Any] = {"x": np.asarray([row], dtype=np.float32)}
        feeds.update({s.input_name: states[s.name] for s in spec.states})
        out = sess.run(out_names, feeds)
        preds.append(float(out[0][0, 0]))
        for s, arr in zip(spec.states, out[1:], strict=True):
            states[s.name] = arr
    return preds, {name: arr[:, 0, :] for name, arr in states.items()}
