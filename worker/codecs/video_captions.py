"""The frame route with captions: ``caption_every=N`` adds a caption every N frames of a camera.

``frames=video_lstm?caption_every=16`` serves ``video_lstm`` exactly as the plain frame
codec does (:class:`~statecast.worker.codecs.frames.FrameCodec`: same decoding, budgets and
predictions) and, after the waves of a poll, writes a caption for every record that
completes a multiple of N frames of its camera. The frame count is the model's own state
``n`` (it advances exactly once per applied frame, like the LSTM state, so a replayed frame
neither counts twice nor captions twice differently).

Captions come from the decoder model named by ``caption_model`` (default
``video_caption``, kind ``decoder``), which must be listed, with a matching sha256, in the
same manifest as the routed model. The decoder reads a *copy* of the camera's state (the
worker's :class:`~statecast.worker.codecs.base.Finished`), greedily, as batched ONNX steps
across every camera due in the poll (:class:`~statecast.worker.captions.Captioner`); the
stored state is never touched by it.

Prediction of a captioned frame: the frame prediction plus ``"caption": "a sneaker moves
left while the camera is still"`` and ``"frames_seen": N * k``.

Without ``caption_every`` the route gets the plain frame codec: no state copies, no cost.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from statecast.contract.manifest import ManifestError, check_digest, load_manifest
from statecast.contract.spec import ModelSpec
from statecast.worker.captions import Captioner
from statecast.worker.codecs.base import Codec, Finished, StepRunner, positive_int
from statecast.worker.codecs.frames import FrameCodec

CAPTION_OPTIONS = frozenset({"caption_every", "caption_model"})
DEFAULT_CAPTION_MODEL = "video_caption"
COUNTER_STATE = "n"


def frame_codec(spec: ModelSpec, options: Mapping[str, str], model_dir: Path) -> Codec:
    """The frame route's codec: with captions when the route asks for them."""
    if CAPTION_OPTIONS & set(options):
        return CaptioningFrameCodec(spec, options, model_dir)
    return FrameCodec(spec, options, model_dir)


def decoder_route(spec: ModelSpec, options: Mapping[str, str], model_dir: Path) -> Codec:
    """A route to a decoder model is a configuration error, reported at start-up."""
    raise ValueError(
        f"{spec.name} is a {spec.kind} model: it is not routed itself; route its video "
        f"model {spec.preprocess.get('context', {}).get('model', '?')!r} with "
        "caption_every=N instead"
    )


def _decoder_path(name: str, model_dir: Path) -> Path:
    """The decoder's ONNX file, found and digest-checked through the routed model's manifest
    (``model_dir`` is ``<root>/models/onnx``; the manifest is ``<root>/models/manifest.json``)."""
    root = model_dir.parent.parent
    try:
        manifest = load_manifest(model_dir.parent / "manifest.json")
    except ManifestError as exc:
        raise ValueError(str(exc)) from exc
    entry = manifest.get(name)
    if entry is None:
        raise ValueError(f"caption model {name!r} is not in the manifest ({sorted(manifest)})")
    if entry.kind != "decoder":
        raise ValueError(f"caption model {name!r} has kind {entry.kind!r}, not 'decoder'")
    try:
        return check_digest(entry, root)
    except ManifestError as exc:
        raise ValueError(str(exc)) from exc


class CaptioningFrameCodec(FrameCodec):
    def __init__(self, spec: ModelSpec, options: Mapping[str, str], model_dir: Path) -> None:
        super().__init__(
            spec, {k: v for k, v in options.items() if k not in CAPTION_OPTIONS}, model_dir
        )
        self.caption_every = positive_int(options, "caption_every", 16)
        name = options.get("caption_model", DEFAULT_CAPTION_MODEL)
        self.captioner = Captioner.load(_decoder_path(name, model_dir))
        states = {s.name: s for s in spec.states}
        ctx = self.captioner.context_state
        if COUNTER_STATE not in states or ctx not in states:
            raise ValueError(
                f"{spec.name}: captions need the states {COUNTER_STATE!r} and {ctx!r}; "
                f"it has {sorted(states)}"
            )
        if self.captioner.context_model != spec.name:
            raise ValueError(
                f"caption model {name!r} reads the state of {self.captioner.context_model!r}, "
                f"not of {spec.name!r}"
            )
        if states[ctx].layers * states[ctx].hidden != self.captioner.context_size:
            raise ValueError(f"{name}: context size differs from {spec.name}'s state {ctx!r}")
        self._context = ctx

    def generate(self, finished: Sequence[Finished], runner: StepRunner) -> list[dict[str, Any]]:
        """Captions for the records that complete a multiple of ``caption_every`` frames,
        all decoded together; ``{}`` for the others."""
        # A stored state we did not write could hold anything: a non-finite or absurd count
        # captions nothing rather than failing the batch.
        raw = np.array([f.states[COUNTER_STATE].reshape(-1)[0] for f in finished], np.float64)
        ok = np.isfinite(raw) & (raw >= 1) & (raw < 2.0**53)
        counts = np.where(ok, np.rint(np.where(ok, raw, 0)), 0).astype(np.int64).tolist()
        due = [i for i, n in enumerate(counts) if n > 0 and n % self.caption_every == 0]
        out: list[dict[str, Any]] = [{} for _ in finished]
        if not due:
            return out
        contexts = np.stack([finished[i].states[self._context].reshape(-1) for i in due])
        for i, text in zip(due, self.captioner.captions(contexts), strict=True):
            out[i] = {"caption": text, "frames_seen": counts[i]}
        return out
