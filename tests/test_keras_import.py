"""``statecast import``: every supported layer converts exactly, refusals write nothing.

Models here are small random-weight Keras 3 models built in the test (training is never
run in tests). The importer itself checks parity against Keras on random inputs and raises
when it exceeds 1e-4; these tests additionally pin what each semantics means.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from statecast import cli
from statecast.contract.manifest import load_manifest
from statecast.contract.spec import ModelSpec, OutputSpec, TensorSpec
from statecast.export.keras.importer import ImportError_, ImportOptions, import_keras
from statecast.export.keras.layers import ACTIVATIONS
from statecast.export.step_export import read_spec
from tests.fixtures.keras_support import (
    one_torch_thread,  # noqa: F401  (an autouse fixture: imported, it runs for this module)
    randomise_batchnorm,
)

pytestmark = [
    pytest.mark.unit,
    # Keras 3 on the torch backend trips numpy 2's __array__ copy deprecation when saving.
    pytest.mark.filterwarnings("ignore::DeprecationWarning:keras"),
    pytest.mark.filterwarnings("ignore::UserWarning:keras"),
]
os.environ.setdefault("KERAS_BACKEND", "torch")
keras = pytest.importorskip("keras")


L = keras.layers
TOKENIZER = Path(__file__).resolve().parents[1] / "models" / "tokenizer" / "sentiment_lstm.json"


def _import(tmp_path: Path, model: Any, opts: ImportOptions, sample: Any = None) -> Any:
    src = tmp_path / f"{opts.name}.keras"
    model.save(src)
    root = tmp_path / "root"
    return import_keras(
        src, opts, root / "models" / "onnx", root / "models" / "manifest.json", root, sample
    )


def _seeded() -> None:
    keras.utils.set_random_seed(1)


def _bn() -> Any:
    return L.BatchNormalization()


def _randomise_batchnorm(model: Any) -> Any:
    """Non-trivial moving statistics: fresh BatchNormalization layers are the identity."""
    randomise_batchnorm(model.layers, 3)
    return model


FEATURES = ("a", "b", "c")


def _forecast(name: str, mode: str, **kw: Any) -> ImportOptions:
    return ImportOptions(name=name, kind="forecast", mode=mode, features=FEATURES, **kw)


@functools.cache
def _cases() -> dict[str, tuple[Any, ImportOptions]]:
    _seeded()
    return {
        "simplernn_window_scaled": (
            keras.Sequential([keras.Input((10, 3)), L.SimpleRNN(8), L.Dense(1)]),
            _forecast(
                "m",
                "window",
                input_mean=(1.0, 2.0, 3.0),
                input_std=(2.0, 0.5, 4.0),
                output_mean=(5.0,),
                output_std=(3.0,),
            ),
        ),
        "lstm_stack_stateful": (
            keras.Sequential(
                [
                    keras.Input((None, 3)),
                    L.Dense(6, activation="tanh"),
                    L.LSTM(8, return_sequences=True),
                    L.Dropout(0.5),
                    L.LSTM(5),
                    L.Dense(2),
                ]
            ),
            _forecast("m", "stateful", targets=("lo", "hi")),
        ),
        "keras_stateful_true_fixed_batch": (
            keras.Sequential(
                [keras.Input(batch_shape=(2, None, 3)), L.LSTM(5, stateful=True), L.Dense(1)]
            ),
            _forecast("m", "stateful"),
        ),
        "gru_reset_after_false_stateful": (
            keras.Sequential([keras.Input((None, 3)), L.GRU(7, reset_after=False), L.Dense(1)]),
            _forecast("m", "stateful"),
        ),
        "gru_reset_after_true_return_sequences_stateful": (
            keras.Sequential([keras.Input((None, 3)), L.GRU(7, return_sequences=True), L.Dense(1)]),
            _forecast("m", "stateful"),
        ),
        "lstm_window": (
            keras.Sequential(
                [keras.Input((6, 3)), L.LSTM(4, return_sequences=True), L.GRU(3), L.Dense(1)]
            ),
            _forecast("m", "window"),
        ),
        "conv1d_window": (
            keras.Sequential(
                [
                    keras.Input((12, 3)),
                    L.Conv1D(4, 3, padding="causal", dilation_rate=2, activation="relu"),
                    L.MaxPooling1D(2, padding="same"),
                    L.Conv1D(5, 2, padding="same"),
                    _bn(),
                    L.GlobalAveragePooling1D(),
                    L.Dense(1),
                ]
            ),
            _forecast("m", "window"),
        ),
        "cnn_classify": (
            keras.Sequential(
                [
                    keras.Input((28, 28, 1)),
                    L.Conv2D(6, 3, activation="relu"),
                    _bn(),
                    L.MaxPooling2D(),
                    L.Conv2D(4, 3, strides=2, padding="same"),
                    L.LeakyReLU(negative_slope=0.1),
                    L.MaxPooling2D(3, strides=2, padding="same"),
                    L.Flatten(),
                    L.Dense(10),
                    L.Activation("softmax"),
                ]
            ),
            ImportOptions(name="m", kind="classify"),
        ),
        "reshape_gap2d_classify": (
            keras.Sequential(
                [
                    keras.Input((28, 28)),
                    L.Reshape((28, 28, 1)),
                    L.Conv2D(4, 5, strides=3),
                    L.GlobalAveragePooling2D(),
                    L.Dense(3, activation="softmax"),
                ]
            ),
            ImportOptions(name="m", kind="classify", classes=("x", "y", "z")),
        ),
        "timedistributed_video_stateful": (
            keras.Sequential(
                [
                    keras.Input((None, 16, 16, 1)),
                    L.TimeDistributed(
                        keras.Sequential(
                            [
                                keras.Input((16, 16, 1)),
                                L.Conv2D(4, 3, activation="relu"),
                                L.MaxPooling2D(),
                                L.Flatten(),
                            ]
                        )
                    ),
                    L.LSTM(6),
                    L.Dense(3, activation="softmax"),
                ]
            ),
            ImportOptions(name="m", kind="video", mode="stateful"),
        ),
        "timedistributed_video_window": (
            keras.Sequential(
                [
                    keras.Input((4, 16, 16, 1)),
                    L.TimeDistributed(L.Flatten()),
                    L.TimeDistributed(L.Dense(8, activation="relu")),
                    L.SimpleRNN(5),
                    L.Dense(2, activation="softmax"),
                ]
            ),
            ImportOptions(name="m", kind="video", mode="window"),
        ),
        "embedding_mask_zero_sentiment": (
            keras.Sequential(
                [
                    keras.Input((None,), dtype="int32"),
                    L.Embedding(300, 6, mask_zero=True),
                    L.LSTM(7, return_sequences=True),
                    L.GRU(4),
                    L.Dense(1, activation="sigmoid"),
                ]
            ),
            ImportOptions(
                name="m", kind="sentiment", mode="stateful", tokenizer=TOKENIZER, chunk=12
            ),
        ),
    }


@pytest.mark.parametrize(
    "case",
    [
        "simplernn_window_scaled",
        "lstm_stack_stateful",
        "keras_stateful_true_fixed_batch",
        "gru_reset_after_false_stateful",
        "gru_reset_after_true_return_sequences_stateful",
        "lstm_window",
        "conv1d_window",
        "cnn_classify",
        "reshape_gap2d_classify",
        "timedistributed_video_stateful",
        "timedistributed_video_window",
        "embedding_mask_zero_sentiment",
    ],
)
def test_supported_stack_imports_with_keras_parity(tmp_path: Path, case: str) -> None:
    model, opts = _cases()[case]
    result = _import(tmp_path, _randomise_batchnorm(model), opts)
    assert result.parity_random <= 1e-4
    entry = load_manifest(tmp_path / "root" / "models" / "manifest.json")["m"]
    assert entry.metrics["parity_max_abs_diff"] <= 1e-4
    assert entry.metrics["semantics"] == result.metrics["semantics"]
    assert read_spec(result.onnx_path) == result.spec


def test_window_state_is_the_last_w_inputs_and_warming_up_until_w(tmp_path: Path) -> None:
    _seeded()
    w = 5
    model = keras.Sequential([keras.Input((w, 3)), L.SimpleRNN(4), L.Dense(1)])
    result = _import(tmp_path, model, _forecast("m", "window"))
    assert [(s.name, s.hidden) for s in result.spec.states] == [("window", 3 * w), ("count", 1)]
    sess = ort.InferenceSession(str(result.onnx_path), providers=["CPUExecutionProvider"])
    rows = np.random.default_rng(0).normal(size=(w + 3, 3)).astype(np.float32)
    win, count = np.zeros((1, 1, 3 * w), np.float32), np.zeros((1, 1, 1), np.float32)
    flags = []
    for t, row in enumerate(rows):
        y, warming, win, count = sess.run(
            None, {"x": row[None], "state_in.window": win, "state_in.count": count}
        )
        flags.append(float(warming[0, 0]))
        last = rows[max(0, t + 1 - w) : t + 1]
        held = win.reshape(w, 3)[w - len(last) :]
        np.testing.assert_array_equal(held, last)
        if t + 1 >= w:
            want = model.predict(last[None], verbose=0)[0, 0]
            assert float(y[0, 0]) == pytest.approx(float(want), abs=1e-5)
    assert flags == [1.0] * (w - 1) + [0.0] * 4


def test_stateful_carries_one_state_per_recurrent_layer(tmp_path: Path) -> None:
    model, opts = _cases()["lstm_stack_stateful"]
    result = _import(tmp_path, model, opts)
    assert [(s.name, s.hidden) for s in result.spec.states] == [
        ("h0", 8),
        ("c0", 8),
        ("h1", 5),
        ("c1", 5),
    ]


def test_classifier_is_a_stateless_step_model(tmp_path: Path) -> None:
    model, opts = _cases()["cnn_classify"]
    result = _import(tmp_path, model, opts)
    assert result.spec.states == ()
    assert result.spec.kind == "classify"
    assert result.spec.outputs[0].fields == tuple(str(i) for i in range(10))
    assert (result.spec.preprocess["height"], result.spec.preprocess["width"]) == (28, 28)


def _refused(tmp_path: Path, model: Any, opts: ImportOptions) -> str:
    with pytest.raises(ImportError_) as info:
        _import(tmp_path, model, opts)
    root = tmp_path / "root"
    assert not (root / "models" / "manifest.json").exists()
    assert not list((root / "models").rglob("*.onnx")) if (root / "models").exists() else True
    return str(info.value)


def test_bidirectional_is_refused_by_name_before_anything_is_written(tmp_path: Path) -> None:
    model = keras.Sequential(
        [
            keras.Input((10, 3)),
            L.LSTM(4, return_sequences=True),
            L.Bidirectional(L.LSTM(3)),
            L.Dense(1),
        ]
    )
    msg = _refused(tmp_path, model, _forecast("m", "window"))
    assert "Bidirectional" in msg
    assert "bidirectional" in msg
    assert "cannot" in msg


def test_attention_is_refused_by_name(tmp_path: Path) -> None:
    inp = keras.Input((10, 3))
    att = L.MultiHeadAttention(num_heads=2, key_dim=4, name="att")(inp, inp)
    model = keras.Model(inp, L.Dense(1)(L.GlobalAveragePooling1D()(att)))
    msg = _refused(tmp_path, model, _forecast("m", "window"))
    assert "'att'" in msg
    assert "MultiHeadAttention" in msg
    assert "attention" in msg


def test_unknown_layer_and_time_mixing_in_stateful_mode_are_refused(tmp_path: Path) -> None:
    model = keras.Sequential([keras.Input((10, 3)), L.UnitNormalization(name="un"), L.LSTM(2)])
    msg = _refused(tmp_path, model, _forecast("m", "window"))
    assert "'un'" in msg
    assert "UnitNormalization" in msg
    conv = keras.Sequential([keras.Input((None, 3)), L.Conv1D(4, 3), L.LSTM(2), L.Dense(1)])
    assert "--mode window" in _refused(tmp_path, conv, _forecast("m", "stateful"))
    backwards = keras.Sequential([keras.Input((None, 3)), L.LSTM(2, go_backwards=True)])
    assert "go_backwards" in _refused(tmp_path, backwards, _forecast("m", "stateful"))


def test_wrong_feature_count_is_refused(tmp_path: Path) -> None:
    model = keras.Sequential([keras.Input((5, 3)), L.SimpleRNN(2), L.Dense(1)])
    opts = ImportOptions(name="m", kind="forecast", mode="window", features=("a",))
    assert "3 features" in _refused(tmp_path, model, opts)


def test_stateless_spec_is_valid() -> None:
    spec = ModelSpec(
        name="c",
        version="1",
        kind="classify",
        inputs=(TensorSpec("x", "float32", (-1, 1, 4, 4)),),
        outputs=(OutputSpec("probs", "probability", ("a", "b")),),
        states=(),
    )
    assert ModelSpec.from_json(spec.to_json()) == spec


def test_cli_imports_then_verify_needs_no_keras_and_catches_a_changed_reference(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _seeded()
    src = tmp_path / "m.keras"
    keras.Sequential([keras.Input((4, 2)), L.GRU(3), L.Dense(1)]).save(src)
    manifest = tmp_path / "models" / "manifest.json"
    args = ["import", str(src), "--name", "m", "--kind", "forecast", "--mode", "window"]
    args += ["--features", "p,q", "--manifest", str(manifest)]
    assert cli.main(args) == 0
    assert "parity vs keras" in capsys.readouterr().out
    # keras made unimportable: verify must still check parity (from the stored reference).
    code = (
        "import sys; sys.modules['keras'] = None; from statecast import cli; "
        f"raise SystemExit(cli.main(['models', 'verify', '--manifest', {str(manifest)!r}]))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "parity vs stored keras reference" in done.stdout
    ref = tmp_path / "models" / "onnx" / "m.parity.npz"
    ref.write_bytes(ref.read_bytes() + b"\0")
    assert cli.main(["models", "verify", "--manifest", str(manifest)]) == 1
    assert "parity_reference" in capsys.readouterr().out


def test_cli_refusal_exits_2_and_names_the_layer(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "b.keras"
    keras.Sequential([keras.Input((4, 2)), L.Bidirectional(L.GRU(3)), L.Dense(1)]).save(src)
    manifest = tmp_path / "models" / "manifest.json"
    args = ["import", str(src), "--name", "b", "--kind", "forecast", "--features", "p,q"]
    assert cli.main([*args, "--manifest", str(manifest)]) == 2
    assert "Bidirectional" in capsys.readouterr().out
    assert not manifest.exists()


def test_shipped_frame_cnn_is_stateless_and_beats_its_strongest_baseline() -> None:
    from statecast.contract.manifest import check_digest
    from statecast.contract.paths import PACKAGE_ROOT
    from statecast.export.keras.frame_cnn import FOREST, LOGISTIC, parity

    entry = load_manifest()["frame_cnn"]
    spec = read_spec(check_digest(entry, PACKAGE_ROOT))
    assert (spec.kind, spec.states) == ("classify", ())
    baselines = entry.metrics["baselines"]
    # Both simple baselines are listed, the named one is the strongest, and the CNN
    # beats it (the audit's random forest beat the 5-epoch CNN).
    assert {LOGISTIC, FOREST} <= set(baselines)
    strongest = max(baselines.values())
    assert entry.metrics["baseline_accuracy"] == strongest
    assert baselines[entry.metrics["baseline"]] == strongest
    assert entry.metrics["test_accuracy"] > strongest
    assert entry.metrics["test_images"] == 10_000
    assert parity() <= 1e-4


def test_strongest_baselines_merges_and_later_figures_win() -> None:
    from statecast.export.keras.frame_cnn import strongest_baselines

    manifest = {"baseline": "lr", "baseline_accuracy": 0.84, "baselines": {"rf": 0.88}}
    figures = {"baseline": "lr", "baseline_accuracy": 0.85, "baselines": {"lr": 0.85}}
    got = strongest_baselines(manifest, figures)
    assert got == {
        "baseline": "rf",
        "baseline_accuracy": 0.88,
        "baselines": {"lr": 0.85, "rf": 0.88},
    }
    assert strongest_baselines({"baselines": {"rf": 0.80}}, figures)["baseline"] == "lr"
    with pytest.raises(ValueError, match="no baseline"):
        strongest_baselines({}, {"test_accuracy": 0.9})


def test_forest_baseline_is_cached_and_not_refitted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from statecast.export.keras import frame_cnn

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(40, 28, 28), dtype=np.uint8)
    y = np.arange(40) % 2
    x[y == 1, :14] = 255  # separable, so the figure is far from chance
    monkeypatch.setattr(frame_cnn, "cache_dir", lambda: tmp_path)
    first = frame_cnn.cached_forest_baseline(x, y, x, y)
    assert first == 1.0
    assert len(list((tmp_path / "frame_cnn").glob("forest-*.json"))) == 1

    def refit(*_: object) -> float:
        raise AssertionError("the cached figure was not used")

    monkeypatch.setattr(frame_cnn, "forest_baseline", refit)
    assert frame_cnn.cached_forest_baseline(x, y, x, y) == first


def test_frame_cnn_reexport_keeps_every_baseline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    from statecast.contract.manifest import ManifestEntry, upsert_entry
    from statecast.export.keras import frame_cnn
    from statecast.models.video_data import FASHION_DIR

    if not (FASHION_DIR / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
    _seeded()
    model = keras.Sequential(
        [keras.Input((28, 28, 1)), L.Flatten(), L.Dense(10, activation="softmax")]
    )
    src = tmp_path / "tiny.keras"
    model.save(src)
    figures = {"test_accuracy": 0.9, "baselines": {frame_cnn.LOGISTIC: 0.85}}
    src.with_suffix(".metrics.json").write_text(json.dumps(figures))
    monkeypatch.setattr(frame_cnn, "KERAS_FILE", src)
    manifest = tmp_path / "models" / "manifest.json"
    manifest.parent.mkdir()
    audited = {"baseline": frame_cnn.LOGISTIC, "baseline_accuracy": 0.84}
    audited["baselines"] = {frame_cnn.LOGISTIC: 0.84, frame_cnn.FOREST: 0.88}
    upsert_entry(ManifestEntry("frame_cnn", "1", "classify", "x", "0", audited), manifest)

    metrics = frame_cnn.export(manifest).metrics
    assert metrics["baselines"] == {frame_cnn.LOGISTIC: 0.85, frame_cnn.FOREST: 0.88}
    assert (metrics["baseline"], metrics["baseline_accuracy"]) == (frame_cnn.FOREST, 0.88)
    assert load_manifest(manifest)["frame_cnn"].metrics == metrics


def test_a_file_keras_cannot_read_is_refused(tmp_path: Path) -> None:
    src = tmp_path / "broken.keras"
    src.write_bytes(b"PK\x03\x04 not really a zip")
    opts = _forecast("m", "window")
    with pytest.raises(ImportError_, match="keras cannot load it"):
        import_keras(src, opts, tmp_path / "o", tmp_path / "models" / "manifest.json", tmp_path)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_every_supported_activation_matches_keras(name: str) -> None:
    import torch

    from statecast.export.keras.graph import convert_model

    _seeded()
    model = keras.Sequential([keras.Input((5,)), L.Dense(4, activation=name)])
    x = np.random.default_rng(0).normal(scale=2.0, size=(8, 5)).astype(np.float32)
    with torch.no_grad():
        got, _ = convert_model(model).chain(torch.from_numpy(x), None)
    want = keras.ops.convert_to_numpy(model(x, training=False))
    np.testing.assert_allclose(got.numpy(), want, atol=1e-5)
