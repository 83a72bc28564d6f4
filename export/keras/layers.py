"""Keras 3 layers rebuilt as PyTorch blocks from their weights, one converter per layer type.

Every block keeps Keras's own tensor layout (batch first, channels last), so ``Flatten`` and
``Reshape`` order elements exactly as Keras does; convolutions and pooling permute to
PyTorch's channels-first layout around the one op that needs it.

A block's ``forward(x, mask)`` returns ``(y, mask)``: the mask is Keras's time-step mask
(``[B, T]`` bool, from ``Embedding(mask_zero=True)`` or the step's token lengths), carried
through the layers that propagate it and dropped by those that consume the time axis.
Recurrent blocks also take and return their state, so the same block serves both the
whole-window semantics (zero initial state) and the stateful one (state from Redis).

Nothing here imports keras: the converters read plain attributes and numpy weights from
the layer objects that :mod:`statecast.export.keras.graph` hands them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

Mask = Tensor | None
Activation = Callable[[Tensor], Tensor]


class UnsupportedLayer(ValueError):
    """A layer (or one of its settings) that has no exact streaming equivalent here."""


def _hard_sigmoid(x: Tensor) -> Tensor:
    # Keras 3's hard_sigmoid: relu6(x + 3) / 6.
    return torch.clamp(x / 6.0 + 0.5, 0.0, 1.0)


ACTIVATIONS: dict[str, Activation] = {
    "linear": lambda x: x,
    "relu": torch.relu,
    "relu6": lambda x: torch.clamp(x, 0.0, 6.0),
    "sigmoid": torch.sigmoid,
    "hard_sigmoid": _hard_sigmoid,
    "tanh": torch.tanh,
    "softmax": lambda x: torch.softmax(x, dim=-1),
    "log_softmax": lambda x: torch.log_softmax(x, dim=-1),
    "elu": F.elu,
    "selu": F.selu,
    "softplus": F.softplus,
    "softsign": F.softsign,
    "silu": F.silu,
    "swish": F.silu,
    "gelu": F.gelu,  # Keras 3 default: the exact (erf) form
    "exponential": torch.exp,
    "leaky_relu": lambda x: F.leaky_relu(x, 0.2),
    "mish": F.mish,
    "log_sigmoid": F.logsigmoid,
    "hard_silu": lambda x: x * _hard_sigmoid(x),
    "hard_swish": lambda x: x * _hard_sigmoid(x),
    "hard_tanh": lambda x: torch.clamp(x, -1.0, 1.0),
    "celu": F.celu,
    "tanh_shrink": lambda x: x - torch.tanh(x),
}


def activation(name: str, where: str) -> Activation:
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise UnsupportedLayer(f"{where}: activation {name!r} is not supported") from None


def _param(a: np.ndarray[Any, Any]) -> nn.Parameter:
    return nn.Parameter(torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)), False)


class Block(nn.Module):
    """One Keras layer. ``time_local`` is True when it treats every time step on its own."""

    time_local = True
    label = ""  # the Keras layer it came from, for messages: "layer 'x' (Conv1D)"

    def forward(self, x: Tensor, mask: Mask) -> tuple[Tensor, Mask]:
        raise NotImplementedError


class Identity(Block):
    def forward(self, x: Tensor, mask: Mask) -> tuple[Tensor, Mask]:
        return x, mask


class Act(Block):
    def __init__(self, fn: Activation) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: Tensor, mask: Mask) -> tuple[Tensor, Mask]:
        return self.fn(x), mask


class Dense(Block):
    def __init__(
        self, kernel: np.ndarray[Any, Any], bias: np.ndarray[Any, Any] | None, fn: Activation
    ):
        super().__init__()
        self.kernel = _param(kernel)
        self.bias = _param(bias) if bias is not None else None
        self.fn = fn

    def forward(self, x: Tensor, mask: Mask) -> tuple[Tensor, Mask]:
        y = x @ self.kernel
        if self.bias is not None:
            y = y + self.bias
        return self.fn(y), mask


class BatchNorm(Block):
    """Inference batch normalisation over the last axis, folded into one scale and shift."""

    def __init__(self, scale: np.ndarray[Any, Any], shift: np.ndarray[Any, Any]) -> None:
        super().__init__()
        self.scale = _param(scale)
        self.shift = _param(shift)

    def forward(self, x: Tensor, mask: Mask) -> tuple[Tensor, Mask]:
        return x * self.scale + self.shift, mask


class Embedding(Block):
    def __init__(self, table: np.ndarray[Any, Any], mask_zero: bool) -> None:
        super().__init__()
        self.table = _param(table)
        self.mask_zero = mask_zero
        self.vocab = int(table.shape[0])

    def forward(self, x: Tensor, mask: Mask) -> tuple[Tensor, Mask]:
        # Keras raises on an id outside the table; a worker must not, so ids are clamped
        # into range (a tokenizer matched to the model never produces one).
        ids = torch.clamp(x.long(), 0, self.vocab - 1)
        y = self.table[ids]
        if self.mask_zero:
            own = x != 0
            mask = own if mask is None else mask & own
        return y, mask


class Flatten(Block):
    time_local = False

    def forward(self, x: Tensor, mask: Mask) -> tuple[Tensor, Mask]:
        return x.reshape(x.shape[0], -1), None


class Reshape(Block):
    time_local = False

    def __init__(self, target: Sequence[int]) -> None:
        super().__init__()
        self.target = tuple(int(t) for t in target)

    def forward(self, x: Tensor, mask: Mask) -> tuple[Tensor, Mask]:
        return x.reshape((x.shape[0], *self.target)), None


def channels_first(x: Tensor) -> Tensor:
    # Explicit positive axes: movedim(-1, 1) exports a Transpose with a negative perm.
    r = x.dim()
    return x.permute(0, r - 1, *range(1, r - 1))


def channels_last(x: Tensor) -> Tensor:
    r = x.dim()
    return x.permute(0, *range(2, r), 1)


def same_padding(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """TensorFlow/Keras 'same' padding: the odd pixel goes after (bottom/right)."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


