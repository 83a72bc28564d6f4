"""The forecast routes end to end with the shipped models: events -> worker -> Kafka.

Meters replay real elecdemand half-hours (the codec derives half-hour of day and day of
week from each event's ``ts``) to the shipped ``sensor_lstm``; tickers replay real daily
returns to ``price_gru``. Every prediction must equal the exported ONNX step run offline
over the same stream from a zero state, with the calendar columns computed here from the
timestamps by hand, and carry the documented day-ahead shape. Bad events dead-letter.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import orjson
import pytest
from prometheus_client import CollectorRegistry

from statecast.contract.manifest import ManifestEntry, load_manifest, upsert_entry
from statecast.contract.paths import PACKAGE_ROOT
from statecast.contract.spec import ModelSpec
from statecast.export.step_export import read_spec
from statecast.worker.loop import Worker
from statecast.worker.routing import Route
from tests.fixtures.kafka import consume_all, create_topic, produce
from tests.fixtures.tiny_models import TinyModel, event, worker_settings

pytestmark = pytest.mark.integration

STEPS = 60
METERS = 3


@pytest.fixture(scope="module")
def shipped(tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    """Both shipped forecasters in a private root with a manifest of their own."""
    root = tmp_path_factory.mktemp("forecast")
    manifest = root / "models" / "manifest.json"
    for name in ("sensor_lstm", "price_gru"):
        entry = load_manifest()[name]
        path = root / entry.onnx
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(entry.onnx_path(PACKAGE_ROOT), path)
        upsert_entry(
            ManifestEntry(entry.name, entry.version, entry.kind, entry.onnx, entry.sha256),
            manifest,
        )
    sensor = root / "models" / "onnx" / "sensor_lstm.onnx"
    return TinyModel(read_spec(sensor), manifest, root, sensor)


def offline(path: Path, spec: ModelSpec, rows: np.ndarray[Any, Any]) -> list[np.ndarray[Any, Any]]:
    """The step over one stream at batch 1 from a zero state: the first output per step."""
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    state = {s.input_name: np.zeros((s.layers, 1, s.hidden), np.float32) for s in spec.states}
    names = [spec.outputs[0].name, *(s.output_name for s in spec.states)]
    out = []
    for row in rows.astype(np.float32):
        y, *nxt = sess.run(names, {"x": row[None], **state})
        state = {s.input_name: a for s, a in zip(spec.states, nxt, strict=True)}
        out.append(y[0])
    return out


async def test_forecast_routes_serve_day_ahead_quantiles_and_volatility(
    shipped: TinyModel, kafka_bootstrap: str, redis_url: str, unique: Callable[[str], str]
) -> None:
    from statecast.models.datasets import load_elecdemand, load_stock_prices

    sensor_spec = shipped.spec
    price_path = shipped.root / "models" / "onnx" / "price_gru.onnx"
    price_spec = read_spec(price_path)
    assert sensor_spec.preprocess["derived_features"] == ["half_hour_of_day", "day_of_week"]
    elec = load_elecdemand()
    sensor_topic, price_topic = unique("sensor"), unique("prices")
    preds_topic, dlq = unique("predictions"), unique("dlq")
    for t in (sensor_topic, price_topic, preds_topic, dlq):
        await create_topic(kafka_bootstrap, t, partitions=2)

    want: dict[str, list[np.ndarray[Any, Any]]] = {}
    sensor_records: list[tuple[bytes, bytes]] = []
    streams: dict[str, tuple[list[int], list[dict[str, float]]]] = {}
    for m in range(METERS):
        part = elec.iloc[3000 * m + 7 : 3000 * m + 7 + STEPS]  # starts mid-day, any weekday
        ts = [int(v) for v in part["ts"]]
        values = [
            {f: float(part[f].iloc[i]) for f in ("demand", "temperature", "workday")}
            for i in range(STEPS)
        ]
        streams[f"meter-{m}"] = (ts, values)
        # The calendar by hand: half-hours since local midnight, days since Monday.
        cal = [((t // 1_800_000) % 48, (t // 86_400_000 + 3) % 7) for t in ts]
        rows = np.array(
            [
                [v["demand"], v["temperature"], v["workday"], *c]
                for v, c in zip(values, cal, strict=True)
            ]
        )
        want[f"meter-{m}"] = offline(shipped.onnx_path, sensor_spec, rows)
    for i in range(STEPS):
        for s, (ts, values) in streams.items():
            sensor_records.append((s.encode(), event(s, ts[i], values[i])))
    bad = [
        (b"meter-0", orjson.dumps({"stream": "meter-0", "ts": "noon", "values": {}})),
        (b"meter-1", event("meter-1", 2**63, {"demand": 4.0, "temperature": 20, "workday": 1})),
        (b"meter-2", event("meter-2", 1, {"demand": 4.0, "temperature": 20})),
    ]
    await produce(kafka_bootstrap, sensor_topic, sensor_records[:30] + bad + sensor_records[30:])

    price_records = []
    for ticker, frame in load_stock_prices(["IBM", "MSFT"]).items():
        part = frame.iloc[-STEPS:]
        r = part["log_return"].to_numpy()
        want[ticker] = offline(price_path, price_spec, r[:, None])
        for i in range(STEPS):
            body = event(ticker, int(part["ts"].iloc[i]), {"log_return": float(r[i])})
            price_records.append((ticker.encode(), body))
    await produce(kafka_bootstrap, price_topic, price_records)

    total = len(sensor_records) + len(bad) + len(price_records)
    good = len(sensor_records) + len(price_records)
    settings = worker_settings(
        bootstrap=kafka_bootstrap,
        redis_url=redis_url,
        model=shipped,
        routes=[Route(sensor_topic, "sensor_lstm"), Route(price_topic, "price_gru")],
        predictions=preds_topic,
        dlq=dlq,
        group=unique("group"),
        prefix=unique("state"),
        max_batch_records=64,
    )
    stats = await Worker(settings, CollectorRegistry()).run(max_records=total, idle_timeout_s=20)
    assert stats.predictions == good
    assert stats.dead_letters == len(bad)

    got: dict[str, list[dict[str, Any]]] = {}
    for rec in await consume_all(kafka_bootstrap, preds_topic, expected=good):
        p = orjson.loads(rec.value)
        got.setdefault(p["stream"], []).append(p)
    for stream, expected in want.items():
        seq = sorted(got[stream], key=lambda p: p["ts"])
        assert len(seq) == STEPS
        for p, y in zip(seq, expected, strict=True):
            if stream.startswith("meter"):
                assert p["model"] == sensor_spec.ref
                band = p["prediction"]["demand"]
                assert sorted(band) == ["p10", "p50", "p90"]
                arr = np.array([band["p10"], band["p50"], band["p90"]]).T  # [48, 3]
                assert arr.shape == (48, 3)
                assert (arr[:, 0] <= arr[:, 1]).all()
                assert (arr[:, 1] <= arr[:, 2]).all()
                np.testing.assert_allclose(arr, y, atol=1e-4)
            else:
                value = p["prediction"]["return_next"]
                assert value["mean"] == 0.0  # the volatility model predicts a zero mean
                np.testing.assert_allclose([value["mean"], value["log_var"]], y, atol=1e-4)

    dead = await consume_all(kafka_bootstrap, dlq, expected=len(bad))
    reasons = sorted(dict(r.headers)["statecast.reason"].decode() for r in dead)
    assert reasons == sorted(["wrong_type", "ts_out_of_range", "missing_feature"])
