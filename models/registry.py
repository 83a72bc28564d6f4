"""Every trainable, exportable model, by name, as import strings resolved lazily.

``statecast train|export|models verify`` look a model up here. The functions are named by
``"module:function"`` and imported only when used, so verifying one model never imports
another model's data or training code. Add one entry per model:

- ``train``: ``(**kwargs) -> Path`` of the checkpoint written (kwargs are plain values such
  as ``epochs=3``, never an argparse namespace; every one optional). ``statecast train``
  passes ``epochs``, ``seed``, ``max_seconds`` and ``progress`` when given on its command
  line, and any ``--set key=value``.
- ``export``: ``() -> ManifestEntry``; writes ``models/onnx/<name>.onnx`` from the
  checkpoint and upserts the manifest entry.
- ``parity``: ``() -> float``, the max abs difference between the shipped ONNX step model
  run T times carrying state and the PyTorch model over the whole sequence. It may accept
  an optional keyword ``onnx_path: Path`` to check another copy of the file; ``models
  verify`` passes it when the function's signature has it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from statecast.models.trainer import import_object


@dataclass(frozen=True)
class ModelRecipe:
    name: str
    train: str  # "module:function", (argparse-free kwargs) -> Path of checkpoint
    export: str  # "module:function", () -> ManifestEntry (writes ONNX + manifest)
    parity: str  # "module:function", () -> float max abs diff (used by models verify)

    def resolve(self, which: str) -> Callable[..., Any]:
        """The function behind ``train``, ``export`` or ``parity``, imported now."""
        if which not in ("train", "export", "parity"):
            raise ValueError(f"no such recipe step {which!r}")
        return cast(Callable[..., Any], import_object(getattr(self, which)))


RECIPES: dict[str, ModelRecipe] = {
    "sensor_lstm": ModelRecipe(
        name="sensor_lstm",
        train="statecast.models.forecast_sensor:train_sensor_lstm",
        export="statecast.export.forecast_quantile_export:export_sensor_lstm",
        parity="statecast.export.forecast_quantile_export:parity_sensor_lstm",
    ),
    "sensor_rnn": ModelRecipe(
        name="sensor_rnn",
        train="statecast.models.forecast_sensor:train_sensor_rnn",
        export="statecast.export.forecast_quantile_export:export_sensor_rnn",
        parity="statecast.export.forecast_quantile_export:parity_sensor_rnn",
    ),
    "price_gru": ModelRecipe(
        name="price_gru",
        train="statecast.models.forecast_price:train_price_vol",
        export="statecast.export.forecast_export:export_price_gru",
        parity="statecast.export.forecast_export:parity_price_gru",
    ),
    "video_lstm": ModelRecipe(
        name="video_lstm",
        train="statecast.models.video_train:train_video_lstm",
        export="statecast.export.video_export:export_video_lstm",
        parity="statecast.export.video_export:parity_video_lstm",
    ),
    "video_caption": ModelRecipe(
        name="video_caption",
        train="statecast.models.caption_train:train_video_caption",
        export="statecast.export.caption_export:export_video_caption",
        parity="statecast.export.caption_export:parity_video_caption",
    ),
    "frame_cnn": ModelRecipe(
        name="frame_cnn",
        train="statecast.export.keras.frame_cnn:train",
        export="statecast.export.keras.frame_cnn:export",
        parity="statecast.export.keras.frame_cnn:parity",
    ),
    "sentiment_lstm": ModelRecipe(
        name="sentiment_lstm",
        train="statecast.models.sentiment_train:train_sentiment_lstm",
        export="statecast.export.sentiment_export:export_sentiment_lstm",
        parity="statecast.export.sentiment_export:parity_sentiment_lstm",
    ),
    "char_lstm": ModelRecipe(
        name="char_lstm",
        train="statecast.models.charrnn_train:train_char_lstm",
        export="statecast.export.charrnn_export:export_char_lstm",
        parity="statecast.export.charrnn_export:parity_char_lstm",
    ),
    "gan_demand": ModelRecipe(
        name="gan_demand",
        train="statecast.models.gan_train:train_gan_demand",
        export="statecast.export.gan_export:export_gan_demand",
        parity="statecast.export.gan_export:parity_gan_demand",
    ),
}


def get_recipe(name: str) -> ModelRecipe:
    try:
        return RECIPES[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; known: {sorted(RECIPES)}") from None
