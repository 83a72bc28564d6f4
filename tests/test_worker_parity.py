"""Streaming parity with the shipped models on real data.

Real series (fpp2 elecdemand for ``sensor_lstm``, daily log returns for ``price_gru``) are
replayed as concurrent streams through Kafka into one worker serving both routes. Every
prediction that comes out of Kafka must equal the exported ONNX step run offline over the
same stream, one event at a time from a zero state, within the contract's 1e-4.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from prometheus_client import CollectorRegistry

from statecast.contract.calendar import derive
from statecast.contract.manifest import DEFAULT_MANIFEST, load_manifest
from statecast.contract.spec import ModelSpec
from statecast.worker.devstack import TANSU_SESSION_TIMEOUT_MS
from statecast.worker.inference import build_session
from statecast.worker.loop import Worker
from statecast.worker.routing import Route
from statecast.worker.settings import KafkaSettings, Settings
from statecast.worker.state.redis_conn import RedisSettings
from tests.fixtures.kafka import consume_all, create_topic, produce

pytestmark = pytest.mark.integration

WINDOW = 120


def shipped(name: str) -> tuple[Path, ModelSpec]:
    entry = load_manifest(DEFAULT_MANIFEST).get(name)
    if entry is None:
        pytest.skip(f"{name} is not in the manifest yet")
    path = entry.onnx_path()
    sess = build_session(path)
    return path, ModelSpec.from_metadata(dict(sess.get_modelmeta().custom_metadata_map))


def offline(
    path: Path, spec: ModelSpec, rows: np.ndarray[Any, Any], ts: np.ndarray[Any, Any]
) -> list[list[float]]:
    """The exported step over one stream at batch 1, carrying state: flattened outputs."""
    derived = derive(list(spec.preprocess.get("derived_features", ())), ts)
    rows = np.concatenate([rows.astype(np.float32), derived], axis=1)
    sess = build_session(path)
    states = {s.name: np.zeros((s.layers, 1, s.hidden), np.float32) for s in spec.states}
    out_name = spec.outputs[0].name
    names = [out_name, *(s.output_name for s in spec.states)]
    preds: list[list[float]] = []
    for row in rows.astype(np.float32):
        feeds: dict[str, Any] = {"x": row[None, :]}
        feeds.update({s.input_name: states[s.name] for s in spec.states})
        out = sess.run(names, feeds)
        preds.append([float(v) for v in np.ravel(out[0])])
        states = {s.name: a for s, a in zip(spec.states, out[1:], strict=True)}
    return preds


def flat(pred: dict[str, Any], spec: ModelSpec) -> list[float]:
    o = spec.outputs[0]
    v = pred[o.name]
    if o.fields:
        # A multi-horizon output is one list per field ([H] each); the graph's is [H, fields].
        cols = [np.atleast_1d(np.asarray(v[f], dtype=np.float64)) for f in o.fields]
        return [float(x) for x in np.stack(cols, axis=-1).ravel()]
    return [float(v)] if not isinstance(v, list) else [float(x) for x in v]


async def test_replayed_real_series_match_the_exported_models_offline(
    kafka_bootstrap: str, redis_url: str, unique: Callable[[str], str]
) -> None:
    from statecast.models.datasets import load_elecdemand, load_stock_prices

    sensor_path, sensor_spec = shipped("sensor_lstm")
    price_path, price_spec = shipped("price_gru")
    elec = load_elecdemand()
    prices = load_stock_prices(["AAPL", "IBM", "MSFT"])

    streams: dict[str, tuple[str, np.ndarray[Any, Any], np.ndarray[Any, Any]]] = {}
    for i in range(6):  # six meters: six different weeks of the real series
        part = elec.iloc[i * 2000 : i * 2000 + WINDOW]
        streams[f"meter-{i}"] = (
            "sensor",
            part[list(sensor_spec.features)].to_numpy(np.float64),
            part["ts"].to_numpy(),
        )
    for ticker, frame in prices.items():
        part = frame.dropna().iloc[-WINDOW:]
        streams[ticker] = (
            "prices",
            part[list(price_spec.features)].to_numpy(np.float64),
            part["ts"].to_numpy(),
        )

    topic_of = {"sensor": unique("sensor"), "prices": unique("prices")}
    preds_topic, dlq = unique("predictions"), unique("dlq")
    for t in (*topic_of.values(), preds_topic, dlq):
        await create_topic(kafka_bootstrap, t, partitions=3)
    feats = {"sensor": sensor_spec.features, "prices": price_spec.features}
    for kind, topic in topic_of.items():
        # Round-robin over the streams: every poll mixes all of them.
        batch: list[tuple[bytes, bytes]] = []
        mine = {s: v for s, v in streams.items() if v[0] == kind}
        for step in range(WINDOW):
            for s, (_, rows, ts) in mine.items():
                values = {f: float(rows[step, j]) for j, f in enumerate(feats[kind])}
                batch.append(
                    (s.encode(), orjson.dumps({"stream": s, "ts": int(ts[step]), "values": values}))
                )
        await produce(kafka_bootstrap, topic, batch)
    total = WINDOW * len(streams)

    settings = Settings(
        kafka=KafkaSettings(
            bootstrap_servers=kafka_bootstrap,
            group_id=unique("g"),
            session_timeout_ms=TANSU_SESSION_TIMEOUT_MS,
        ),
        redis=RedisSettings(url=redis_url),
        routes=(
            Route(topic_of["sensor"], "sensor_lstm"),
            Route(topic_of["prices"], "price_gru"),
        ),
        predictions_topic=preds_topic,
        dlq_topic=dlq,
        state_prefix=unique("parity"),
        max_batch_records=256,
        http_port=0,
    )
    stats = await Worker(settings, CollectorRegistry()).run(max_records=total, idle_timeout_s=30)
    assert stats.dead_letters == 0
    got = await consume_all(kafka_bootstrap, preds_topic, expected=total)
    assert len(got) == total

    by_stream: dict[str, list[dict[str, Any]]] = {}
    for r in got:
        p = orjson.loads(r.value)
        by_stream.setdefault(p["stream"], []).append(p)
    worst = 0.0
    for s, (kind, rows, ts) in streams.items():
        path, spec = (sensor_path, sensor_spec) if kind == "sensor" else (price_path, price_spec)
        preds = by_stream[s]
        assert [p["ts"] for p in preds] == [int(t) for t in ts]  # order kept per stream
        assert {p["model"] for p in preds} == {spec.ref}
        want = np.array(offline(path, spec, rows, ts))
        have = np.array([flat(p["prediction"], spec) for p in preds])
        worst = max(worst, float(np.abs(want - have).max()))
        np.testing.assert_allclose(have, want, atol=1e-4, rtol=0)
    print(f"streaming parity: {total} predictions, max |diff| {worst:.2e}")
