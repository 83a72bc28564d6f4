"""Every Keras example imports, verifies and serves end to end, equal to Keras's own predict.

Each example (examples/*.keras, trained by examples/train_all.py on the project's real data)
is imported into a private root with ``statecast import``'s code (parity on random and on
real held-out inputs), rechecked by ``statecast models verify`` (from the stored reference,
onnxruntime only), then served by a worker through the real broker and Redis. Every
published prediction is compared with Keras itself on what the semantics say it means:

- window models: ``model.predict`` on the last W events of the stream (zeros before the
  first; ``warming_up`` is 1 exactly until W events arrived);
- stateful models: ``model.predict`` on the stream's whole history so far;
- the classifier: ``model.predict`` on the frame alone.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from PIL import Image

from statecast.contract.manifest import load_manifest
from statecast.contract.paths import PACKAGE_ROOT
from statecast.export import models_cli
from statecast.export.keras.importer import ImportOptions, ImportResult, import_keras
from tests.fixtures.keras_support import (
    one_torch_thread,  # noqa: F401  (an autouse fixture: imported, it runs for this module)
    serve_imported,
)

pytestmark = [
    pytest.mark.integration,
    # Keras 3 on the torch backend trips numpy 2's __array__ copy deprecation when saving.
    pytest.mark.filterwarnings("ignore::DeprecationWarning:keras"),
    pytest.mark.filterwarnings("ignore::UserWarning:keras"),
]
os.environ.setdefault("KERAS_BACKEND", "torch")
keras = pytest.importorskip("keras")


EXAMPLES_DIR = PACKAGE_ROOT.parent / "examples"
NAMES = ("elec_simplernn", "elec_lstm", "stock_gru", "imdb_lstm", "fashion_cnn", "motion_td_lstm")
STREAMS = 2
Array = np.ndarray[Any, Any]


def _options(name: str) -> ImportOptions:
    cfg = json.loads((EXAMPLES_DIR / f"{name}.import.json").read_text())
    tok = cfg.pop("tokenizer", None)
    kwargs: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()}
    return ImportOptions(name=name, tokenizer=PACKAGE_ROOT / tok if tok else None, **kwargs)


def _import(name: str, root: Path) -> tuple[Path, ImportResult]:
    manifest = root / "models" / "manifest.json"
    result = import_keras(
        EXAMPLES_DIR / f"{name}.keras",
        _options(name),
        out_dir=root / "models" / "onnx",
        manifest=manifest,
        root=root,
        sample=np.load(EXAMPLES_DIR / f"{name}.sample.npy"),
    )
    return manifest, result


def _png(pixels: Array) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.asarray(pixels, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _predict(model: Any, x: Array) -> Array:
    return np.asarray(model.predict(x, verbose=0), np.float64)


def _forecast_case(
    name: str, r: ImportResult
) -> tuple[list[tuple[bytes, bytes]], dict[str, list[Any]]]:
    """Events of STREAMS real series and, per stream, Keras's expected predictions."""
    opts = _options(name)
    model = keras.saving.load_model(EXAMPLES_DIR / f"{name}.keras")
    sample = np.load(EXAMPLES_DIR / f"{name}.sample.npy")[:STREAMS]
    mean, std = np.array(opts.input_mean, np.float32), np.array(opts.input_std, np.float32)
    z = (sample - mean) / std
    records: list[tuple[bytes, bytes]] = []
    expected: dict[str, list[Any]] = {}
    window = int(r.spec.preprocess.get("window", 0))
    for s in range(STREAMS):
        stream = f"{name}-{s}"
        want: list[Any] = []
        for t in range(sample.shape[1]):
            values = dict(zip(opts.features, (float(v) for v in sample[s, t]), strict=True))
            records.append(
                (stream.encode(), orjson.dumps({"stream": stream, "ts": t, "values": values}))
            )
            if window:
                win = np.zeros((1, window, z.shape[2]), np.float32)
                k = min(t + 1, window)
                win[0, window - k :] = z[s, t + 1 - k : t + 1]
                y = _predict(model, win)[0, 0] * opts.output_std[0] + opts.output_mean[0]
                want.append((y, float(t + 1 < window)))
            else:
                y = _predict(model, z[s : s + 1, : t + 1])[0, 0]
                want.append((y * opts.output_std[0] + opts.output_mean[0], None))
        expected[stream] = want
    return records, expected


