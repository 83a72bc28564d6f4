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


def register_onnx_lstm(module: nn.Module, lstm: nn.LSTM) -> None:
    """Buffers ``w``, ``r``, ``b`` on ``module``: a one-layer ``lstm``'s weights in the ONNX
    ``LSTM`` op's layout (gate order i, o, f, c; a leading direction axis), for
    :func:`onnx_lstm_step`. Shared by every step model that serves an LSTM."""
    p = {k: v.detach() for k, v in lstm.named_parameters()}
    module.register_buffer("w", _to_onnx_gates(p["weight_ih_l0"]).unsqueeze(0))
    module.register_buffer("r", _to_onnx_gates(p["weight_hh_l0"]).unsqueeze(0))
    bias = torch.cat([_to_onnx_gates(p["bias_ih_l0"]), _to_onnx_gates(p["bias_hh_l0"])])
    module.register_buffer("b", bias.unsqueeze(0))


def onnx_lstm_step(
    step: nn.Module, inp: torch.Tensor, lengths: torch.Tensor, h: torch.Tensor, c: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """One ONNX ``LSTM`` node over ``inp`` ``[T, B, I]`` with the buffers
    :func:`register_onnx_lstm` put on ``step`` (and its ``hidden`` size): the states
    ``(h', c')`` after each row's ``lengths`` steps."""
    # The weights are read off ``step`` in the call, never bound to local names: the tracer
    # names a graph value after the local holding it, and a local ``w`` would rename the
    # initializer ``w`` to ``w.1`` in an exported file.
    h_new, c_new = _LstmWithLengths.apply(  # type: ignore[no-untyped-call]
        inp, step.w, step.r, step.b, lengths, h, c, step.hidden
    )
    # A zero-length row keeps its state (some runtimes zero Y_h for sequence_lens 0).
    keep = (lengths > 0).view(1, -1, 1)
    return torch.where(keep, h_new, h), torch.where(keep, c_new, c)


class SentimentStep(nn.Module):
    """``(x [B,T] int64, lengths [B] int64, h, c) -> (positive [B,1], h', c')``."""

    embed: nn.Embedding
    head: nn.Linear
    w: torch.Tensor
    r: torch.Tensor
    b: torch.Tensor

    def __init__(self, model: SentimentLSTM) -> None:
        super().__init__()
        self.hidden = model.config.hidden
        self.embed = model.embed
        self.head = model.head
        register_onnx_lstm(self, model.lstm)

    def forward(
        self, x: torch.Tensor, lengths: torch.Tensor, h: torch.Tensor, c: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        emb = self.embed(x).transpose(0, 1)  # [T, B, E]: the ONNX LSTM's default layout
        h_out, c_out = onnx_lstm_step(self, emb, lengths, h, c)
        positive = torch.sigmoid(self.head(h_out[-1]))
        return positive, h_out, c_out


def zero_state(config: SentimentConfig, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    shape = (1, batch, config.hidden)
    return torch.zeros(shape), torch.zeros(shape)


# -- version 2: the LSTM plus a running hashed n-gram term ------------------------------
#
# An incremental NBSVM-style linear model runs beside the LSTM: every token adds the learned
# weight of its unigram, of the bigram it ends and of the trigram it ends to a running sum.
# Bigram and trigram ids are hashed from the token ids with int64 arithmetic, in numpy for
# training (statecast.models.sentiment_ngram) and inside the step graph for serving, by the
# one formula below. The step state carries the sum, the token count and the last two token
# ids (as float32: ids < 2**24 are exact), so n-grams across chunk and message borders
# count exactly as in the whole text. Token id 0 in a "previous" slot means "no token yet".

BIGRAM_MULT = (7919, 104729)  # (previous, current)
TRIGRAM_MULT = (15485863, 7919, 104729)  # (second previous, previous, current)
NGRAM_STATE = 4  # sum, count, second previous token, previous token


def bigram_bucket(p1: Any, t: Any, buckets: int) -> Any:
    """Hashed bigram id; works on numpy arrays and torch tensors of int64 alike."""
    return (p1 * BIGRAM_MULT[0] + t * BIGRAM_MULT[1]) % buckets


def trigram_bucket(p2: Any, p1: Any, t: Any, buckets: int) -> Any:
    return (p2 * TRIGRAM_MULT[0] + p1 * TRIGRAM_MULT[1] + t * TRIGRAM_MULT[2]) % buckets


@dataclass(frozen=True)
class HybridConfig:
    """The LSTM's config plus the n-gram term's table sizes and length exponent."""

    lstm: SentimentConfig
    buckets: int = 1_048_573  # a prime: hashed bigram and trigram tables, each this long
    alpha: float = 0.5  # n-gram logit = sum / count**alpha + bias

    def to_dict(self) -> dict[str, Any]:
        return {"lstm": self.lstm.to_dict(), "buckets": self.buckets, "alpha": self.alpha}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> HybridConfig:
        return cls(
            lstm=SentimentConfig.from_dict(dict(d["lstm"])),
            buckets=int(d["buckets"]),
            alpha=float(d["alpha"]),
        )


class HashedNgrams(nn.Module):
    """The running n-gram term: weights looked up per token, summed into the state."""

    uni: torch.Tensor
    bi: torch.Tensor
    tri: torch.Tensor
    bias: torch.Tensor

    def __init__(self, vocab_size: int, buckets: int, alpha: float) -> None:
        super().__init__()
        self.buckets = buckets
        self.alpha = alpha
        self.register_buffer("uni", torch.zeros(vocab_size))
        self.register_buffer("bi", torch.zeros(buckets))
        self.register_buffer("tri", torch.zeros(buckets))
        self.register_buffer("bias", torch.zeros(()))

    def advance(self, x: torch.Tensor, lengths: torch.Tensor, ng: torch.Tensor) -> torch.Tensor:
        """The state ``[1, B, 4]`` after each row's first ``lengths[b]`` tokens of ``x``."""
        s, n, p2, p1 = ng[0].unbind(-1)
        t_len = x.shape[1]
        # Row b's tokens with its two previous ones in front: [p2, p1, x_0, x_1, ...].
        seq = torch.cat([p2.long().unsqueeze(1), p1.long().unsqueeze(1), x], dim=1)
        q2, q1 = seq[:, :t_len], seq[:, 1 : t_len + 1]
        w = (
            self.uni[x]
            + self.bi[bigram_bucket(q1, x, self.buckets)] * (q1 != 0).float()
            + self.tri[trigram_bucket(q2, q1, x, self.buckets)] * (q2 != 0).float()
        )
        live = (torch.arange(t_len).unsqueeze(0) < lengths.unsqueeze(1)).float()
        s_new = s + (w * live).sum(dim=1)
        n_new = n + lengths.float()
        # Valid tokens are left-aligned, so the last two sit at seq[lengths+1], seq[lengths];
        # a row of length 0 picks its old p1, p2 again.
        last1 = seq.gather(1, (lengths + 1).unsqueeze(1)).squeeze(1).float()
        last2 = seq.gather(1, lengths.unsqueeze(1)).squeeze(1).float()
        return torch.stack([s_new, n_new, last2, last1], dim=-1).unsqueeze(0)

    def logit(self, ng: torch.Tensor) -> torch.Tensor:
        """``[B]``: the running sum normalised by (token count) ** alpha, plus the bias."""
        s, n = ng[0, :, 0], ng[0, :, 1]
        return s / torch.clamp(n, min=1.0) ** self.alpha + self.bias

    def zero_state(self, batch: int) -> torch.Tensor:
        return torch.zeros(1, batch, NGRAM_STATE)


class SentimentHybrid(nn.Module):
    """LSTM logit and n-gram logit, mixed and tempered: ``(l*z_lstm + (1-l)*z_ngram) / T``.

    ``forward`` reads whole padded texts (the reference for parity and evaluation); the
    mix weight ``l`` and temperature ``T`` are fitted on validation after both parts.
    """

    mix: torch.Tensor
    temperature: torch.Tensor

    def __init__(self, config: HybridConfig) -> None:
        super().__init__()
        self.config = config
        self.lstm = SentimentLSTM(config.lstm)
        self.ngrams = HashedNgrams(config.lstm.vocab_size, config.buckets, config.alpha)
        self.register_buffer("mix", torch.tensor(0.5))
        self.register_buffer("temperature", torch.tensor(1.0))

    def parts(
        self, tokens: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(z_lstm, z_ngram)`` ``[B]`` for whole padded texts."""
        z_lstm = self.lstm(tokens, lengths)
        ng = self.ngrams.advance(tokens, lengths, self.ngrams.zero_state(tokens.shape[0]))
        return z_lstm, self.ngrams.logit(ng)

    def combine(self, z_lstm: torch.Tensor, z_ngram: torch.Tensor) -> torch.Tensor:
        return (self.mix * z_lstm + (1 - self.mix) * z_ngram) / self.temperature

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.combine(*self.parts(tokens, lengths))


class HybridStep(nn.Module):
    """``(x, lengths, h, c, ngram) -> (positive [B,1], h', c', ngram')`` for serving."""

    def __init__(self, model: SentimentHybrid) -> None:
        super().__init__()
        self.lstm_step = SentimentStep(model.lstm)
        self.ngrams = model.ngrams
        self.model = model

    def forward(
        self,
        x: torch.Tensor,
        lengths: torch.Tensor,
        h: torch.Tensor,
        c: torch.Tensor,
        ng: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        _, h_out, c_out = self.lstm_step(x, lengths, h, c)
        z_lstm = self.lstm_step.head(h_out[-1]).squeeze(-1)
        ng_out = self.ngrams.advance(x, lengths, ng)
        positive = torch.sigmoid(self.model.combine(z_lstm, self.ngrams.logit(ng_out)))
        return positive.unsqueeze(-1), h_out, c_out, ng_out