class Conv(Block):
    """Conv1D / Conv2D, channels last in and out."""

    time_local = False

    def __init__(
        self,
        kernel: np.ndarray[Any, Any],
        bias: np.ndarray[Any, Any] | None,
        strides: Sequence[int],
        dilation: Sequence[int],
        padding: str,
        groups: int,
        fn: Activation,
    ) -> None:
        super().__init__()
        nd = kernel.ndim - 2
        # Keras [*k, in/groups, out] -> PyTorch [out, in/groups, *k].
        self.weight = _param(np.transpose(kernel, (nd + 1, nd, *range(nd))))
        self.bias = _param(bias) if bias is not None else None
        self.nd = nd
        self.ksize = tuple(int(k) for k in kernel.shape[:nd])
        self.strides = tuple(int(s) for s in strides)
        self.dilation = tuple(int(d) for d in dilation)
        self.padding = padding
        self.groups = groups
        self.fn = fn

    def _pads(self, spatial: Sequence[int]) -> list[int]:
        pads: list[int] = []
        # F.pad takes the last axis first.
        for i in reversed(range(self.nd)):
            if self.padding == "valid":
                pads += [0, 0]
            elif self.padding == "causal":
                pads += [(self.ksize[i] - 1) * self.dilation[i], 0]
            else:
                pads += list(
                    same_padding(spatial[i], self.ksize[i], self.strides[i], self.dilation[i])
                )
        return pads

    def forward(self, x: Tensor, mask: Mask) -> tuple[Tensor, Mask]:
        spatial = [int(s) for s in x.shape[1:-1]]
        h = channels_first(x)
        pads = self._pads(spatial)
        if any(pads):
            h = F.pad(h, pads)
        conv = F.conv1d if self.nd == 1 else F.conv2d
        h = conv(h, self.weight, self.bias, self.strides, 0, self.dilation, self.groups)
        return self.fn(channels_last(h)), None


class _Pool(Block):
    """A Keras pooling layer's window, strides and padding ('valid' or 'same')."""

    time_local = False

    def __init__(self, pool: Sequence[int], strides: Sequence[int], padding: str) -> None:
        super().__init__()
        self.pool = tuple(int(p) for p in pool)
        self.strides = tuple(int(s) for s in strides)
        self.padding = padding


class MaxPool(_Pool):
    def forward(self, x: Tensor, mask: Mask) -> tuple[Tensor, Mask]:
        nd = len(self.pool)
        h = channels_first(x)
        if self.padding == "same":
            spatial = [int(s) for s in x.shape[1:-1]]
            pads: list[int] = []
            for i in reversed(range(nd)):
                pads += list(same_padding(spatial[i], self.pool[i], self.strides[i], 1))
            if any(pads):
                # Padded cells must never win the max (Keras pads with -inf).
                h = F.pad(h, pads, value=-3.0e38)
        pool = F.max_pool1d if nd == 1 else F.max_pool2d
        return channels_last(pool(h, self.pool, self.strides)), None


