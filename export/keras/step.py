"""Step modules for converted Keras stacks: the two streaming semantics plus stateless.

What the worker feeds as ``x`` depends on the kind (see worker/codecs): raw feature rows
``[B, F]`` (forecast), grey frames ``[B, 1, H, W]`` in 0-255 (classify, video), padded
token ids ``[B, T]`` with ``lengths`` ``[B]`` (sentiment). :class:`Adapter` turns that into
what the Keras model saw for one time step (normalised features, scaled ``[H, W, 1]``
images) and maps the model's output back (forecast outputs into real units).

- :class:`WindowStep`: state ``window`` ``[1, B, W*F]`` (the last W adapted inputs, oldest
  first, zeros before the stream began) and ``count`` ``[1, B, 1]`` (events seen, capped at
  W). Each event shifts itself in and runs the whole window model, so the prediction is
  ``model.predict`` on that window; the output ``warming_up`` is 1 until W events arrived
  (the prediction is then on a zero-padded window).
- :class:`StatefulStep`: state ``h<i>`` (and ``c<i>`` for LSTM) of the i-th recurrent
  layer, ``[1, B, units]``; each event is one time step (a text chunk is several).
- :class:`StatelessStep`: no state; the model runs on each input alone (``classify``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from statecast.export.keras.layers import Chain, Mask, Recurrent


@dataclass(frozen=True)
class Adapter:
    """How the worker's ``x`` becomes one Keras time step, and the output real units."""

    step_shape: tuple[int, ...]  # one time step as Keras sees it, without batch/time axes
    input_mean: tuple[float, ...] = ()
    input_std: tuple[float, ...] = ()
    output_mean: tuple[float, ...] = ()
    output_std: tuple[float, ...] = ()
    pixel_scale: float | None = None  # frames: multiply the 0-255 pixels by this
    channels_first: bool = False  # colour frames come [B, C, H, W]; Keras wants [H, W, C]
    select: int | None = None  # serve this output column alone (a 2-class softmax's positive)

    def features(self, x: Tensor) -> Tensor:
        """``x`` of one event, ``[B, ...]`` -> ``[B, *step_shape]``."""
        if self.pixel_scale is not None:
            x = x * self.pixel_scale
        if self.input_mean:
            x = (x - torch.tensor(self.input_mean)) / torch.tensor(self.input_std)
        if self.channels_first:
            x = x.permute(0, 2, 3, 1)
        return x.reshape((x.shape[0], *self.step_shape))

    def output(self, y: Tensor) -> Tensor:
        if self.select is not None:
            y = y[..., self.select : self.select + 1]
        if self.output_mean:
            y = y * torch.tensor(self.output_std) + torch.tensor(self.output_mean)
        return y


class WindowStep(nn.Module):
    def __init__(self, chain: Chain, adapter: Adapter, window: int, sequence: bool) -> None:
        super().__init__()
        self.chain = chain
        self.adapter = adapter
        self.window = window
        self.sequence = sequence  # the output is per time step: this event's is the last

    def forward(self, x: Tensor, win: Tensor, count: Tensor) -> tuple[Tensor, ...]:
        b = x.shape[0]
        v = self.adapter.features(x).reshape(b, 1, -1)
        buf = torch.cat([win[0].reshape(b, self.window, -1)[:, 1:], v], dim=1)
        y, _ = self.chain(buf.reshape((b, self.window, *self.adapter.step_shape)), None)
        if self.sequence:
            y = y[:, -1]
        seen = torch.clamp(count + 1.0, max=float(self.window))
        warming = (seen[0] < float(self.window)).to(torch.float32)
        return self.adapter.output(y), warming, buf.reshape(1, b, -1), seen


class StatefulStep(nn.Module):
    """Each call advances every recurrent layer by the call's time steps.

    ``chunk`` > 0 means token input ``[B, T]`` plus ``lengths``: the tokens are padded (or
    cut) to ``chunk`` steps inside the graph so the recurrence unrolls to a fixed length,
    and steps at or beyond a row's length are masked (they keep the state).
    """

    def __init__(self, chain: Chain, adapter: Adapter, chunk: int = 0) -> None:
        super().__init__()
        self.chain = chain
        self.adapter = adapter
        self.chunk = chunk
        self.names = [
            (i, n)
            for i, b in enumerate(chain.blocks)
            if isinstance(b, Recurrent)
            for n in b.state_names
        ]

    def _inputs(self, x: Tensor, lengths: Tensor | None) -> tuple[Tensor, Mask]:
        if lengths is None:
            return self.adapter.features(x).unsqueeze(1), None
        # A zero column per chunk position, appended then cut: a fixed-length [B, chunk]
        # whatever the wave's T (the exporter traces one T; shapes must not depend on it).
        pad = (x[:, :1] * 0).expand(-1, self.chunk)
        tokens = torch.cat([x, pad], dim=1)[:, : self.chunk]
        steps = torch.arange(self.chunk).unsqueeze(0)
        return tokens, steps < lengths.unsqueeze(1)

    def run(
        self, x: Tensor, lengths: Tensor | None, states: tuple[Tensor, ...]
    ) -> tuple[Tensor, list[Tensor]]:
        h, mask = self._inputs(x, lengths)
        new_states: list[Tensor] = []
        k = 0
        has_time = True
        for block in self.chain.blocks:
            if isinstance(block, Recurrent):
                n = len(block.state_names)
                init = [s[0] for s in states[k : k + n]]
                h, mask, final = block.run(h, mask, init)
                new_states += [s.unsqueeze(0) for s in final]
                k += n
                has_time = block.return_sequences
            else:
                h, mask = block(h, mask)
        if has_time:
            h = h[:, -1]
        return self.adapter.output(h), new_states


class StatefulFrameStep(StatefulStep):
    def forward(self, x: Tensor, *states: Tensor) -> tuple[Tensor, ...]:
        y, new = self.run(x, None, states)
        return (y, *new)


class StatefulTokenStep(StatefulStep):
    def forward(self, x: Tensor, lengths: Tensor, *states: Tensor) -> tuple[Tensor, ...]:
        y, new = self.run(x, lengths, states)
        # A row with no tokens in this wave (lengths 0) keeps its state exactly.
        return (y, *new)


class StatelessStep(nn.Module):
    def __init__(self, chain: Chain, adapter: Adapter) -> None:
        super().__init__()
        self.chain = chain
        self.adapter = adapter

    def forward(self, x: Tensor) -> Tensor:
        y, _ = self.chain(self.adapter.features(x), None)
        return self.adapter.output(y)
