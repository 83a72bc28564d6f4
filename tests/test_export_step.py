"""The generic step-model export and parity, on tiny forecasters of every cell type."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from statecast.contract.spec import SPEC_KEY, ModelSpec, OutputSpec, StateSpec, TensorSpec
from statecast.export.parity import (
    PARITY_TOLERANCE,
    ParityError,
    check_parity,
    open_session,
    sequence_steps,
    step_parity,
)
from statecast.export.step_export import export_step_model, manifest_entry, read_spec
from statecast.models.forecast import ForecastConfig, ForecastStep, RecurrentForecaster

pytestmark = pytest.mark.unit

T = 200


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _model(cell: str) -> RecurrentForecaster:
    torch.manual_seed(7)
    config = ForecastConfig(
        cell=cell,  # type: ignore[arg-type]
        n_features=3,
        hidden=12,
        layers=2,
        head="gaussian",
        feature_mean=(4.0, 16.0, 0.5),
        feature_std=(1.0, 6.0, 0.5),
        target_mean=0.1,
        target_std=0.2,
        abs_features=True,
    )
    return RecurrentForecaster(config).eval()


def _spec(model: RecurrentForecaster) -> ModelSpec:
    c = model.config
    return ModelSpec(
        name="tiny",
        version="3",
        kind="forecast",
        inputs=(TensorSpec("x", "float32", (-1, 3)),),
        outputs=(OutputSpec("y_next", "GW", ("mean", "log_var")),),
        states=tuple(StateSpec(s, c.layers, c.hidden) for s in c.state_names),
        preprocess={"features": ["a", "b", "c"], "normalisation": {"mean": [0], "std": [1]}},
    )


def _dims(value_info: onnx.ValueInfoProto) -> list[str | int]:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_export_follows_the_step_contract(cell: str, tmp_path: Path) -> None:
    model = _model(cell)
    spec = _spec(model)
    path = tmp_path / "tiny.onnx"
    sha = export_step_model(ForecastStep(model), spec, path)
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    assert proto.opset_import[0].version >= 17
    states = list(model.config.state_names)
    assert [i.name for i in proto.graph.input] == ["x"] + [f"state_in.{s}" for s in states]
    assert [o.name for o in proto.graph.output] == ["y_next"] + [f"state_out.{s}" for s in states]
    inputs = {i.name: _dims(i) for i in proto.graph.input}
    assert isinstance(inputs["x"][0], str)
    assert inputs["x"][1] == 3
    for s in states:
        layers, batch, hidden = inputs[f"state_in.{s}"]
        assert (layers, hidden) == (2, 12)
        assert isinstance(batch, str)
    meta = {p.key: p.value for p in proto.metadata_props}
    assert ModelSpec.from_json(meta[SPEC_KEY]) == spec
    assert read_spec(path) == spec
    entry = manifest_entry(spec, path, {"test_nll": -1.0}, root=tmp_path)
    assert (entry.onnx, entry.sha256, entry.kind) == ("tiny.onnx", sha, "forecast")

    sess, served = open_session(path)
    assert served == spec
    for batch in (1, 5):  # the batch axis is dynamic
        feeds = {"x": np.zeros((batch, 3), np.float32)}
        feeds |= {f"state_in.{s}": np.zeros((2, batch, 12), np.float32) for s in states}
        outs = sess.run(None, feeds)
        assert outs[0].shape == (batch, 2)
        assert all(o.shape == (2, batch, 12) for o in outs[1:])


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("batch", [1, 64])
def test_parity_over_200_steps(cell: str, batch: int, tmp_path: Path) -> None:
    model = _model(cell)
    path = tmp_path / "tiny.onnx"
    export_step_model(ForecastStep(model), _spec(model), path)
    rng = np.random.default_rng(batch)
    x = (rng.normal(size=(batch, T, 3)) * [1.0, 6.0, 0.5] + [4.0, 16.0, 0.5]).astype(np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x))[0].numpy()
    diff = step_parity(path, sequence_steps("x", x), [{"y_next": ref[:, t]} for t in range(T)])
    assert check_parity(diff, "tiny") <= PARITY_TOLERANCE


def test_parity_catches_a_model_that_differs(tmp_path: Path) -> None:
    model = _model("gru")
    path = tmp_path / "tiny.onnx"
    export_step_model(ForecastStep(model), _spec(model), path)
    with torch.no_grad():
        # The reference drifts away from the exported graph.
        model.rnn.get_parameter("weight_hh_l0").add_(1e-2)
    x = np.random.default_rng(0).normal(size=(4, 50, 3)).astype(np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x))[0].numpy()
    diff = step_parity(path, sequence_steps("x", x), [{"y_next": ref[:, t]} for t in range(50)])
    assert diff > PARITY_TOLERANCE
    with pytest.raises(ParityError, match="exceeds"):
        check_parity(diff, "tiny")
