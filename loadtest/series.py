"""Real series to replay, pre-rendered so the generator only concatenates bytes per event.

A :class:`ReplaySeries` is one real series (the elecdemand sensor, one ticker) in the event
format of the team table: ``{"stream", "ts", "values": {...}}``. The ``"values"`` part of
every row is rendered once with orjson (exact float text); the generator joins a stream
prefix, the timestamp and that part per event.

A stream that reaches the end of its series wraps around to the start, and its timestamps
move on by one span per lap, so a stream's ``ts`` only ever increases. The sensor's span is
a whole number of weeks: the day-ahead models derive half-hour of day and day of week from
``ts``, and a 365-day lap would shift every replayed weekday by one against its data.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import orjson

# The model each replayed topic feeds, and the feature columns it expects, in order.
SENSOR_TOPIC = "sensor"
PRICES_TOPIC = "prices"
FRAMES_TOPIC = "frames"
TEXT_TOPIC = "text"
MESSAGE_INTERVAL_MS = 60_000  # one review a minute per conversation
WEEK_MS = 7 * 24 * 3600 * 1000
FRAME_INTERVAL_MS = 40  # a 25 frames/s camera
SENSOR_FEATURES: tuple[str, ...] = ("demand", "temperature", "workday")
PRICE_FEATURES: tuple[str, ...] = ("log_return",)
# The feature each forecaster predicts one step ahead (for the demo's forecast-vs-actual).
TARGET_FEATURE = {SENSOR_TOPIC: "demand", PRICES_TOPIC: "log_return"}


@dataclass(frozen=True)
class ReplaySeries:
    """One real series: ``ts`` epoch ms (increasing), ``values`` rows x features."""

    name: str
    features: tuple[str, ...]
    ts: npt.NDArray[np.int64]
    values: npt.NDArray[np.float64]
    integer_features: frozenset[str] = frozenset()
    # Laps move ts on by a multiple of this (0: by the covered time plus one step).
    lap_align_ms: int = 0
    # The whole record value is the rendered row (an encoded frame), not a JSON event.
    raw = False

    def __post_init__(self) -> None:
        if len(self.ts) < 2 or len(self.ts) != len(self.values):
            raise ValueError(f"series {self.name}: needs >= 2 rows and one ts per row")
        if self.values.shape[1] != len(self.features):
            raise ValueError(f"series {self.name}: {self.values.shape[1]} columns for features")

    def __len__(self) -> int:
        return len(self.ts)

    @functools.cached_property
    def span_ms(self) -> int:
        """How far ``ts`` moves on per lap: the covered time plus one typical step."""
        step = int(np.median(np.diff(self.ts)))
        span = int(self.ts[-1] - self.ts[0]) + step
        if self.lap_align_ms > 0:
            span = -(-span // self.lap_align_ms) * self.lap_align_ms
        return span

    def render_values(self) -> list[bytes]:
        """Per row: ``,"values":{...}}``, the tail of an event after its timestamp."""
        cols = []
        for j, name in enumerate(self.features):
            col = self.values[:, j]
            cols.append(col.astype(np.int64).tolist() if name in self.integer_features else col)
        rows: list[bytes] = []
        for i in range(len(self)):
            vals = {name: _number(cols[j][i]) for j, name in enumerate(self.features)}
            rows.append(b',"values":' + orjson.dumps(vals) + b"}")
        return rows

    def event_ts(self, row: int, lap: int) -> int:
        return int(self.ts[row]) + lap * self.span_ms

    def locate(self, ts: int) -> int | None:
        """The row an event timestamp came from (any lap), or None."""
        span = self.span_ms
        base = int(self.ts[0]) + (ts - int(self.ts[0])) % span
        idx = int(np.searchsorted(self.ts, base))
        return idx if idx < len(self.ts) and int(self.ts[idx]) == base else None


def _number(v: object) -> float | int:
    return v if isinstance(v, int) else float(v)  # type: ignore[arg-type]


def sensor_series() -> list[ReplaySeries]:
    """fpp2 elecdemand: one real multivariate sensor series (17,520 half-hours of 2014)."""
    from statecast.models.datasets import load_elecdemand

    frame = load_elecdemand()
    return [
        ReplaySeries(
            name="elecdemand",
            features=SENSOR_FEATURES,
            ts=frame["ts"].to_numpy(dtype=np.int64),
            values=frame[list(SENSOR_FEATURES)].to_numpy(dtype=np.float64),
            integer_features=frozenset({"workday"}),
            lap_align_ms=WEEK_MS,
        )
    ]


def price_series(tickers: Sequence[str] | None = None) -> list[ReplaySeries]:
    """Daily close-to-close log returns of each ticker the data packages ship."""
    from statecast.models.datasets import load_stock_prices

    out = []
    for ticker, frame in load_stock_prices(tickers).items():
        out.append(
            ReplaySeries(
                name=ticker,
                features=PRICE_FEATURES,
                ts=frame["ts"].to_numpy(dtype=np.int64),
                values=frame[list(PRICE_FEATURES)].to_numpy(dtype=np.float64),
            )
        )
    return out


@dataclass(frozen=True)
class FrameSeries:
    """Real images as one camera's frames: the record value is the PNG itself, the key the
    camera id (the frames route's event format)."""

    name: str
    payloads: tuple[bytes, ...]
    raw = True

    def __len__(self) -> int:
        return len(self.payloads)

    @functools.cached_property
    def ts(self) -> npt.NDArray[np.int64]:
        return FRAME_INTERVAL_MS * np.arange(len(self.payloads), dtype=np.int64)

    @property
    def span_ms(self) -> int:
        return FRAME_INTERVAL_MS * len(self.payloads)

    def render_values(self) -> list[bytes]:
        return list(self.payloads)


def frame_series(images: int = 2000) -> list[FrameSeries]:
    """Fashion-MNIST test images (Debian ``dataset-fashion-mnist``) as 28x28 grey PNGs."""
    import io

    from PIL import Image

    from statecast.models.video_data import load_fashion_mnist

    pixels = load_fashion_mnist("t10k")[:images]
    payloads = []
    for img in pixels:
        buf = io.BytesIO()
        Image.fromarray(img, mode="L").save(buf, format="PNG")
        payloads.append(buf.getvalue())
    return [FrameSeries("fashion-mnist-t10k", tuple(payloads))]


@dataclass(frozen=True)
class TextSeries:
    """Real reviews as one conversation's messages: ``{"stream", "ts", "text"}`` events."""

    name: str
    texts: tuple[str, ...]
    raw = False

    def __len__(self) -> int:
        return len(self.texts)

    @functools.cached_property
    def ts(self) -> npt.NDArray[np.int64]:
        return MESSAGE_INTERVAL_MS * np.arange(len(self.texts), dtype=np.int64)

    @property
    def span_ms(self) -> int:
        return MESSAGE_INTERVAL_MS * len(self.texts)

    def render_values(self) -> list[bytes]:
        return [b',"text":' + orjson.dumps(t) + b"}" for t in self.texts]


def text_series(messages: int = 5000) -> list[TextSeries]:
    """IMDB test-split reviews (the sentiment model's data, from its cached splits)."""
    from statecast.models.sentiment_data import load_splits

    texts = load_splits().test["text"].tolist()[:messages]
    return [TextSeries("imdb-test", tuple(str(t) for t in texts))]


Series = ReplaySeries | FrameSeries | TextSeries


def series_for_topic(topic: str) -> list[Series]:
    if topic == SENSOR_TOPIC:
        return list(sensor_series())
    if topic == PRICES_TOPIC:
        return list(price_series())
    if topic == FRAMES_TOPIC:
        return list(frame_series())
    if topic == TEXT_TOPIC:
        return list(text_series())
    raise ValueError(
        f"no real series is replayed to topic {topic!r} (know sensor, prices, frames, text)"
    )
