"""Imported forecasters whose shapes the examples do not cover, served through the worker.

A stateless per-event model (``Input((F,))``, no state at all) and a window model with a
multi-step head (``Dense(H*2)`` + ``Reshape((H, 2))``, served whole, one list over H per
target) run through the real broker and Redis; every published prediction must equal
``model.predict`` on what it stands for.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from statecast.export.keras.importer import ImportOptions, import_keras
from tests.fixtures.keras_support import (
    one_torch_thread,  # noqa: F401  (an autouse fixture: imported, it runs for this module)
    serve_imported,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
]
os.environ.setdefault("KERAS_BACKEND", "torch")
keras = pytest.importorskip("keras")
L = keras.layers
W, H, EVENTS = 4, 3, 6
FEATURES = ("a", "b")


def _model(name: str) -> Any:
    keras.utils.set_random_seed(5)
    if name == "stateless":
        return keras.Sequential([keras.Input((2,)), L.Dense(6, activation="relu"), L.Dense(1)])
    return keras.Sequential([keras.Input((W, 2)), L.LSTM(5), L.Dense(H * 2), L.Reshape((H, 2))])


def _expected(name: str, model: Any, rows: np.ndarray[Any, Any]) -> list[Any]:
    if name == "stateless":
        return [float(v) for v in model.predict(rows, verbose=0)[:, 0]]
    out = []
    for t in range(len(rows)):
        win = np.zeros((1, W, 2), np.float32)
        k = min(t + 1, W)
        win[0, W - k :] = rows[t + 1 - k : t + 1]
        y = model.predict(win, verbose=0)[0]  # [H, 2]
        out.append({"lo": y[:, 0].tolist(), "hi": y[:, 1].tolist()})
    return out


@pytest.mark.parametrize("name", ["stateless", "horizon"])
async def test_imported_forecaster_serves_model_predict(
    name: str,
    tmp_path: Path,
    kafka_bootstrap: str,
    redis_url: str,
    unique: Callable[[str], str],
) -> None:
    model = _model(name)
    src = tmp_path / "m.keras"
    model.save(src)
    mode = None if name == "stateless" else "window"
    targets = () if name == "stateless" else ("lo", "hi")
    opts = ImportOptions(name="m", kind="forecast", mode=mode, features=FEATURES, targets=targets)
    manifest = tmp_path / "models" / "manifest.json"
    result = import_keras(src, opts, tmp_path / "models" / "onnx", manifest, tmp_path)
    assert result.metrics["semantics"] == ("stateless" if name == "stateless" else "window")

    rows = np.random.default_rng(2).normal(size=(EVENTS, 2)).astype(np.float32)
    stream = f"{name}-0"
    records = [
        (
            stream.encode(),
            orjson.dumps(
                {"stream": stream, "ts": t, "values": {"a": float(r[0]), "b": float(r[1])}}
            ),
        )
        for t, r in enumerate(rows)
    ]
    by_stream = await serve_imported(
        result,
        manifest,
        tmp_path,
        records,
        kafka_bootstrap=kafka_bootstrap,
        redis_url=redis_url,
        unique=unique,
        label=name,
        partitions=1,
    )
    served = [p for rows in by_stream.values() for p in rows]
    want = _expected(name, model, rows)
    assert len(served) == len(want)
    for p, w in zip(served, want, strict=True):
        value = p["prediction"]["prediction"]
        if name == "stateless":
            assert value == pytest.approx(w, abs=1e-4)
        else:
            assert set(value) == {"lo", "hi"}
            for k in ("lo", "hi"):
                np.testing.assert_allclose(value[k], w[k], atol=1e-4)
