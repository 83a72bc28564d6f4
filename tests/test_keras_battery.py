"""A battery of tutorial-style Keras 3 models through ``statecast import`` (the CLI function).

Each case is a small random-weight model built the way Keras tutorials build them, saved
to a ``.keras`` file (with or without compile state), imported with ``cli.main`` in the
semantics its input shape means, and then checked HERE, independently of the importer's
own parity check: the ONNX step model is run event by event with onnxruntime and every
output is compared with ``model.predict`` on what that event stands for (the last W
events in window mode, the whole prefix in stateful mode, the input alone when
stateless), on random inputs and on realistic ones (a seasonal series on its real scale,
images with structure in 0-255). Refusals: a clean error naming the layer, exit code 2,
nothing written.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from statecast import cli
from tests.fixtures.keras_support import (
    one_torch_thread,  # noqa: F401  (an autouse fixture: imported, it runs for this module)
    randomise_batchnorm,
)

pytestmark = [
    pytest.mark.unit,
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
]
os.environ.setdefault("KERAS_BACKEND", "torch")
keras = pytest.importorskip("keras")
L = keras.layers
TOL = 1e-4
Array = np.ndarray[Any, Any]


@dataclass(frozen=True)
class Case:
    build: Callable[[], Any]
    kind: str  # forecast | classify | video
    mode: str | None  # window | stateful | None (stateless)
    compile: bool = False
    args: tuple[str, ...] = field(default=())
    pixel_scale: float = 1.0 / 255.0  # what the importer multiplies the 0-255 pixels by
    adapt: bool = False  # call adapt() on Normalization layers with realistic data
    # The output [B, H, out] is a whole multi-step forecast (a Reshape head, a decoder), not
    # one output per input step: the served prediction is all of it, not its last step.
    horizon: bool = False
    flat_window: bool = False  # Input((W,)): a window of W one-feature steps


def seq(shape: tuple[int | None, ...], *layers: Any, dtype: str = "float32") -> Callable[[], Any]:
    def build() -> Any:
        return keras.Sequential([keras.Input(shape, dtype=dtype), *[f() for f in layers]])

    return build


def functional(shape: tuple[int | None, ...], *layers: Any) -> Callable[[], Any]:
    def build() -> Any:
        inp = keras.Input(shape)
        x = inp
        for f in layers:
            x = f()(x)
        return keras.Model(inp, x)

    return build


def rnn(cls: str, units: int, **kw: Any) -> Callable[[], Any]:
    return lambda: getattr(L, cls)(units, **kw)


def dense(units: int, activation: str | None = None, **kw: Any) -> Callable[[], Any]:
    return lambda: L.Dense(units, activation=activation, **kw)


def lay(cls: str, *a: Any, **kw: Any) -> Callable[[], Any]:
    return lambda: getattr(L, cls)(*a, **kw)


def td(*inner: Any, shape: tuple[int, ...] | None = None) -> Callable[[], Any]:
    def build() -> Any:
        if shape is None:
            return L.TimeDistributed(inner[0]())
        return L.TimeDistributed(keras.Sequential([keras.Input(shape), *[f() for f in inner]]))

    return build


W = 8  # window length of the fixed-window forecasters
NONE = None

CASES: dict[str, Case] = {
    # --- recurrent forecasters, window semantics (fixed time axis) --------------------
    "simplernn_window": Case(seq((W, 1), rnn("SimpleRNN", 12), dense(1)), "forecast", "window"),
    "simplernn_relu_window": Case(
        seq((W, 3), rnn("SimpleRNN", 6, activation="relu"), dense(1)), "forecast", "window"
    ),
    "lstm_window_compiled": Case(
        seq((W, 3), rnn("LSTM", 8), dense(1)), "forecast", "window", compile=True
    ),
    "lstm_stack3_window": Case(
        seq(
            (W, 3),
            rnn("LSTM", 8, return_sequences=True),
            rnn("LSTM", 6, return_sequences=True),
            rnn("LSTM", 4),
            dense(2),
        ),
        "forecast",
        "window",
    ),
    "lstm_return_sequences_tail_window": Case(
        seq((W, 2), rnn("LSTM", 5, return_sequences=True), td(dense(1))), "forecast", "window"
    ),
    "lstm_variants_window": Case(
        seq(
            (W, 2),
            rnn("LSTM", 5, activation="relu", recurrent_activation="hard_sigmoid", use_bias=False),
            dense(1),
        ),
        "forecast",
        "window",
    ),
    "gru_reset_after_false_window": Case(
        seq((W, 3), rnn("GRU", 6, reset_after=False), dense(1)), "forecast", "window"
    ),
    "gru_variants_window": Case(
        seq(
            (W, 3),
            rnn("GRU", 6, return_sequences=True, recurrent_activation="hard_sigmoid"),
            rnn("GRU", 4, use_bias=False, activation="sigmoid"),
            dense(3),
        ),
        "forecast",
        "window",
    ),
    "functional_lstm_dropout_window": Case(
        functional(
            (W, 3),
            rnn("LSTM", 8, return_sequences=True, dropout=0.2, recurrent_dropout=0.1),
            lay("Dropout", 0.3),
            rnn("GRU", 4),
            dense(4, "relu"),
            dense(1),
        ),
        "forecast",
        "window",
        compile=True,
    ),
    "dense_flatten_window": Case(
        seq((W, 2), lay("Flatten"), dense(8, "relu"), dense(1)), "forecast", "window"
    ),
    "dense_on_window_reshape": Case(
        seq((W, 2), lay("Reshape", (W * 2,)), dense(6, "selu"), dense(1)), "forecast", "window"
    ),
    # --- recurrent forecasters, stateful semantics (None time axis) --------------------
    "simplernn_stateful": Case(
        seq((NONE, 1), rnn("SimpleRNN", 8), dense(1)), "forecast", "stateful"
    ),
    "lstm_stack2_stateful_compiled": Case(
        seq(
            (NONE, 3),
            rnn("LSTM", 8, return_sequences=True),
            rnn("LSTM", 4),
            dense(2),
        ),
        "forecast",
        "stateful",
        compile=True,
    ),
    "gru_stack3_stateful": Case(
        seq(
            (NONE, 2),
            rnn("GRU", 6, return_sequences=True),
            rnn("GRU", 5, return_sequences=True, reset_after=False),
            rnn("GRU", 4),
            dense(1, "linear"),
        ),
        "forecast",
        "stateful",
    ),
    "simplernn_return_sequences_stateful": Case(
        seq((NONE, 2), rnn("SimpleRNN", 5, return_sequences=True), dense(1)),
        "forecast",
        "stateful",
    ),
    "lstm_dense_front_batchnorm_stateful": Case(
        seq(
            (NONE, 3),
            dense(6, "tanh"),
            lay("BatchNormalization"),
            rnn("LSTM", 5),
            lay("BatchNormalization"),
            dense(2),
        ),
        "forecast",
        "stateful",
    ),
    # --- Conv1D forecasters (window) --------------------------------------------------
    "conv1d_valid_maxpool_flatten": Case(
        seq(
            (12, 2),
            lay("Conv1D", 4, 3, activation="relu"),
            lay("MaxPooling1D", 2),
            lay("Flatten"),
            dense(1),
        ),
        "forecast",
        "window",
    ),
    "conv1d_same_strides_gap": Case(
        seq(
            (12, 3),
            lay("Conv1D", 4, 3, padding="same", strides=2),
            lay("GlobalAveragePooling1D"),
            dense(1),
        ),
        "forecast",
        "window",
    ),
    "conv1d_causal_dilated_gmp": Case(
        seq(
            (12, 1),
            lay("Conv1D", 4, 2, padding="causal", dilation_rate=2, activation="elu"),
            lay("Conv1D", 3, 3, padding="causal", dilation_rate=4),
            lay("GlobalMaxPooling1D"),
            dense(1),
        ),
        "forecast",
        "window",
    ),
    "conv1d_lstm": Case(
        seq(
            (12, 2),
            lay("Conv1D", 6, 3, padding="same", activation="relu"),
            lay("MaxPooling1D", 2, strides=1),
            rnn("LSTM", 5),
            dense(1),
        ),
        "forecast",
        "window",
    ),
    "conv1d_avgpool_spatialdropout": Case(
        seq(
            (12, 2),
            lay("Conv1D", 4, 3),
            lay("SpatialDropout1D", 0.2),
            lay("AveragePooling1D", 2),
            lay("Flatten"),
            dense(1),
        ),
        "forecast",
        "window",
    ),
    # --- Dense activations ---------------------------------------------------------------
    **{
        f"dense_{a}_classify": Case(
            seq((6, 6), lay("Flatten"), dense(5, a), dense(4, a)), "classify", None
        )
        for a in (
            "softmax",
            "sigmoid",
            "relu",
            "elu",
            "selu",
            "gelu",
            "swish",
            "softplus",
            "linear",
            "tanh",
        )
    },
    "activation_layers_classify": Case(
        seq(
            (6, 6),
            lay("Flatten"),
            dense(8),
            lay("Activation", "relu"),
            dense(8),
            lay("LeakyReLU", negative_slope=0.2),
            dense(8),
            lay("LeakyReLU"),
            dense(8),
            lay("ELU"),
            dense(8),
            lay("ReLU"),
            dense(3),
            lay("Softmax"),
        ),
        "classify",
        None,
    ),
    # --- Conv2D image classifiers (stateless) ---------------------------------------------
    "mnist_cnn_compiled": Case(
        seq(
            (28, 28, 1),
            lay("Conv2D", 8, (3, 3), activation="relu"),
            lay("MaxPooling2D", (2, 2)),
            lay("Conv2D", 8, (3, 3), activation="relu"),
            lay("MaxPooling2D", (2, 2)),
            lay("Flatten"),
            lay("Dropout", 0.5),
            dense(10, "softmax"),
        ),
        "classify",
        None,
        compile=True,
    ),
    "cnn_same_strides_bn": Case(
        seq(
            (20, 20, 1),
            lay("Conv2D", 4, 3, padding="same", strides=2, use_bias=False),
            lay("BatchNormalization"),
            lay("Activation", "relu"),
            lay("MaxPooling2D", pool_size=3, strides=2, padding="same"),
            lay("Conv2D", 6, (2, 3), padding="valid"),
            lay("BatchNormalization"),
            lay("Flatten"),
            dense(4, "softmax"),
        ),
        "classify",
        None,
    ),
    "cnn_grey_2d_input_reshape": Case(
        seq(
            (16, 16),
            lay("Reshape", (16, 16, 1)),
            lay("Conv2D", 4, 3),
            lay("AveragePooling2D", 2),
            lay("GlobalMaxPooling2D"),
            dense(3, "softmax"),
        ),
        "classify",
        None,
    ),
    "cnn_zeropad_gap2d": Case(
        seq(
            (15, 15, 1),
            lay("ZeroPadding2D", 1),
            lay("Conv2D", 4, 3, strides=2),
            lay("SpatialDropout2D", 0.1),
            lay("GaussianNoise", 0.1),
            lay("GaussianDropout", 0.1),
            lay("GlobalAveragePooling2D"),
            dense(2, "sigmoid"),
        ),
        "classify",
        None,
    ),
    "functional_cnn": Case(
        functional(
            (12, 12, 1),
            lay("Conv2D", 4, 3, activation="relu"),
            lay("MaxPooling2D"),
            lay("Flatten"),
            dense(5, "softmax"),
        ),
        "classify",
        None,
    ),
    # --- video: TimeDistributed(CNN) + RNN -----------------------------------------------
    "td_cnn_lstm_stateful": Case(
        seq(
            (NONE, 12, 12, 1),
            td(
                lay("Conv2D", 4, 3, activation="relu"),
                lay("MaxPooling2D"),
                lay("Flatten"),
                shape=(12, 12, 1),
            ),
            rnn("LSTM", 6),
            dense(3, "softmax"),
        ),
        "video",
        "stateful",
    ),
    "td_layers_gru_window": Case(
        seq(
            (4, 10, 10, 1),
            td(lay("Conv2D", 3, 3)),
            td(lay("MaxPooling2D")),
            td(lay("Flatten")),
            rnn("GRU", 5),
            dense(2, "softmax"),
        ),
        "video",
        "window",
    ),
    # --- layers added for the battery (each with its parity here) ----------------------
    "conv_even_kernels_same": Case(
        seq(
            (12, 12, 1),
            lay("Conv2D", 3, 2, padding="same"),
            lay("Conv2D", 3, 4, strides=2, padding="same"),
            lay("Conv2D", 3, (2, 3), strides=(1, 2), padding="same", dilation_rate=1),
            lay("Flatten"),
            dense(2, "softmax"),
        ),
        "classify",
        None,
    ),
    "conv1d_even_kernel_same_strides": Case(
        seq(
            (11, 2),
            lay("Conv1D", 3, 4, padding="same", strides=2),
            lay("Conv1D", 3, 2, padding="same"),
            lay("Flatten"),
            dense(1),
        ),
        "forecast",
        "window",
    ),
    "avgpool_same_even_and_uneven": Case(
        seq(
            (13, 13, 1),
            lay("AveragePooling2D", 3, strides=1, padding="same"),
            lay("AveragePooling2D", 2, strides=1, padding="same"),
            lay("AveragePooling2D", 2, padding="same"),
            lay("MaxPooling2D", 2, padding="same"),
            lay("Flatten"),
            dense(2, "softmax"),
        ),
        "classify",
        None,
    ),
    "avgpool1d_same_gmp_keepdims": Case(
        seq(
            (11, 2),
            lay("AveragePooling1D", 3, strides=2, padding="same"),
            lay("ZeroPadding1D", (2, 1)),
            lay("Cropping1D", (1, 0)),
            lay("UpSampling1D", 2),
            lay("GlobalMaxPooling1D", keepdims=True),
            lay("Flatten"),
            dense(1),
        ),
        "forecast",
        "window",
    ),
    "cnn_rgb_zeropad_crop_upsample": Case(
        seq(
            (10, 12, 3),
            lay("ZeroPadding2D", ((1, 2), (0, 1))),
            lay("Conv2D", 4, 3, activation="relu"),
            lay("Cropping2D", ((1, 0), (2, 1))),
            lay("UpSampling2D", (2, 1)),
            lay("MaxPooling2D", (3, 2), strides=(2, 2)),
            lay("Flatten"),
            dense(3, "softmax"),
        ),
        "classify",
        None,
    ),
    "cnn_rgb_bn_gap": Case(
        seq(
            (16, 16, 3),
            lay("Conv2D", 8, 3, padding="same"),
            lay("BatchNormalization"),
            lay("ReLU", max_value=6.0),
            lay("Conv2D", 8, 3, strides=2),
            lay("PReLU"),
            lay("GlobalAveragePooling2D"),
            dense(4, "softmax"),
        ),
        "classify",
        None,
    ),
    "relu_options_prelu_classify": Case(
        seq(
            (5, 5),
            lay("Flatten"),
            dense(8),
            lay("ReLU", negative_slope=0.1, threshold=0.3),
            dense(8),
            lay("ReLU", max_value=1.0, negative_slope=0.2),
            dense(8),
            lay("PReLU", alpha_initializer="random_normal"),
            dense(4, "mish"),
            lay("Softmax"),
        ),
        "classify",
        None,
    ),
    "permute_conv1d_window": Case(
        seq((W, 4), lay("Permute", (2, 1)), lay("Conv1D", 3, 2), lay("Flatten"), dense(1)),
        "forecast",
        "window",
    ),
    "encoder_decoder_repeatvector_window": Case(
        seq(
            (W, 2),
            rnn("LSTM", 6),
            lay("RepeatVector", 3),
            rnn("LSTM", 5, return_sequences=True),
            td(dense(1)),
        ),
        "forecast",
        "window",
        horizon=True,
    ),
    "reshape_multistep_head_window": Case(
        seq((W, 2), rnn("LSTM", 6), dense(4 * 2), lay("Reshape", (4, 2))),
        "forecast",
        "window",
        horizon=True,
        args=("--targets", "lo,hi"),
    ),
    "reshape_multistep_head_stateful": Case(
        seq((NONE, 2), rnn("GRU", 5), dense(3), lay("Reshape", (3, 1))),
        "forecast",
        "stateful",
        horizon=True,
    ),
    "conv1d_same_sequence_output_window": Case(
        seq((W, 2), lay("Conv1D", 3, 3, padding="same", activation="relu"), dense(1)),
        "forecast",
        "window",
        horizon=True,
    ),
    "lstm_sequence_output_window": Case(
        seq((W, 2), rnn("LSTM", 4, return_sequences=True), dense(2)),
        "forecast",
        "window",
    ),
    "masking_lstm_window": Case(
        seq((W, 3), lay("Masking", mask_value=0.0), rnn("LSTM", 5), dense(1)),
        "forecast",
        "window",
    ),
    "masking_gru_stateful": Case(
        seq((NONE, 3), lay("Masking", mask_value=0.0), rnn("GRU", 5), dense(2)),
        "forecast",
        "stateful",
    ),
    "input_shape_kwarg_lstm_window": Case(
        lambda: keras.Sequential([L.LSTM(6, input_shape=(W, 1)), L.Dense(1)]),
        "forecast",
        "window",
    ),
    "mlp_lag_vector_window": Case(
        seq((W,), dense(8, "relu"), dense(1)), "forecast", "window", flat_window=True
    ),
    "mlp_features_stateless_forecast": Case(
        seq((4,), dense(8, "relu"), lay("Dropout", 0.1), dense(2)), "forecast", None
    ),
    # No --mode: a None time axis means stateful, a fixed one window (what it was trained on).
    "lstm_default_mode_is_stateful": Case(
        seq((NONE, 2), rnn("LSTM", 4), dense(1)), "forecast", None
    ),
    "gru_default_mode_is_window": Case(seq((W, 2), rnn("GRU", 4), dense(1)), "forecast", None),
    "conv1d_default_mode_is_window": Case(
        seq((W, 2), lay("Conv1D", 3, 3), lay("Flatten"), dense(1)), "forecast", None
    ),
    "td_cnn_default_mode_is_window": Case(
        seq(
            (3, 8, 8, 1),
            td(lay("Conv2D", 2, 3), lay("Flatten"), shape=(8, 8, 1)),
            rnn("SimpleRNN", 3),
            dense(2, "softmax"),
        ),
        "video",
        None,
    ),
    "rescaling_cnn_raw_pixels": Case(
        seq(
            (14, 14, 3),
            lay("Rescaling", 1.0 / 255),
            lay("Conv2D", 4, 3, activation="relu"),
            lay("MaxPooling2D"),
            lay("Flatten"),
            dense(3, "softmax"),
        ),
        "classify",
        None,
        pixel_scale=1.0,
    ),
    "rescaling_offset_grey": Case(
        seq(
            (10, 10, 1),
            lay("Rescaling", 1.0 / 127.5, offset=-1.0),
            lay("Conv2D", 3, 3),
            lay("GlobalAveragePooling2D"),
            dense(2, "softmax"),
        ),
        "classify",
        None,
        pixel_scale=1.0,
    ),
    "normalization_adapted_lstm_window": Case(
        seq((W, 3), lay("Normalization"), rnn("LSTM", 5), dense(1)),
        "forecast",
        "window",
        adapt=True,
    ),
    "normalization_given_gru_stateful": Case(
        seq(
            (NONE, 2),
            lay("Normalization", mean=[4.0, 3.5], variance=[0.8, 0.5]),
            rnn("GRU", 4),
            dense(1),
        ),
        "forecast",
        "stateful",
    ),
    "layernorm_lstm_window": Case(
        seq(
            (W, 3),
            rnn("LSTM", 6, return_sequences=True),
            lay("LayerNormalization"),
            rnn("LSTM", 4),
            lay("LayerNormalization", center=False, epsilon=1e-5),
            dense(1),
        ),
        "forecast",
        "window",
    ),
    "layernorm_gru_stateful": Case(
        seq(
            (NONE, 3),
            dense(8, "gelu"),
            lay("LayerNormalization", scale=False),
            rnn("GRU", 5),
            dense(1),
        ),
        "forecast",
        "stateful",
    ),
}

SEQ_MODES = ("window", "stateful")


def _randomise(model: Any, seed: int) -> None:
    """Non-trivial moving statistics: fresh BatchNormalization layers are the identity."""
    randomise_batchnorm(_all_layers(model), seed)


def _all_layers(model: Any) -> list[Any]:
    out: list[Any] = []
    for layer in getattr(model, "layers", []):
        out += [layer, *_all_layers(layer)]
        if hasattr(layer, "layer"):
            out += [layer.layer, *_all_layers(layer.layer)]
    return out


def _save(tmp_path: Path, case: Case) -> tuple[Any, Path]:
    keras.utils.set_random_seed(7)
    model = case.build()
    _randomise(model, 7)
    if case.adapt:
        shape = tuple(model.inputs[0].shape[1:])
        data = _realistic("forecast", (shape[-1],), 50)
        for layer in _all_layers(model):
            if isinstance(layer, L.Normalization):
                layer.adapt(data)
    if case.compile:
        model.compile(optimizer="adam", loss="mse")
        x = np.zeros([2, *(3 if d is None else d for d in model.inputs[0].shape[1:])], "f4")
        y = np.zeros((2, *model.outputs[0].shape[1:]), np.float32)
        # One step of zero learning rate: the optimizer state is saved, the weights stay.
        model.optimizer.learning_rate = 0.0
        model.fit(x, y, epochs=1, verbose=0)
    src = tmp_path / "m.keras"
    model.save(src)
    return model, src


def _realistic(kind: str, shape: tuple[int, ...], n: int) -> Array:
    """Events ``[B, n, *shape]`` as real data looks: a seasonal series on its real scale
    (electricity demand in MW), or images with structure (a bright blob on a dark field)."""
    rng = np.random.default_rng(11)
    b = 2
    if kind == "forecast":
        t = np.arange(n)[None, :, None] + rng.integers(0, 48, size=(b, 1, 1))
        f = np.arange(int(np.prod(shape)))[None, None, :]
        base = 4000 + 900 * np.sin(2 * np.pi * t / 48 + f) + 60 * rng.normal(size=(b, n, 1))
        return (base / 1000.0).reshape((b, n, *shape)).astype(np.float32)
    h, w = shape[-2:]
    yy, xx = np.mgrid[:h, :w]
    cy, cx = rng.uniform(0, h, size=(b, n, 1, 1)), rng.uniform(0, w, size=(b, n, 1, 1))
    blob = 255 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (0.1 * h * w))
    tint = np.linspace(1.0, 0.6, shape[0])[None, None, :, None, None]  # colour channels
    img = blob[:, :, None] * tint + 10 * rng.normal(size=(b, n, *shape))
    clipped: Array = np.clip(img, 0, 255)
    return clipped


def _events(kind: str, shape: tuple[int, ...], n: int, realistic: bool) -> Array:
    if realistic:
        return _realistic(kind, shape, n).astype(np.float32)
    rng = np.random.default_rng(5)
    if kind == "forecast":
        return rng.normal(scale=1.5, size=(2, n, *shape)).astype(np.float32)
    return rng.uniform(0, 255, size=(2, n, *shape)).astype(np.float32)


def _run_steps(onnx_path: Path, events: Array) -> list[dict[str, Array]]:
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    states = {
        i.name: np.zeros(
            [d if isinstance(d, int) else events.shape[0] for d in i.shape], np.float32
        )
        for i in sess.get_inputs()
        if i.name.startswith("state_in.")
    }
    outs = []
    for t in range(events.shape[1]):
        got = dict(zip(names, sess.run(None, {"x": events[:, t], **states}), strict=True))
        states = {k: got[k.replace("state_in.", "state_out.")] for k in states}
        outs.append(got)
    return outs


def _keras_input(case: Case, events: Array) -> Array:
    """Worker events -> what Keras was fed: pixels scaled by 1/255, channels last."""
    if case.kind == "forecast":
        return events
    return np.moveaxis(events, 2, -1) * case.pixel_scale


def _predict(model: Any, x: Array, horizon: bool = False) -> Array:
    y = np.asarray(model.predict(x, verbose=0), np.float64)
    return y[:, -1] if y.ndim == 3 and not horizon else y


def _check_against_keras(model: Any, case: Case, onnx_path: Path, realistic: bool) -> float:
    in_shape = tuple(model.inputs[0].shape[1:])
    stateless = case.kind == "classify" or (case.mode is None and len(in_shape) == 1)
    mode = case.mode or ("stateful" if in_shape[0] is None else "window")
    step_shape = in_shape if stateless else in_shape[1:]
    if case.flat_window:
        step_shape = (1,)
    channels = step_shape[2] if len(step_shape) == 3 else 1
    event_shape = step_shape if case.kind == "forecast" else (channels, *step_shape[:2])
    n = (int(in_shape[0]) + 3) if mode == "window" else 6
    events = _events(case.kind, event_shape, n, realistic)
    if realistic and case.kind == "forecast":
        # A gap filled with zeros, as real feeds have: Masking layers skip such a step.
        events[:, 2] = 0.0
    got = _run_steps(onnx_path, events)
    keras_in = _keras_input(case, events).reshape((*events.shape[:2], *step_shape))
    if case.flat_window:
        keras_in = keras_in[..., 0]
    out = "prediction" if case.kind == "forecast" else "probs"
    worst = 0.0
    for t, step in enumerate(got):
        if stateless:
            want = _predict(model, keras_in[:, t])
        elif mode == "stateful":
            want = _predict(model, keras_in[:, : t + 1], case.horizon)
        else:
            w = int(in_shape[0])
            if t + 1 < w:
                assert np.all(step["warming_up"] == 1.0)
                continue
            assert np.all(step["warming_up"] == 0.0)
            want = _predict(model, keras_in[:, t + 1 - w : t + 1], case.horizon)
        worst = max(worst, float(np.max(np.abs(step[out] - want))))
    return worst


def _cli_args(case: Case, model: Any, src: Path, tmp_path: Path) -> list[str]:
    manifest = tmp_path / "models" / "manifest.json"
    args = ["import", str(src), "--name", "m", "--kind", case.kind, "--manifest", str(manifest)]
    if case.mode is not None:
        args += ["--mode", case.mode]
    if case.kind == "forecast":
        nf = 1 if case.flat_window else int(model.inputs[0].shape[-1])
        args += ["--features", ",".join(f"f{i}" for i in range(nf))]
    return [*args, *case.args]


@pytest.mark.parametrize("name", sorted(CASES))
def test_tutorial_model_imports_and_matches_model_predict(tmp_path: Path, name: str) -> None:
    case = CASES[name]
    model, src = _save(tmp_path, case)
    args = _cli_args(case, model, src, tmp_path)
    if case.kind != "forecast":
        args += ["--pixel-scale", repr(case.pixel_scale)]
    assert cli.main(args) == 0
    onnx_path = tmp_path / "models" / "onnx" / "m.onnx"
    assert onnx_path.exists()
    assert _check_against_keras(model, case, onnx_path, realistic=False) <= TOL
    assert _check_against_keras(model, case, onnx_path, realistic=True) <= TOL


# --- refusals -----------------------------------------------------------------------------


def _bidirectional() -> Any:
    return keras.Sequential([keras.Input((W, 2)), L.Bidirectional(L.LSTM(3)), L.Dense(1)])


def _attention() -> Any:
    inp = keras.Input((W, 2))
    att = L.Attention(name="att")([inp, inp])
    return keras.Model(inp, L.Dense(1)(L.Flatten()(att)))


def _branching() -> Any:
    inp = keras.Input((W, 2))
    a = L.LSTM(3, name="left")(inp)
    b = L.GRU(3, name="right")(inp)
    return keras.Model(inp, L.Dense(1)(L.Concatenate(name="merge")([a, b])))


def _lambda() -> Any:
    return keras.Sequential(
        [keras.Input((W, 2)), L.Lambda(lambda x: x * 2.0, name="double"), L.LSTM(3), L.Dense(1)]
    )


def _group_norm() -> Any:
    return keras.Sequential(
        [keras.Input((W, 4)), L.GroupNormalization(groups=2, name="gn"), L.LSTM(2), L.Dense(1)]
    )


def _conv_in_stateful() -> Any:
    return keras.Sequential([keras.Input((None, 2)), L.Conv1D(3, 2), L.LSTM(2), L.Dense(1)])


@keras.saving.register_keras_serializable(package="battery")
class Doubler(keras.layers.Layer):  # type: ignore[misc,name-defined]
    def call(self, x: Any) -> Any:
        return x * 2.0


def _custom() -> Any:
    return keras.Sequential([keras.Input((W, 2)), Doubler(name="twice"), L.LSTM(2), L.Dense(1)])


def _depthwise() -> Any:
    return keras.Sequential(
        [keras.Input((W, 2)), L.DepthwiseConv1D(3, name="dw"), L.Flatten(), L.Dense(1)]
    )


def _no_rnn_sentiment() -> Any:
    return keras.Sequential(
        [
            keras.Input((None,), dtype="int32"),
            L.Embedding(VOCAB, 4),
            L.GlobalAveragePooling1D(),
            L.Dense(1, activation="sigmoid"),
        ]
    )


def _three_class_sentiment() -> Any:
    return keras.Sequential(
        [
            keras.Input((None,), dtype="int32"),
            L.Embedding(VOCAB, 4),
            L.GRU(3),
            L.Dense(3, activation="softmax"),
        ]
    )


REFUSED: dict[str, tuple[Callable[[], Any], str, tuple[str, ...]]] = {
    "custom_layer": (_custom, "window", ("'twice'", "Doubler")),
    "depthwise_conv": (_depthwise, "window", ("'dw'", "DepthwiseConv1D")),
    "sentiment_without_rnn": (_no_rnn_sentiment, "stateful", ("recurrent",)),
    "sentiment_three_classes": (_three_class_sentiment, "stateful", ("1 unit", "has 3")),
    "bidirectional": (_bidirectional, "window", ("Bidirectional", "cannot")),
    "attention": (_attention, "window", ("'att'", "Attention", "attention")),
    "branching": (_branching, "window", ("linear stack",)),
    "lambda": (_lambda, "window", ("'double'", "Lambda")),
    "group_norm": (_group_norm, "window", ("'gn'", "GroupNormalization")),
    "conv_in_stateful": (_conv_in_stateful, "stateful", ("Conv1D", "--mode window")),
}


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_unsupported_model_is_refused_with_exit_2_and_nothing_written(
    tmp_path: Path, name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    build, mode, words = REFUSED[name]
    keras.utils.set_random_seed(7)
    src = tmp_path / "m.keras"
    model = build()
    # A Lambda layer only loads with safe_mode off; the importer loads safely, and the
    # refusal must still name the layer, not echo keras's deserialisation error.
    model.save(src)
    kind = "sentiment" if name.startswith("sentiment") else "forecast"
    case = Case(lambda: model, kind, mode)
    args = _cli_args(case, model, src, tmp_path)
    if kind == "sentiment":
        args += ["--tokenizer", str(TOKENIZER)]
    assert cli.main(args) == 2
    out = capsys.readouterr().out
    assert out.startswith("error: ")
    for word in words:
        assert word in out
    assert not (tmp_path / "models").exists()


# --- sentiment: Embedding -> RNN on token ids, streamed in chunks ---------------------------

TOKENIZER = Path(__file__).resolve().parents[1] / "models" / "tokenizer" / "sentiment_lstm.json"
VOCAB = 16_000  # the tokenizer's vocabulary
TEXTS = (
    "This movie was great, I loved every minute of it!",
    "Dull plot, wooden acting; I walked out.",
)


def _embedding_model(*layers: Any, length: int | None = None) -> Callable[[], Any]:
    return seq((length,), *layers, dtype="int32")


SENTIMENT: dict[str, Callable[[], Any]] = {
    "imdb_embedding_lstm": _embedding_model(
        lay("Embedding", VOCAB, 8), rnn("LSTM", 6), dense(1, "sigmoid")
    ),
    "embedding_mask_zero_gru_stack": _embedding_model(
        lay("Embedding", VOCAB, 8, mask_zero=True),
        rnn("GRU", 6, return_sequences=True),
        lay("Dropout", 0.2),
        rnn("GRU", 4, reset_after=False),
        dense(1, "sigmoid"),
    ),
    "embedding_lstm_softmax_two_classes": _embedding_model(
        lay("Embedding", VOCAB, 6, mask_zero=True), rnn("LSTM", 4), dense(2, "softmax")
    ),
    "embedding_fixed_length_simplernn": _embedding_model(
        lay("Embedding", VOCAB, 4, mask_zero=True),
        rnn("SimpleRNN", 5),
        dense(1, "sigmoid"),
        length=40,
    ),
}


def _token_rows(realistic: bool) -> list[Array]:
    if realistic:
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(TOKENIZER))
        return [np.asarray(tok.encode(t).ids, np.int64) for t in TEXTS]
    rng = np.random.default_rng(3)
    return [rng.integers(1, VOCAB, size=n).astype(np.int64) for n in (11, 7)]


def _check_sentiment(model: Any, onnx_path: Path, realistic: bool, chunk: int = 3) -> float:
    rows = _token_rows(realistic)
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    states = {
        i.name: np.zeros((1, len(rows), int(i.shape[2])), np.float32)
        for i in sess.get_inputs()
        if i.name.startswith("state_in.")
    }
    names = [o.name for o in sess.get_outputs()]
    worst = 0.0
    for lo in range(0, max(len(r) for r in rows), chunk):
        pieces = [r[lo : lo + chunk] for r in rows]
        lengths = np.array([len(p) for p in pieces], np.int64)
        x = np.zeros((len(rows), chunk), np.int64)
        for i, p in enumerate(pieces):
            x[i, : len(p)] = p
        got = dict(zip(names, sess.run(None, {"x": x, "lengths": lengths, **states}), strict=True))
        states = {k: got[k.replace("state_in.", "state_out.")] for k in states}
        for i, r in enumerate(rows):
            want = _predict(model, r[None, : min(len(r), lo + chunk)])
            want = want[:, -1:]  # one unit, or a 2-class softmax served as P(positive)
            worst = max(worst, float(np.max(np.abs(got["positive"][i] - want[0]))))
    return worst


@pytest.mark.parametrize("name", sorted(SENTIMENT))
def test_sentiment_model_streams_chunks_like_model_predict_on_the_prefix(
    tmp_path: Path, name: str
) -> None:
    case = Case(SENTIMENT[name], "sentiment", "stateful")
    model, src = _save(tmp_path, case)
    args = _cli_args(case, model, src, tmp_path)
    assert cli.main([*args, "--tokenizer", str(TOKENIZER), "--chunk", "8"]) == 0
    onnx_path = tmp_path / "models" / "onnx" / "m.onnx"
    assert _check_sentiment(model, onnx_path, realistic=False) <= TOL
    assert _check_sentiment(model, onnx_path, realistic=True) <= TOL