def _frames_case(name: str) -> tuple[list[tuple[bytes, bytes]], dict[str, list[Any]]]:
    model = keras.saving.load_model(EXAMPLES_DIR / f"{name}.keras")
    sample = np.load(EXAMPLES_DIR / f"{name}.sample.npy")
    records: list[tuple[bytes, bytes]] = []
    expected: dict[str, list[Any]] = {}
    if name == "fashion_cnn":  # per frame: [N, 28, 28]
        for s in range(STREAMS):
            cam = f"{name}-{s}"
            imgs = sample[s * 3 : s * 3 + 3]
            records += [(cam.encode(), _png(img)) for img in imgs]
            expected[cam] = list(_predict(model, imgs[..., None] / 255.0))
        return records, expected
    for s in range(STREAMS):  # clips: [S, T, H, W], stateful over the frames so far
        cam = f"{name}-{s}"
        clip = sample[s]
        records += [(cam.encode(), _png(f)) for f in clip]
        expected[cam] = [
            _predict(model, clip[None, : t + 1, ..., None] / 255.0)[0] for t in range(len(clip))
        ]
    return records, expected


MESSAGES = (
    "What a wonderful, moving film. The cast is superb.",
    "But the second half drags and the ending is a mess.",
    "Still, I would watch it again for the music.",
)


def _text_case(name: str) -> tuple[list[tuple[bytes, bytes]], dict[str, list[Any]]]:
    from tokenizers import Tokenizer

    model = keras.saving.load_model(EXAMPLES_DIR / f"{name}.keras")
    tok = Tokenizer.from_file(str(PACKAGE_ROOT / "models" / "tokenizer" / "sentiment_lstm.json"))
    records: list[tuple[bytes, bytes]] = []
    expected: dict[str, list[Any]] = {}
    for s in range(STREAMS):
        conv = f"{name}-{s}"
        seen: list[int] = []
        want = []
        for i, text in enumerate(MESSAGES[s:]):
            records.append((conv.encode(), orjson.dumps({"stream": conv, "ts": i, "text": text})))
            seen += tok.encode(text).ids
            want.append(_predict(model, np.array([seen], np.int64))[0, 0])
        expected[conv] = want
    return records, expected


@pytest.mark.parametrize("name", NAMES)
async def test_example_imports_verifies_and_serves_equal_to_keras_predict(
    name: str,
    tmp_path: Path,
    kafka_bootstrap: str,
    redis_url: str,
    unique: Callable[[str], str],
) -> None:
    manifest, result = _import(name, tmp_path)
    # Import time and parity per example (the figures the docs quote): pytest -s shows them.
    print(
        f"{name}: import {result.seconds:.1f} s, parity random {result.parity_random:.2g}, "
        f"real {result.parity_real:.2g}"
    )
    assert result.parity_random <= 1e-4
    assert result.parity_real is not None
    assert result.parity_real <= 1e-4
    entry = load_manifest(manifest)[name]
    assert models_cli.verify_entry(entry, tmp_path, parity=True) == []

    spec = result.spec
    if spec.kind == "forecast":
        records, expected = _forecast_case(name, result)
    elif spec.kind == "sentiment":
        records, expected = _text_case(name)
    else:
        records, expected = _frames_case(name)
    options = {"mode": "conversation"} if spec.kind == "sentiment" else {}
    by_stream = await serve_imported(
        result,
        manifest,
        tmp_path,
        records,
        kafka_bootstrap=kafka_bootstrap,
        redis_url=redis_url,
        unique=unique,
        label=name,
        partitions=2,
        options=options,
    )
    assert set(by_stream) == set(expected)
    for stream, want in expected.items():
        rows = by_stream[stream]
        assert len(rows) == len(want), stream
        for p, w in zip(rows, want, strict=True):
            assert p["model"] == f"{name}@1"
            pred = p["prediction"]
            if spec.kind == "forecast":
                value = pred["prediction"]
                value = next(iter(value.values())) if isinstance(value, dict) else value
                assert value == pytest.approx(w[0], abs=1e-4 * max(1.0, abs(w[0]))), stream
                if w[1] is not None:
                    assert pred["warming_up"] == w[1], stream
            elif spec.kind == "sentiment":
                assert pred["positive"] == pytest.approx(w, abs=1e-4), stream
            else:
                probs = np.array([pred["probs"][c] for c in spec.outputs[0].fields])
                np.testing.assert_allclose(probs, w, atol=1e-4, err_msg=stream)
