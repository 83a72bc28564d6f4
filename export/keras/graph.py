"""Read a Keras 3 model's layer stack and convert each layer into a PyTorch block.

Only linear stacks are converted (a ``Sequential`` model, or a functional model whose
layers form one chain); a nested ``Sequential`` / functional model is itself a stack, which
is how ``TimeDistributed(Sequential([...]))`` wraps a whole CNN. Every layer is checked
before anything is converted, and the first unsupported one stops the import with an
:class:`UnsupportedLayer` naming it and saying why: nothing is written.

This module touches keras objects only through their config dicts and ``get_weights()``,
so it never imports keras itself.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from statecast.export.keras.layers import (
    Act,
    Affine,
    AvgPool,
    BatchNorm,
    Block,
    Chain,
    Conv,
    Crop,
    Dense,
    Embedding,
    Flatten,
    GlobalAvgPool,
    GlobalMaxPool,
    Identity,
    LayerNorm,
    Masking,
    MaxPool,
    Permute,
    PReLU,
    Recurrent,
    RepeatVector,
    Reshape,
    TimeDistributed,
    UnsupportedLayer,
    UpSample,
    ZeroPad,
    activation,
    keras_relu,
)

# Layers refused with a reason more useful than "not supported".
WHY_NOT: dict[str, str] = {
    "Bidirectional": "it reads the sequence backwards too, so no prediction exists until the "
    "stream has ended: it cannot run one event at a time",
    "MultiHeadAttention": "attention looks at the whole sequence at once; it has no fixed-size "
    "per-stream state to carry between events",
    "Attention": "attention looks at the whole sequence at once; it has no fixed-size "
    "per-stream state to carry between events",
    "AdditiveAttention": "attention looks at the whole sequence at once; it has no fixed-size "
    "per-stream state to carry between events",
    "ConvLSTM1D": "convolutional recurrent layers are not converted",
    "ConvLSTM2D": "convolutional recurrent layers are not converted",
    "Lambda": "a Lambda layer is arbitrary Python code that cannot be converted",
}
STACKS = ("Sequential", "Functional", "Model")
SKIPPED = ("InputLayer",)
IDENTITY = (
    "Dropout",
    "SpatialDropout1D",
    "SpatialDropout2D",
    "GaussianNoise",
    "GaussianDropout",
    "AlphaDropout",
    "ActivityRegularization",
    "Identity",
)


@dataclass(frozen=True)
class Converted:
    """The blocks of a stack and what the streaming semantics need to know about them."""

    chain: Chain
    input_shape: tuple[int | None, ...]  # Keras's, batch axis first
    input_dtype: str
    recurrent: tuple[Recurrent, ...]  # top-level recurrent blocks, in order
    # The output keeps the input's time axis step for step ([B, T, out] from RNNs with
    # return_sequences and time-local layers): its last step is the newest event's
    # prediction. Any other [B, H, out] (a Reshape head, RepeatVector decoder) is whole.
    sequence_output: bool = False


def _name(layer: Any) -> str:
    return f"layer {layer.name!r} ({type(layer).__name__})"


def _act(layer: Any, key: str = "activation") -> Any:
    cfg = layer.get_config()[key]
    if isinstance(cfg, dict):  # a serialized function: {"config": "relu", ...}
        cfg = cfg.get("config", cfg.get("class_name"))
    return activation(str(cfg), _name(layer))


def stack_layers(model: Any) -> list[Any]:
    """The layers of a linear model, in order, without InputLayers."""
    layers = list(model.layers)
    for layer in layers:  # a known-unstreamable layer is the clearest reason: name it first
        if type(layer).__name__ in WHY_NOT:
            check_layer(layer)
    if type(model).__name__ != "Sequential":
        if len(model.inputs) != 1 or len(model.outputs) != 1:
            raise UnsupportedLayer(
                f"model {model.name!r}: only single-input, single-output models can stream"
            )
        for prev, layer in itertools.pairwise(layers):
            nodes = getattr(layer, "_inbound_nodes", [])
            parents = [p.operation for p in nodes[0].parent_nodes] if len(nodes) == 1 else []
            if len(nodes) != 1 or len(parents) != 1 or parents[0] is not prev:
                raise UnsupportedLayer(
                    f"{_name(layer)}: the model is not a linear stack of layers (branches "
                    "and merges are not converted)"
                )
    return [layer for layer in layers if type(layer).__name__ not in SKIPPED]


def check_stack(model: Any) -> None:
    """Refuse the first unsupported layer (recursively), before anything is converted."""
    for layer in stack_layers(model):
        check_layer(layer)


def check_layer(layer: Any) -> None:
    kind = type(layer).__name__
    if kind in WHY_NOT:
        raise UnsupportedLayer(f"{_name(layer)} is not supported: {WHY_NOT[kind]}")
    if kind in STACKS:
        check_stack(layer)
        return
    if kind == "TimeDistributed":
        check_layer(layer.layer)
        return
    if kind not in CONVERTERS:
        raise UnsupportedLayer(
            f"{_name(layer)} is not supported: no converter for {kind} (supported: "
            f"{', '.join(sorted(set(CONVERTERS) | {'TimeDistributed', 'InputLayer'}))})"
        )
    cfg = layer.get_config()
    if cfg.get("data_format", "channels_last") != "channels_last":
        raise UnsupportedLayer(f"{_name(layer)}: only data_format='channels_last' is converted")
    if kind in ("SimpleRNN", "LSTM", "GRU"):
        if cfg.get("go_backwards"):
            raise UnsupportedLayer(f"{_name(layer)}: go_backwards=True cannot stream")
        if cfg.get("return_state"):
            raise UnsupportedLayer(f"{_name(layer)}: return_state=True is not converted")
    if kind == "BatchNormalization":
        axis = cfg.get("axis", -1)
        axes = axis if isinstance(axis, (list, tuple)) else [axis]
        try:
            rank: int | None = len(layer.input.shape)
        except (AttributeError, ValueError):  # no single inbound node
            rank = None
        if not all(a == -1 or (rank is not None and a == rank - 1) for a in axes):
            raise UnsupportedLayer(f"{_name(layer)}: only axis=-1 (channels) is converted")


def convert_stack(model: Any) -> Chain:
    return Chain([convert_layer(layer) for layer in stack_layers(model)])


def convert_layer(layer: Any) -> Block:
    kind = type(layer).__name__
    if kind in STACKS:
        stack = convert_stack(layer)
        stack.label = _name(layer)
        return stack
    if kind == "TimeDistributed":
        wrapped = TimeDistributed(convert_layer(layer.layer))
        wrapped.label = _name(layer)
        return wrapped
    check_layer(layer)
    block: Block = CONVERTERS[kind](layer)
    block.label = _name(layer)
    return block


def _weights(layer: Any) -> list[np.ndarray[Any, Any]]:
    return [np.asarray(w, dtype=np.float32) for w in layer.get_weights()]


def _dense(layer: Any) -> Block:
    w = _weights(layer)
    return Dense(w[0], w[1] if len(w) > 1 else None, _act(layer))


def _recurrent(cell: str) -> Any:
    def convert(layer: Any) -> Block:
        cfg = layer.get_config()
        w = _weights(layer)
        return Recurrent(
            cell=cell,
            units=int(cfg["units"]),
            kernel=w[0],
            recurrent=w[1],
            bias=w[2] if len(w) > 2 else None,
            act=_act(layer),
            rec_act=_act(layer, "recurrent_activation")
            if cell != "simple"
            else activation("sigmoid", _name(layer)),
            return_sequences=bool(cfg.get("return_sequences", False)),
            reset_after=bool(cfg.get("reset_after", True)),
            zero_output_for_mask=bool(cfg.get("zero_output_for_mask", False)),
        )

    return convert


def _batchnorm(layer: Any) -> Block:
    cfg = layer.get_config()
    w = _weights(layer)
    i = 0
    gamma = w[i] if cfg.get("scale", True) else None
    i += gamma is not None
    beta = w[i] if cfg.get("center", True) else None
    i += beta is not None
    mean, var = w[i], w[i + 1]
    scale = (gamma if gamma is not None else 1.0) / np.sqrt(var + float(cfg["epsilon"]))
    shift = (beta if beta is not None else 0.0) - mean * scale
    return BatchNorm(np.asarray(scale, np.float32), np.asarray(shift, np.float32))


def _conv(layer: Any) -> Block:
    cfg = layer.get_config()
    w = _weights(layer)
    padding = str(cfg["padding"]).lower()
    if padding not in ("valid", "same", "causal"):
        raise UnsupportedLayer(f"{_name(layer)}: padding {padding!r} is not converted")
    return Conv(
        w[0],
        w[1] if len(w) > 1 else None,
        strides=tuple(cfg["strides"]),
        dilation=tuple(cfg["dilation_rate"]),
        padding=padding,
        groups=int(cfg.get("groups", 1)),
        fn=_act(layer),
    )


def _pool_args(layer: Any) -> tuple[tuple[int, ...], tuple[int, ...], str]:
    cfg = layer.get_config()
    nd = 2 if layer.__class__.__name__.endswith("2D") else 1
    pool = _tuple(cfg["pool_size"], nd)
    strides = _tuple(cfg["strides"], nd) if cfg.get("strides") is not None else pool
    return pool, strides, str(cfg["padding"]).lower()


def _tuple(value: Any, nd: int) -> tuple[int, ...]:
    """A Keras int-or-tuple setting as one int per spatial axis."""
    if isinstance(value, (list, tuple)):
        return tuple(int(v) for v in value)
    return (int(value),) * nd


def _pairs(value: Any, nd: int) -> tuple[tuple[int, int], ...]:
    """ZeroPadding / Cropping settings: int, (a, b) per axis or one pair -> pairs per axis."""
    if isinstance(value, int):
        return ((value, value),) * nd
    items = list(value)
    if nd == 1:
        return ((int(items[0]), int(items[1])),) if len(items) == 2 else ((int(items[0]),) * 2,)
    out: list[tuple[int, int]] = []
    for v in items:
        out.append((int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1])))
    return tuple(out)


def _maxpool(layer: Any) -> Block:
    return MaxPool(*_pool_args(layer))


def _avgpool(layer: Any) -> Block:
    return AvgPool(*_pool_args(layer))


def _nd(layer: Any) -> int:
    return 2 if type(layer).__name__.endswith("2D") else 1


def _upsample(layer: Any) -> Block:
    cfg = layer.get_config()
    if str(cfg.get("interpolation", "nearest")) != "nearest":
        raise UnsupportedLayer(f"{_name(layer)}: only interpolation='nearest' is converted")
    return UpSample(_tuple(cfg["size"], _nd(layer)))


def _softmax(layer: Any) -> Block:
    axis = layer.get_config().get("axis", -1)
    if not isinstance(axis, int):
        raise UnsupportedLayer(f"{_name(layer)}: softmax over several axes is not converted")
    import torch

    return Act(lambda x: torch.softmax(x, dim=axis))


def _elu(layer: Any) -> Block:
    alpha = float(layer.get_config().get("alpha", 1.0))
    import torch.nn.functional as F

    return Act(lambda x: F.elu(x, alpha))


def _numpy(value: Any) -> np.ndarray[Any, Any]:
    """A keras variable, backend tensor, numpy array or number as float32 numpy."""
    if hasattr(value, "detach"):  # a torch tensor
        value = value.detach().cpu()
    if hasattr(value, "numpy"):
        value = value.numpy()
    return np.asarray(value, np.float32)


def _rescaling(layer: Any) -> Block:
    return Affine(_numpy(layer.scale), _numpy(layer.offset))


KERAS_EPSILON = 1e-7  # keras.config.epsilon()'s default, Normalization's floor on the std


def _normalization(layer: Any) -> Block:
    if layer.mean is None:
        raise UnsupportedLayer(f"{_name(layer)}: the layer was never adapted nor given a mean")
    mean, var = _numpy(layer.mean), _numpy(layer.variance)
    std = np.maximum(np.sqrt(var), KERAS_EPSILON)
    # Per-time-step statistics (axis over the time axis) cannot advance one event at a time.
    local = mean.ndim < 3 or mean.shape[1] == 1
    if layer.get_config().get("invert", False):
        return Affine(std, mean, local)
    # (x - mean) / std as x * (1 / std) - mean / std: within float32 rounding of Keras.
    return Affine(1.0 / std, -mean / std, local)


def _layernorm(layer: Any) -> Block:
    cfg = layer.get_config()
    axis = cfg.get("axis", -1)
    axes = axis if isinstance(axis, (list, tuple)) else [axis]
    rank = len(layer.input.shape)
    if [a % rank for a in axes] != [rank - 1]:
        raise UnsupportedLayer(f"{_name(layer)}: only axis=-1 (the features) is converted")
    w = _weights(layer)
    gamma = w.pop(0) if cfg.get("scale", True) else None
    beta = w.pop(0) if cfg.get("center", True) else None
    return LayerNorm(gamma, beta, float(cfg["epsilon"]), bool(cfg.get("rms_scaling", False)))


def _prelu(layer: Any) -> Block:
    return PReLU(_weights(layer)[0])


def _leaky(layer: Any) -> Block:
    cfg = layer.get_config()
    slope = float(cfg.get("negative_slope", cfg.get("alpha", 0.3)))
    import torch.nn.functional as F

    return Act(lambda x: F.leaky_relu(x, slope))


def _embedding(layer: Any) -> Block:
    cfg = layer.get_config()
    return Embedding(_weights(layer)[0], bool(cfg.get("mask_zero", False)))


CONVERTERS: dict[str, Any] = {
    "Dense": _dense,
    "SimpleRNN": _recurrent("simple"),
    "LSTM": _recurrent("lstm"),
    "GRU": _recurrent("gru"),
    "Embedding": _embedding,
    "Dropout": lambda layer: Identity(),
    "SpatialDropout1D": lambda layer: Identity(),
    "SpatialDropout2D": lambda layer: Identity(),
    "GaussianNoise": lambda layer: Identity(),
    "GaussianDropout": lambda layer: Identity(),
    "Activation": lambda layer: Act(_act(layer)),
    "ReLU": lambda layer: _relu_layer(layer),
    "LeakyReLU": _leaky,
    "BatchNormalization": _batchnorm,
    "Flatten": lambda layer: Flatten(),
    "Reshape": lambda layer: Reshape(tuple(layer.get_config()["target_shape"])),
    "Conv1D": _conv,
    "Conv2D": _conv,
    "MaxPooling1D": _maxpool,
    "MaxPooling2D": _maxpool,
    "AveragePooling1D": _avgpool,
    "AveragePooling2D": _avgpool,
    "GlobalMaxPooling1D": lambda layer: GlobalMaxPool(
        1, bool(layer.get_config().get("keepdims", False))
    ),
    "GlobalMaxPooling2D": lambda layer: GlobalMaxPool(
        2, bool(layer.get_config().get("keepdims", False))
    ),
    "ZeroPadding1D": lambda layer: ZeroPad(_pairs(layer.get_config()["padding"], 1)),
    "ZeroPadding2D": lambda layer: ZeroPad(_pairs(layer.get_config()["padding"], 2)),
    "Cropping1D": lambda layer: Crop(_pairs(layer.get_config()["cropping"], 1)),
    "Cropping2D": lambda layer: Crop(_pairs(layer.get_config()["cropping"], 2)),
    "UpSampling1D": _upsample,
    "UpSampling2D": _upsample,
    "Permute": lambda layer: Permute(tuple(layer.get_config()["dims"])),
    "RepeatVector": lambda layer: RepeatVector(int(layer.get_config()["n"])),
    "Masking": lambda layer: Masking(float(layer.get_config().get("mask_value", 0.0))),
    "Softmax": _softmax,
    "ELU": _elu,
    "PReLU": _prelu,
    "Identity": lambda layer: Identity(),
    "Rescaling": _rescaling,
    "LayerNormalization": _layernorm,
    "Normalization": _normalization,
    "ActivityRegularization": lambda layer: Identity(),
    "AlphaDropout": lambda layer: Identity(),
    "GlobalAveragePooling1D": lambda layer: GlobalAvgPool(
        1, bool(layer.get_config().get("keepdims", False))
    ),
    "GlobalAveragePooling2D": lambda layer: GlobalAvgPool(
        2, bool(layer.get_config().get("keepdims", False))
    ),
}


def _relu_layer(layer: Any) -> Block:
    cfg = layer.get_config()
    top = cfg.get("max_value")
    return Act(
        keras_relu(
            float(cfg.get("negative_slope") or 0.0),
            None if top is None else float(top),
            float(cfg.get("threshold") or 0.0),
        )
    )


def convert_model(model: Any) -> Converted:
    """Check every layer, then convert the stack. Raises :class:`UnsupportedLayer`."""
    check_stack(model)
    chain = convert_stack(model)
    inp = model.inputs[0]
    shape = tuple(None if d is None else int(d) for d in inp.shape)
    dtype = "int64" if "int" in str(inp.dtype) else "float32"
    recurrent = tuple(b for b in chain.blocks if isinstance(b, Recurrent))
    return Converted(
        chain=chain,
        input_shape=shape,
        input_dtype=dtype,
        recurrent=recurrent,
        sequence_output=len(shape) >= 3 and keeps_time_axis(chain),
    )


def keeps_time_axis(chain: Chain) -> bool:
    """Whether the chain's output is still aligned step for step with its input's time axis."""
    aligned = True
    for b in chain.blocks:
        assert isinstance(b, Block)
        if isinstance(b, Recurrent):
            aligned = aligned and b.return_sequences
        else:
            aligned = aligned and bool(b.time_local)
    return aligned


def flat_blocks(chain: Chain) -> Sequence[Block]:
    return list(chain.blocks)  # type: ignore[arg-type]