class AvgPool(_Pool):
    """AveragePooling1D/2D as Keras 3 computes it on the torch backend (what
    ``model.predict`` gives): 'same' padding split evenly is left out of each average (as in
    TensorFlow), but an uneven split pads by repeating the edge and averages the copies."""

    def forward(self, x: Tensor, mask: Mask) -> tuple[Tensor, Mask]:
        nd = len(self.pool)
        h = channels_first(x)
        pool = F.avg_pool1d if nd == 1 else F.avg_pool2d
        sym: list[int] = [0] * nd
        if self.padding == "same":
            spatial = [int(s) for s in x.shape[1:-1]]
            split = [
                keras_torch_padding(spatial[i], self.pool[i], self.strides[i]) for i in range(nd)
            ]
            if all(lo == hi for lo, hi in split):
                sym = [lo for lo, _ in split]
            else:
                pads = [p for i in reversed(range(nd)) for p in split[i]]
                h = F.pad(h, pads, mode="replicate")
        y = pool(h, self.pool, self.strides, sym, count_include_pad=False)
        return channels_last(y), None


def keras_torch_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """Keras's torch backend 'same' split for pooling (stride 1: always kernel - 1)."""
    if stride == 1:
        total = kernel - 1
    else:
        out = (size + stride - 1) // stride
        total = max(0, (out - 1) * stride + kernel - size)
    return total // 2, total - total // 2


class _GlobalPool(Block):
    """A Keras global pooling layer over its ``nd`` spatial (or time) axes."""

    time_local = False

    def __init__(self, nd: int, keepdims: bool) -> None:
        super().__init__()
        self.nd = nd
        self.keepdims = keepdims


class GlobalMaxPool(_GlobalPool):
    def forward(self, x: Tensor, mask: Mask) -> tuple[Tensor, Mask]:
        # Keras's GlobalMaxPooling ignores the mask (it does not support masking).
        dims = tuple(range(1, 1 + self.nd))
        return torch.amax(x, dim=dims, keepdim=self.keepdims), None


class ZeroPad(Block):
    """ZeroPadding1D/2D: ``pads`` is ((before, after), ...) per spatial axis."""

    time_local = False

    def __init__(self, pads: Sequence[Sequence[int]]) -> None:
        super().__init__()
        # F.pad takes the last axis first; the channel axis is last and never padded.
        self.flat = [0, 0] + [int(p) for pair in reversed(pads) for p in pair]

    def forward(self, x: Tensor, mask: Mask) -> tuple[Tensor, Mask]:
        return F.pad(x, self.flat), None


class Crop(Block):
    """Cropping1D/2D: ``crops`` is ((before, after), ...) per spatial axis."""

    time_local = False

    def __init__(self, crops: Sequence[Sequence[int]]) -> None:
        super().__init__()
        self.crops = [(int(a), int(b)) for a, b in crops]

    def forward(self, x: Tensor, mask: Mask) -> tuple[Tensor, Mask]:
        for i, (a, b) in enumerate(self.crops):
            x = x.narrow(1 + i, a, int(x.shape[1 + i]) - a - b)
        return x, None


class UpSample(Block):
    """UpSampling1D/2D, nearest neighbour: every cell repeated ``size`` times per axis."""

    time_local = False

    def __init__(self, size: Sequence[int]) -> None:
        super().__init__()
        self.size = tuple(int(s) for s in size)

    def forward(self, x: Tensor, mask: Mask) -> tuple[Tensor, Mask]:
        for i, s in enumerate(self.size):
            x = torch.repeat_interleave(x, s, dim=1 + i)
        return x, None


class Permute(Block):
    def __init__(self, dims: Sequence[int]) -> None:
        super().__init__()
        self.dims = (0, *(int(d) for d in dims))

    @property
    def time_local(self) -> bool:  # type: ignore[override]
        return self.dims[1] == 1

    def forward(self, x: Tensor, mask: Mask) -> tuple[Tensor, Mask]:
        return x.permute(self.dims), None


class RepeatVector(Block):
    time_local = False

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n

    def forward(self, x: Tensor, mask: Mask) -> tuple[Tensor, Mask]:
        return x.unsqueeze(1).expand(-1, self.n, -1), None


