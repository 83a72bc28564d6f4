"""The sentiment model: Embedding -> unidirectional LSTM -> sigmoid, and its step form.

:class:`SentimentLSTM` reads whole (padded) texts and scores the state after each text's
last real token. :class:`SentimentStep` is the same network cut into steps for serving:
one step consumes a chunk of token ids per stream, ``x`` ``[B, T]`` with per-row
``lengths``, carries the LSTM state (``h``, ``c``) and scores it. Padding never moves the
state: a row advances over its first ``lengths[b]`` tokens only.

In ONNX the recurrence is the standard ``LSTM`` operator with ``sequence_lens``, whose
``Y_h``/``Y_c`` are each row's state at its own last valid token, so one graph serves
chunks of any length mixed in one batch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence


@dataclass(frozen=True)
class SentimentConfig:
    vocab_size: int
    embed_dim: int = 64
    hidden: int = 128
    pad_id: int = 0
    dropout: float = 0.3

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SentimentConfig:
        return cls(**d)


class SentimentLSTM(nn.Module):
    def __init__(self, config: SentimentConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.embed_dim, padding_idx=config.pad_id)
        self.drop = nn.Dropout(config.dropout)
        self.lstm = nn.LSTM(config.embed_dim, config.hidden, batch_first=True)
        self.head = nn.Linear(config.hidden, 1)

    def final_state(
        self,
        tokens: torch.Tensor,
        lengths: torch.Tensor,
        state: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(h, c)`` ``[1, B, H]`` after each row's last real token (lengths >= 1)."""
        emb = self.drop(self.embed(tokens))
        packed = pack_padded_sequence(emb, lengths.cpu(), batch_first=True, enforce_sorted=False)
        _, (h, c) = self.lstm(packed, state)
        return h, c

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Logits ``[B]`` for padded texts ``[B, T]`` with true ``lengths`` ``[B]``."""
        h, _ = self.final_state(tokens, lengths)
        logits: torch.Tensor = self.head(self.drop(h[-1])).squeeze(-1)
        return logits


class _LstmWithLengths(torch.autograd.Function):
    """One LSTM layer over ``[T, B, I]`` honouring per-row lengths.

    Eager mode computes it with masking (exact, used only for tracing and tests); the
    exported graph is one ONNX ``LSTM`` node with ``sequence_lens``. Weights arrive in
    ONNX gate order (i, o, f, c).
    """

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        w: torch.Tensor,
        r: torch.Tensor,
        b: torch.Tensor,
        lengths: torch.Tensor,
        h0: torch.Tensor,
        c0: torch.Tensor,
        hidden: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        h, c = h0[0], c0[0]
        wb, rb = b[0, : 4 * hidden], b[0, 4 * hidden :]
        for t in range(x.shape[0]):
            gates = x[t] @ w[0].T + wb + h @ r[0].T + rb
            i, o, f, g = gates.chunk(4, dim=-1)
            c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h_new = torch.sigmoid(o) * torch.tanh(c_new)
            live = (lengths > t).unsqueeze(-1)
            h = torch.where(live, h_new, h)
            c = torch.where(live, c_new, c)
        return h.unsqueeze(0), c.unsqueeze(0)

    @staticmethod
    def symbolic(
        g: Any,
        x: Any,
        w: Any,
        r: Any,
        b: Any,
        lengths: Any,
        h0: Any,
        c0: Any,
        hidden: int,
    ) -> tuple[Any, Any]:
        seq_lens = g.op("Cast", lengths, to_i=6)  # TensorProto.INT32, as the LSTM op requires
        _, y_h, y_c = g.op("LSTM", x, w, r, b, seq_lens, h0, c0, hidden_size_i=hidden, outputs=3)
        return y_h, y_c


def _to_onnx_gates(t: torch.Tensor) -> torch.Tensor:
    """PyTorch stacks gates (i, f, g, o); ONNX wants (i, o, f, c)."""
    i, f, g, o = t.chunk(4, dim=0)
    return torch.cat([i, o, f, g], dim=0)


class SentimentStep(nn.Module):
    """``(x [B,T] int64, lengths [B] int64, h, c) -> (positive [B,1], h', c')``."""

    embed: nn.Embedding
    head: nn.Linear
    w: torch.Tensor
    r: torch.Tensor
    b: torch.Tensor

    def __init__(self, model: SentimentLSTM) -> None:
        super().__init__()
        p = {k: v.detach() for k, v in model.lstm.named_parameters()}
        self.hidden = model.config.hidden
        self.embed = model.embed
        self.head = model.head
        self.register_buffer("w", _to_onnx_gates(p["weight_ih_l0"]).unsqueeze(0))
        self.register_buffer("r", _to_onnx_gates(p["weight_hh_l0"]).unsqueeze(0))
        bias = torch.cat([_to_onnx_gates(p["bias_ih_l0"]), _to_onnx_gates(p["bias_hh_l0"])])
        self.register_buffer("b", bias.unsqueeze(0))

    def forward(
        self, x: torch.Tensor, lengths: torch.Tensor, h: torch.Tensor, c: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        emb = self.embed(x).transpose(0, 1)  # [T, B, E]: the ONNX LSTM's default layout
        h_new, c_new = _LstmWithLengths.apply(  # type: ignore[no-untyped-call]
            emb, self.w, self.r, self.b, lengths, h, c, self.hidden
        )
        # A zero-length row keeps its state (some runtimes zero Y_h for sequence_lens 0).
        keep = (lengths > 0).view(1, -1, 1)
        h_out = torch.where(keep, h_new, h)
        c_out = torch.where(keep, c_new, c)
        positive = torch.sigmoid(self.head(h_out[-1]))
        return positive, h_out, c_out


def zero_state(config: SentimentConfig, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    shape = (1, batch, config.hidden)
    return torch.zeros(shape), torch.zeros(shape)
