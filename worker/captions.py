"""Greedy captions from a decoder step model (kind ``decoder``), batched across cameras.

:class:`Captioner` holds the ``video_caption`` ONNX session. :meth:`Captioner.captions`
takes the contexts of every caption due in a poll (copies of the cameras' video states,
``[B, C]``) and writes all of them together: one ``session.run`` per word for the whole
batch, through :func:`statecast.worker.generation.decode` at temperature 0 (greedy, so no
seed matters and a replay writes the same words). Rows that emit ``<eos>`` leave the batch.

The context rides through ``decode`` as one more state (batch on axis 1), so it follows its
row when finished rows are dropped; the decoder graph reads it as its ``context`` input.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from statecast.contract.spec import ModelSpec, SpecError
from statecast.worker.generation import decode, trim

Array = npt.NDArray[Any]
_CONTEXT = "__context"


class Captioner:
    def __init__(self, session: Any, spec: ModelSpec) -> None:
        if spec.kind != "decoder":
            raise SpecError(f"{spec.name}: a captioner needs a decoder model, not {spec.kind}")
        pre = spec.preprocess
        self.spec = spec
        self.vocab: tuple[str, ...] = tuple(str(w) for w in pre["vocab"])
        self.bos = int(pre["bos"])
        self.eos = int(pre["eos"])
        self.max_words = int(pre["max_words"])
        self.context_model = str(pre["context"]["model"])
        self.context_state = str(pre["context"]["state"])
        self.context_size = int(pre["context"]["size"])
        self._session = session
        self._out = ["logits", *(s.output_name for s in spec.states)]

    @classmethod
    def load(cls, path: Path, threads: int = 1) -> Captioner:
        """A CPU session for the decoder at ``path`` (its digest is the caller's to check)."""
        from statecast.worker.inference import build_session

        sess = build_session(path, "cpu", intra_op_threads=threads)
        meta = dict(sess.get_modelmeta().custom_metadata_map)
        return cls(sess, ModelSpec.from_metadata(meta))

    def _step(self, tokens: Array, states: Mapping[str, Array]) -> tuple[Array, dict[str, Array]]:
        feeds: dict[str, Array] = {
            "x": np.ascontiguousarray(tokens.reshape(-1, 1)),
            "context": np.ascontiguousarray(states[_CONTEXT][0]),
        }
        for s in self.spec.states:
            feeds[s.input_name] = np.ascontiguousarray(states[s.name])
        logits, *nxt = self._session.run(self._out, feeds)
        out = {s.name: a for s, a in zip(self.spec.states, nxt, strict=True)}
        out[_CONTEXT] = states[_CONTEXT]
        return logits, out

    def token_ids(self, contexts: Array) -> list[list[int]]:
        """Greedy word ids (without ``<eos>``) for each row of ``contexts`` ``[B, C]``."""
        ctx = np.asarray(contexts, dtype=np.float32)
        if ctx.ndim != 2 or ctx.shape[1] != self.context_size:
            raise ValueError(f"contexts must be [B, {self.context_size}], got {ctx.shape}")
        b = ctx.shape[0]
        if b == 0:
            return []
        start: dict[str, Array] = {
            s.name: np.zeros((s.layers, b, s.hidden), np.float32) for s in self.spec.states
        }
        start[_CONTEXT] = ctx[None]
        tokens = decode(
            self._step,
            np.full(b, self.bos, np.int64),
            start,
            self.max_words,
            temperature=0.0,
            top_k=0,
            seeds=[0] * b,  # greedy: the draws are never used
            stop_token=self.eos,
        )
        return trim(tokens, self.eos)

    def captions(self, contexts: Array) -> list[str]:
        """One caption per row of ``contexts``."""
        return [
            " ".join(self.vocab[i] for i in row if 0 <= i < len(self.vocab))
            for row in self.token_ids(contexts)
        ]