class Masking(Block):
    """Masks the time steps whose features all equal ``value`` (and zeroes them)."""

    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value

    def forward(self, x: Tensor, mask: Mask) -> tuple[Tensor, Mask]:
        own = torch.any(x != self.value, dim=-1)
        y = x * own.unsqueeze(-1).to(x.dtype)
        return y, own if mask is None else mask & own


class Affine(Block):
    """``x * scale + shift``, broadcast from the last axis (Rescaling, Normalization)."""

    def __init__(
        self, scale: np.ndarray[Any, Any], shift: np.ndarray[Any, Any], time_local: bool = True
    ) -> None:
        super().__init__()
        self.scale = _param(scale)
        self.shift = _param(shift)
        self.local = time_local

    @property
    def time_local(self) -> bool:  # type: ignore[override]
        return self.local

    def forward(self, x: Tensor, mask: Mask) -> tuple[Tensor, Mask]:
        return x * self.scale + self.shift, mask


class LayerNorm(Block):
    """LayerNormalization over the last axis (each time step on its own)."""

    def __init__(
        self,
        gamma: np.ndarray[Any, Any] | None,
        beta: np.ndarray[Any, Any] | None,
        epsilon: float,
        rms_scaling: bool,
    ) -> None:
        super().__init__()
        self.gamma = _param(gamma) if gamma is not None else None
        self.beta = _param(beta) if beta is not None else None
        self.epsilon = epsilon
        self.rms_scaling = rms_scaling

    def forward(self, x: Tensor, mask: Mask) -> tuple[Tensor, Mask]:
        mean = x.mean(dim=-1, keepdim=True)
        var = ((x - mean) ** 2).mean(dim=-1, keepdim=True)
        inv = torch.rsqrt(var + self.epsilon)
        # Keras's (deprecated) rms_scaling divides x itself by the std, without centring.
        y = x * inv if self.rms_scaling else (x - mean) * inv
        if self.gamma is not None:
            y = y * self.gamma
        if self.beta is not None and not self.rms_scaling:
            y = y + self.beta
        return y, mask


class PReLU(Block):
    def __init__(self, alpha: np.ndarray[Any, Any]) -> None:
        super().__init__()
        self.alpha = _param(alpha)

    def forward(self, x: Tensor, mask: Mask) -> tuple[Tensor, Mask]:
        return torch.relu(x) - self.alpha * torch.relu(-x), mask


def keras_relu(negative_slope: float, max_value: float | None, threshold: float) -> Activation:
    """keras.activations.relu with its options, term by term as Keras computes it."""

    def fn(x: Tensor) -> Tensor:
        if negative_slope != 0.0 and max_value is None and threshold == 0.0:
            return F.leaky_relu(x, negative_slope)
        neg = torch.relu(threshold - x) if threshold != 0.0 else torch.relu(-x)
        y = x * (x > threshold).to(x.dtype) if threshold != 0.0 else torch.relu(x)
        if max_value is not None:
            y = torch.clamp(y, 0.0, max_value)
        if negative_slope != 0.0:
            y = y - negative_slope * neg
        return y

    return fn


class GlobalAvgPool(_GlobalPool):
    def forward(self, x: Tensor, mask: Mask) -> tuple[Tensor, Mask]:
        dims = tuple(range(1, 1 + self.nd))
        if self.nd == 1 and mask is not None:
            # Keras averages over the unmasked steps only.
            w = mask.to(x.dtype).unsqueeze(-1)
            y = (x * w).sum(dim=1, keepdim=self.keepdims) / w.sum(dim=1, keepdim=self.keepdims)
            return y, None
        return x.mean(dim=dims, keepdim=self.keepdims), None


class Chain(Block):
    """A linear stack of blocks (a Sequential model, or the inside of TimeDistributed)."""

    def __init__(self, blocks: Sequence[Block]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)

    @property
    def time_local(self) -> bool:  # type: ignore[override]
        return all(b.time_local for b in self.blocks)

    def forward(self, x: Tensor, mask: Mask) -> tuple[Tensor, Mask]:
        for b in self.blocks:
            x, mask = b(x, mask)
        return x, mask


