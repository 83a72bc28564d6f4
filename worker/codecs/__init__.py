"""Per-kind codecs: how records of one model kind become step inputs and predictions.

The worker core is kind-agnostic; ``codec_for(spec, options)`` picks the codec by
``spec.kind``. Codecs are imported lazily so a forecast-only worker never imports an image
or tokenizer library.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from pathlib import Path
from typing import cast

from statecast.contract.spec import ModelSpec
from statecast.worker.codecs.base import Codec

CODECS: dict[str, str] = {
    "forecast": "statecast.worker.codecs.forecast:ForecastCodec",
    "sentiment": "statecast.worker.codecs.text:TextCodec",
    # The frame codec, or with route option caption_every its captioning subclass.
    "video": "statecast.worker.codecs.video_captions:frame_codec",
    # A per-frame classifier (often stateless) reads frames exactly like the video route.
    "classify": "statecast.worker.codecs.frames:FrameCodec",
    # A caption decoder runs beside its video model (caption_every), never on a route.
    "decoder": "statecast.worker.codecs.video_captions:decoder_route",
    # A next-byte text model: top-k next characters plus a seeded continuation per record.
    "generate": "statecast.worker.codecs.generate:GenerateCodec",
}


def codec_for(spec: ModelSpec, options: Mapping[str, str], model_dir: Path) -> Codec:
    """Build the codec for ``spec``; ``model_dir`` is where its artefacts (tokenizer) live."""
    module_name, _, class_name = CODECS[spec.kind].partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    return cast(Codec, cls(spec, options, model_dir))
