"""The live part of ``statecast demo``: forecasts of a few streams against what happened next.

Every prediction that comes back is located in the real series it was made on (stream id
-> series, event ``ts`` -> row), so the value the model forecast can be shown beside the
actual next value of the data, and the sensor forecaster's running mean absolute error
beside the persistence forecast's (next value = this value) on the same points.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

from statecast.loadtest.generator import StreamPlan
from statecast.loadtest.series import (
    PRICES_TOPIC,
    SENSOR_TOPIC,
    TARGET_FEATURE,
    TEXT_TOPIC,
    ReplaySeries,
)


@dataclass
class _Seen:
    stream: str
    series: str
    ts: int
    forecast: float
    actual: float | None
    extra: str = ""


@dataclass
class ForecastBoard:
    """Collects predictions (measurer callback) and renders a small live table."""

    plans: Sequence[StreamPlan]
    watch: int = 3  # streams shown per topic
    # A stream starts from a zero state: score its forecasts after one day of warm-up.
    warmup_steps: int = 48
    steps_seen: dict[str, int] = field(default_factory=dict)
    latest: dict[str, _Seen] = field(default_factory=dict)
    abs_err: float = 0.0
    abs_err_persistence: float = 0.0
    scored: int = 0
    predictions: int = 0
    # Conversations (IMDB reviews as messages): running P(positive) of watched streams.
    sentiment: dict[str, tuple[int, float]] = field(default_factory=dict)
    text_predictions: int = 0

    def __post_init__(self) -> None:
        self._by_prefix = {p.id_prefix or p.topic: p for p in self.plans}
        self._watched = {
            p.stream_id(i) for p in self.plans for i in range(min(self.watch, p.n_streams))
        }

    def observe(self, pred: dict[str, Any], received_at: float) -> None:
        self.predictions += 1
        stream = pred.get("stream")
        ts = pred.get("ts")
        body = pred.get("prediction")
        if not isinstance(stream, str) or not isinstance(ts, int) or not isinstance(body, dict):
            return
        plan = self._by_prefix.get(stream.rpartition("-")[0])
        if plan is None:
            return
        if plan.topic == TEXT_TOPIC:
            self._observe_text(stream, body)
            return
        i = plan.stream_index(stream)
        if i is None:
            return
        series = plan.series_of(i)
        if not isinstance(series, ReplaySeries):
            return
        row = series.locate(ts)
        if row is None:
            return
        target = series.features.index(TARGET_FEATURE[plan.id_prefix or plan.topic])
        nxt = row + 1 if row + 1 < len(series) else None
        actual = float(series.values[nxt, target]) if nxt is not None else None
        forecast, extra = _forecast_value(body)
        if forecast is None:
            return
        seen = self.steps_seen.get(stream, 0) + 1
        self.steps_seen[stream] = seen
        if plan.id_prefix == SENSOR_TOPIC and actual is not None and seen > self.warmup_steps:
            self.scored += 1
            self.abs_err += abs(forecast - actual)
            self.abs_err_persistence += abs(float(series.values[row, target]) - actual)
        if stream in self._watched:
            self.latest[stream] = _Seen(stream, series.name, ts, forecast, actual, extra)

    def _observe_text(self, stream: str, body: dict[str, Any]) -> None:
        p = body.get("positive")
        if not isinstance(p, int | float):
            return
        self.text_predictions += 1
        if stream in self._watched:
            seen, _ = self.sentiment.get(stream, (0, 0.0))
            self.sentiment[stream] = (seen + 1, float(p))

    def render(self, out: TextIO) -> None:
        if not self.latest and not self.sentiment:
            return
        lines = []
        for stream in sorted(self.latest):
            s = self.latest[stream]
            when = time.strftime("%Y-%m-%d %H:%M", time.gmtime(s.ts / 1000))
            actual = "   n/a" if s.actual is None else f"{s.actual:+.4f}"
            if stream.startswith(SENSOR_TOPIC):
                lines.append(
                    f"  {stream} {s.series:>10} {when}  demand next half-hour: "
                    f"forecast {s.forecast:.3f} GW, actual {s.actual or float('nan'):.3f} GW"
                    f"{s.extra}"
                )
            elif stream.startswith(PRICES_TOPIC):
                lines.append(
                    f"  {stream} {s.series:>10} {when}  next-day log-return: "
                    f"forecast {s.forecast:+.4f}{s.extra}, actual {actual}"
                )
        for stream in sorted(self.sentiment):
            seen, p = self.sentiment[stream]
            label = "positive" if p >= 0.5 else "negative"
            lines.append(
                f"  {stream} IMDB reviews, {seen} scored so far: latest review "
                f"P(positive) {p:.2f} ({label})"
            )
        if self.scored:
            lines.append(
                f"  sensor MAE over {self.scored:,} forecasts after a one-day warm-up: "
                f"{self.abs_err / self.scored:.3f} GW (persistence forecast: "
                f"{self.abs_err_persistence / self.scored:.3f} GW)"
            )
        out.write("\n".join(lines) + "\n")
        out.flush()

    def summary(self) -> dict[str, Any]:
        return {
            "predictions_seen": self.predictions,
            "sentiment_predictions": self.text_predictions,
            "sensor_forecasts_scored": self.scored,
            "sensor_mae_gw": round(self.abs_err / self.scored, 4) if self.scored else None,
            "sensor_persistence_mae_gw": round(self.abs_err_persistence / self.scored, 4)
            if self.scored
            else None,
        }


# Horizons (in steps) of the day-ahead band shown for watched sensors: +6 h, +12 h, +24 h.
BAND_STEPS = (12, 24, 48)


def _quantile_band(value: dict[str, Any]) -> tuple[float, str] | None:
    """A day-ahead quantile forecast ``{"p10": [..], "p50": [..], "p90": [..]}``: the next
    step's median and the p10-p90 band at :data:`BAND_STEPS`."""
    lo, mid, hi = value.get("p10"), value.get("p50"), value.get("p90")
    if not (isinstance(lo, list) and isinstance(mid, list) and isinstance(hi, list) and mid):
        return None
    parts = [
        f"+{k // 2}h {mid[k - 1]:.2f} [{lo[k - 1]:.2f}-{hi[k - 1]:.2f}]"
        for k in BAND_STEPS
        if k <= min(len(lo), len(mid), len(hi))
    ]
    return float(mid[0]), ("; day ahead p50 [p10-p90]: " + ", ".join(parts)) if parts else ""


def _forecast_value(body: dict[str, Any]) -> tuple[float | None, str]:
    """The point forecast of a prediction body, and a note (the sd of a Gaussian, or the
    day-ahead band of a quantile forecast)."""
    for value in body.values():
        if isinstance(value, int | float):
            return float(value), ""
        if isinstance(value, dict) and "p50" in value:
            band = _quantile_band(value)
            if band is not None:
                return band
        if isinstance(value, dict) and isinstance(value.get("mean"), int | float):
            log_var = value.get("log_var")
            note = ""
            if isinstance(log_var, int | float):
                note = f" (sd {2.718281828459045 ** (float(log_var) / 2):.4f})"
            return float(value["mean"]), note
        if isinstance(value, list) and value and isinstance(value[0], int | float):
            return float(value[0]), ""
    return None, ""