class TimeDistributed(Block):
    """Apply ``inner`` to every time step: fold time into the batch and back."""

    def __init__(self, inner: Block) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: Tensor, mask: Mask) -> tuple[Tensor, Mask]:
        b, t = x.shape[0], x.shape[1]
        y, _ = self.inner(x.reshape((b * t, *x.shape[2:])), None)
        return y.reshape((b, t, *y.shape[1:])), mask


class Recurrent(Block):
    """SimpleRNN, LSTM or GRU over ``[B, T, F]``, Keras's equations and gate order.

    ``run`` takes the initial state (``[B, units]`` per tensor: ``h``, plus ``c`` for
    LSTM) and returns the output, the mask and the final state. A masked step keeps the
    state and repeats the previous output (zeros instead with ``zero_output_for_mask``).
    """

    def __init__(
        self,
        cell: str,
        units: int,
        kernel: np.ndarray[Any, Any],
        recurrent: np.ndarray[Any, Any],
        bias: np.ndarray[Any, Any] | None,
        act: Activation,
        rec_act: Activation,
        return_sequences: bool,
        reset_after: bool = True,
        zero_output_for_mask: bool = False,
    ) -> None:
        super().__init__()
        self.cell = cell
        self.units = units
        self.kernel = _param(kernel)
        self.recurrent = _param(recurrent)
        gates = kernel.shape[1]
        if bias is None:
            bias = np.zeros((2, gates) if cell == "gru" and reset_after else (gates,), np.float32)
        if cell == "gru" and reset_after:
            self.in_bias = _param(bias[0])
            self.rec_bias: nn.Parameter | None = _param(bias[1])
        else:
            self.in_bias = _param(bias)
            self.rec_bias = None
        self.act = act
        self.rec_act = rec_act
        self.return_sequences = return_sequences
        self.reset_after = reset_after
        self.zero_output_for_mask = zero_output_for_mask

    @property
    def state_names(self) -> tuple[str, ...]:
        return ("h", "c") if self.cell == "lstm" else ("h",)

    def forward(self, x: Tensor, mask: Mask) -> tuple[Tensor, Mask]:
        zeros = x.new_zeros((x.shape[0], self.units))
        y, mask, _ = self.run(x, mask, [zeros for _ in self.state_names])
        return y, mask

    def _step(self, xp: Tensor, state: list[Tensor]) -> list[Tensor]:
        u = self.units
        h = state[0]
        if self.cell == "simple":
            return [self.act(xp + h @ self.recurrent)]
        if self.cell == "lstm":
            z = xp + h @ self.recurrent
            i = self.rec_act(z[:, :u])
            f = self.rec_act(z[:, u : 2 * u])
            c = f * state[1] + i * self.act(z[:, 2 * u : 3 * u])
            o = self.rec_act(z[:, 3 * u :])
            return [o * self.act(c), c]
        if self.reset_after:
            rec = h @ self.recurrent
            if self.rec_bias is not None:
                rec = rec + self.rec_bias
            zg = self.rec_act(xp[:, :u] + rec[:, :u])
            r = self.rec_act(xp[:, u : 2 * u] + rec[:, u : 2 * u])
            hh = self.act(xp[:, 2 * u :] + r * rec[:, 2 * u :])
        else:
            rz = h @ self.recurrent[:, : 2 * u]
            zg = self.rec_act(xp[:, :u] + rz[:, :u])
            r = self.rec_act(xp[:, u : 2 * u] + rz[:, u:])
            hh = self.act(xp[:, 2 * u :] + (r * h) @ self.recurrent[:, 2 * u :])
        return [zg * h + (1.0 - zg) * hh]

    def run(self, x: Tensor, mask: Mask, state: list[Tensor]) -> tuple[Tensor, Mask, list[Tensor]]:
        # The input projection of every step at once; only the recurrence is sequential.
        xp = x @ self.kernel + self.in_bias
        out = state[0] if not self.zero_output_for_mask else torch.zeros_like(state[0])
        prev = state[0]
        outs: list[Tensor] = []
        for t in range(int(x.shape[1])):
            new = self._step(xp[:, t], state)
            if mask is None:
                state = new
                out = new[0]
            else:
                keep = mask[:, t].unsqueeze(-1)
                state = [torch.where(keep, n, s) for n, s in zip(new, state, strict=True)]
                filler = torch.zeros_like(new[0]) if self.zero_output_for_mask else prev
                out = torch.where(keep, new[0], filler)
            prev = out
            outs.append(out)
        if self.return_sequences:
            return torch.stack(outs, dim=1), mask, state
        return out, None, state
