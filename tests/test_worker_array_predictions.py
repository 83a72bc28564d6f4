"""The forecast array path publishes the same bytes as the codec's float lists."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson

from statecast.contract.spec import ModelSpec, OutputSpec, StateSpec, TensorSpec
from statecast.worker.array_predictions import ENCODE, finite_rows_for, predictions_for
from statecast.worker.codecs.forecast import ForecastCodec

OUTPUTS = (
    OutputSpec(name="bands", unit="GW", fields=("p10", "p50", "p90")),  # [B, H, 3]
    OutputSpec(name="next", unit="GW"),  # [B, 1] -> a scalar
    OutputSpec(name="pair", unit="GW", fields=("lo", "hi")),  # [B, 2] -> named scalars
    OutputSpec(name="curve", unit="GW"),  # [B, 5] -> a list
)


def _codec() -> ForecastCodec:
    spec = ModelSpec(
        name="m",
        version="1",
        kind="forecast",
        inputs=(TensorSpec("x", "float32", (-1, 1)),),
        outputs=OUTPUTS,
        states=(StateSpec("h", 1, 1),),
        preprocess={"features": ["demand"]},
    )
    return ForecastCodec(spec, {}, Path("."))


def _outputs(b: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    def draw(*shape: int) -> np.ndarray:
        # Ordinary, tiny, huge and negative-zero values: every float formatting branch.
        vals = rng.standard_normal(shape) * 10.0 ** rng.integers(-30, 30, shape)
        return vals.astype(np.float32)

    out = {"bands": draw(b, 48, 3), "next": draw(b, 1), "pair": draw(b, 2), "curve": draw(b, 5)}
    out["curve"][0, 0] = -0.0
    out["bands"][-1, 3, 1] = np.nan
    out["next"][-1, 0] = np.inf
    return out


def test_array_predictions_encode_to_the_same_bytes_as_the_codecs() -> None:
    codec = _codec()
    rng = np.random.default_rng(7)
    for b in (1, 3, 64):
        outputs = _outputs(b, rng)
        want = [orjson.dumps({"prediction": p}) for p in codec.predictions(outputs)]
        fast = predictions_for(codec)(outputs)
        got = [ENCODE({"prediction": p}) for p in fast]
        assert got == want
        assert isinstance(fast[0]["bands"]["p50"], np.ndarray)  # the path under test


def test_other_codecs_keep_their_own_predictions() -> None:
    class Other(ForecastCodec):
        pass

    other = Other(_codec().spec, {}, Path("."))
    assert predictions_for(other) == other.predictions


def test_finite_rows_mark_exactly_the_rows_with_nan_or_inf() -> None:
    codec = _codec()
    outputs = _outputs(4, np.random.default_rng(1))  # last row: NaN in bands, inf in next
    check = finite_rows_for(codec)
    assert check is not None
    assert check(outputs).tolist() == [True, True, True, False]
    outputs["pair"][0, 1] = -np.inf
    assert check(outputs).tolist() == [False, True, True, False]
    assert finite_rows_for(type("Other", (ForecastCodec,), {})(codec.spec, {}, Path("."))) is None
