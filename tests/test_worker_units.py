"""Pure logic of the worker: settings, routes, the forecast codec, waves, the state cache."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from statecast.contract.spec import ModelSpec, OutputSpec, StateSpec, TensorSpec
from statecast.worker.batching import StreamWork, group_by_stream, run_waves
from statecast.worker.codecs.base import Array, Decoded, RawRecord, Rejected, StepInputs
from statecast.worker.codecs.forecast import ForecastCodec
from statecast.worker.routing import parse_routes
from statecast.worker.settings import Settings, SettingsError
from statecast.worker.state.cache import StateCache
from statecast.worker.state.codec import StoredState
from statecast.worker.state.redis_conn import mask_url

pytestmark = pytest.mark.unit

FEATS = ["demand", "temperature", "workday"]


def forecast_spec(fields: tuple[str, ...] = (), width: int = 1) -> ModelSpec:
    return ModelSpec(
        name="sensor_lstm",
        version="1",
        kind="forecast",
        inputs=(TensorSpec("x", "float32", (-1, 3)),),
        outputs=(OutputSpec("demand_next", "GW", fields),),
        states=(StateSpec("h", 1, 2),),
        preprocess={"features": FEATS},
    )


def raw(value: bytes | None, offset: int = 0, partition: int = 0) -> RawRecord:
    """A record keyed by the stream its body names (producers key by stream)."""
    key = b"k"
    try:
        body = orjson.loads(value or b"")
        if isinstance(body, dict) and isinstance(body.get("stream"), str):
            key = body["stream"].encode()
    except orjson.JSONDecodeError:
        pass
    return RawRecord("sensor", partition, offset, 0, key, value)


def ev(**over: Any) -> bytes:
    body: dict[str, Any] = {
        "stream": "s1",
        "ts": 5,
        "values": dict(zip(FEATS, [1.5, 2, 0], strict=True)),
    }
    body.update(over)
    return orjson.dumps(body)


# -- settings and routes -------------------------------------------------------------------


def test_routes_parse_topics_models_and_options() -> None:
    routes = parse_routes(
        "sensor=sensor_lstm; text=sentiment_lstm?mode=conversation&on_state_mismatch=dead_letter"
    )
    assert [(r.topic, r.model) for r in routes] == [
        ("sensor", "sensor_lstm"),
        ("text", "sentiment_lstm"),
    ]
    assert routes[1].codec_options == {"mode": "conversation"}
    assert routes[1].on_state_mismatch == "dead_letter"
    assert routes[0].on_state_mismatch == "reset"


@pytest.mark.parametrize(
    "text", ["", "sensor", "sensor=", "a=b;a=c", "a=b?x", "a=b?on_state_mismatch=explode"]
)
def test_bad_routes_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match=r"."):
        parse_routes(text)


def test_settings_from_env_parse_types_and_mask_secrets() -> None:
    s = Settings.from_env(
        {
            "STATECAST_KAFKA_BOOTSTRAP": "k:9092",
            "STATECAST_KAFKA_SASL_MECHANISM": "PLAIN",
            "STATECAST_KAFKA_SASL_PASSWORD": "hunter2",
            "STATECAST_REDIS_URL": "redis://u:topsecret@r:6380/0",
            "STATECAST_REDIS_CLUSTER": "true",
            "STATECAST_MAX_BATCH": "512",
            "STATECAST_TEST_CRASH_AT": "after_publish:3",
            "STATECAST_MANIFEST": "/m/models/manifest.json",
        }
    )
    assert s.kafka.bootstrap_servers == "k:9092"
    assert s.redis.cluster is True
    assert s.max_batch_records == 512
    assert s.crash_at is not None
    assert (s.crash_at.stage, s.crash_at.n) == ("after_publish", 3)
    assert s.model_root == Path("/m")
    shown = orjson.dumps(s.describe()).decode()
    assert "hunter2" not in shown
    assert "topsecret" not in shown
    assert "redis://u:***@r:6380/0" in shown


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("STATECAST_MAX_BATCH", "many"),
        ("STATECAST_MAX_BATCH", "0"),
        ("STATECAST_REDIS_CLUSTER", "perhaps"),
        ("STATECAST_DEVICE", "tpu"),
        ("STATECAST_TEST_CRASH_AT", "before_lunch:1"),
        ("STATECAST_ROUTES", "nonsense"),
    ],
)
def test_settings_name_the_bad_variable(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=name):
        Settings.from_env({name: value})


def test_settings_to_env_reads_back_to_the_same_settings() -> None:
    env = {
        "STATECAST_KAFKA_BOOTSTRAP": "k1:9092,k2:9092",
        "STATECAST_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "STATECAST_KAFKA_SASL_MECHANISM": "PLAIN",
        "STATECAST_KAFKA_SASL_PASSWORD": "pw",
        "STATECAST_REDIS_URL": "rediss://u:secret@r:6380/1",
        "STATECAST_REDIS_CLUSTER": "yes",
        "STATECAST_ROUTES": "a=m1;b=m2?mode=conversation&on_state_mismatch=dead_letter",
        "STATECAST_MAX_BATCH": "17",
        "STATECAST_DEPENDENCY_TIMEOUT_S": "2.5",
        "STATECAST_TEST_CRASH_AT": "after_commit:3",
    }
    settings = Settings.from_env(env)
    assert Settings.from_env(settings.to_env()) == settings
    assert Settings.from_env(Settings().to_env()) == Settings()
    # What was given is what comes out, spelled as from_env reads it.
    out = settings.to_env()
    assert out["STATECAST_REDIS_CLUSTER"] == "1"
    assert out["STATECAST_ROUTES"] == env["STATECAST_ROUTES"]
    assert "STATECAST_KAFKA_SSL_CAFILE" not in out  # unset optional values are left out


def test_to_env_writes_every_variable_from_env_reads() -> None:
    # A setting added to from_env but not to to_env would silently fall back to its
    # default in every process the bench, the demo and the tests start.
    read: set[str] = set()

    class Recorder(dict[str, str]):
        def get(self, key: str, default: Any = None) -> Any:
            read.add(key)
            return super().get(key, default)

    Settings.from_env(Recorder())
    full = Settings.from_env(
        {
            "STATECAST_KAFKA_SASL_MECHANISM": "PLAIN",
            "STATECAST_KAFKA_SASL_USERNAME": "u",
            "STATECAST_KAFKA_SASL_PASSWORD": "p",
            "STATECAST_KAFKA_SSL_CAFILE": "/ca",
            "STATECAST_KAFKA_SSL_CERTFILE": "/cert",
            "STATECAST_KAFKA_SSL_KEYFILE": "/key",
            "STATECAST_REDIS_USERNAME": "u",
            "STATECAST_REDIS_PASSWORD": "p",
            "STATECAST_REDIS_TLS_CA_FILE": "/ca",
            "STATECAST_REDIS_TLS_CERT_FILE": "/cert",
            "STATECAST_REDIS_TLS_KEY_FILE": "/key",
            "STATECAST_TEST_CRASH_AT": "after_publish:1",
        }
    )
    assert read == set(full.to_env())


def test_mask_url_leaves_urls_without_password_alone() -> None:
    assert mask_url("redis://h:1/0") == "redis://h:1/0"


# -- forecast codec ------------------------------------------------------------------------


def test_forecast_codec_decodes_raw_features_in_spec_order() -> None:
    codec = ForecastCodec(forecast_spec(), {}, Path("."))
    body = orjson.dumps(
        {"stream": "s9", "ts": 7, "values": {"workday": 1, "demand": 3.5, "temperature": -2}}
    )
    (out,) = codec.decode([raw(body)])
    assert isinstance(out, Decoded)
    assert (out.stream, out.ts_ms) == ("s9", 7)
    np.testing.assert_array_equal(out.steps[0]["x"], np.array([3.5, -2, 1], np.float32))
    assert out.steps[0]["x"].dtype == np.float32


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (None, "empty"),
        (b"", "empty"),
        (b"{not json", "not_json"),
        (b'{"stream": "s", "ts": 1, "values": {"demand": NaN}}', "not_json"),
        (b"[1, 2]", "schema"),
        (orjson.dumps({"ts": 1, "values": {}}), "schema"),
        (ev(stream=5), "wrong_type"),
        (ev(stream=""), "wrong_type"),
        (ev(ts="yesterday"), "wrong_type"),
        (ev(values=[1, 2, 3]), "wrong_type"),
        (ev(values={"demand": 1, "temperature": 2}), "missing_feature"),
        (ev(values={"demand": 1, "temperature": 2, "workday": 0, "x": 1}), "extra_feature"),
        (ev(values={"demand": "1", "temperature": 2, "workday": 0}), "wrong_type"),
        (ev(values={"demand": True, "temperature": 2, "workday": 0}), "wrong_type"),
        (ev(values={"demand": None, "temperature": 2, "workday": 0}), "wrong_type"),
        (ev(values={"demand": 1e39, "temperature": 2, "workday": 0}), "not_finite"),
        (b'{"stream":"s","ts":1,"values":{"demand":1e999,"temperature":1,"workday":0}}', None),
        (ev(pad="x" * 5000), "too_large"),
    ],
)
def test_forecast_codec_rejects_each_bad_input_with_its_reason(
    value: bytes | None, reason: str | None
) -> None:
    codec = ForecastCodec(forecast_spec(), {}, Path("."))
    # A good record on each side: one bad record never spoils its neighbours.
    out = codec.decode([raw(ev()), raw(value), raw(ev())])
    assert isinstance(out[0], Decoded)
    assert isinstance(out[2], Decoded)
    assert isinstance(out[1], Rejected)
    if reason is not None:
        assert out[1].reason == reason
    else:  # 1e999: orjson refuses it or reads infinity; either way it is rejected
        assert out[1].reason in ("not_json", "not_finite")


def test_forecast_codec_refuses_unknown_options() -> None:
    with pytest.raises(ValueError, match="unknown options"):
        ForecastCodec(forecast_spec(), {"mode": "x"}, Path("."))


def test_forecast_predictions_use_field_names_or_scalars() -> None:
    scalar = ForecastCodec(forecast_spec(), {}, Path("."))
    assert scalar.predictions({"demand_next": np.array([[1.5], [2.0]], np.float32)}) == [
        {"demand_next": 1.5},
        {"demand_next": 2.0},
    ]
    named = ForecastCodec(forecast_spec(("mean", "log_var")), {}, Path("."))
    assert named.predictions({"demand_next": np.array([[0.5, -1.0]], np.float32)}) == [
        {"demand_next": {"mean": 0.5, "log_var": -1.0}}
    ]


# -- waves -----------------------------------------------------------------------------------


class AddStep:
    """A fake step model: state += x (per stream), prediction = new state sum; counts runs."""

    def __init__(self) -> None:
        self.runs: list[int] = []

    def run(self, feeds: Mapping[str, Array]) -> dict[str, Array]:
        x = feeds["x"]
        h = feeds["state_in.h"] + x[None, :, :1]
        self.runs.append(int(x.shape[0]))
        return {"state_out.h": h, "y": h.sum(axis=2).T}


class FakeCodec:
    spec = ModelSpec(
        name="fake",
        version="1",
        kind="forecast",
        inputs=(TensorSpec("x", "float32", (-1, 1)),),
        outputs=(OutputSpec("y", ""),),
        states=(StateSpec("h", 1, 2),),
    )

    def decode(self, records: Any) -> list[Decoded | Rejected]:
        raise NotImplementedError

    def stack(self, steps: Any) -> dict[str, Array]:
        return {"x": np.stack([s["x"] for s in steps])}

    def predictions(self, outputs: Mapping[str, Array]) -> list[dict[str, Any]]:
        return [{"y": float(v[0])} for v in outputs["y"]]


def step(v: float) -> StepInputs:
    return {"x": np.array([v], np.float32)}


def test_waves_advance_each_stream_in_order_with_one_run_per_depth() -> None:
    # Stream a: 3 records, b: 1 record of 2 steps (one prediction), c: 1 record from a state.
    recs = [
        (raw(None, 0), Decoded("a", 0, (step(1),))),
        (raw(None, 1), Decoded("b", 0, (step(10), step(20)))),
        (raw(None, 2), Decoded("a", 0, (step(2),))),
        (raw(None, 3), Decoded("c", 0, (step(5),))),
        (raw(None, 4), Decoded("a", 0, (step(3),))),
    ]
    groups = group_by_stream(recs, lambda s: "k:" + s)
    assert list(groups) == ["a", "b", "c"]
    assert [w.key for w in groups.values()] == ["k:a", "k:b", "k:c"]
    groups["c"].initial = {"h": np.full((1, 2), 100.0, np.float32)}
    session = AddStep()
    out = run_waves(session, FakeCodec(), FakeCodec.spec.states, list(groups.values()))
    assert out.waves == 3
    assert session.runs == [3, 2, 1]  # a and b in waves 1-2, a alone in wave 3
    got = {(r.offset, d.stream): p["y"] for r, d, p in out.predictions}
    # a: 1, 3, 6 (each value twice: hidden width 2); b predicts after its 2nd step only.
    assert got == {(0, "a"): 2.0, (2, "a"): 6.0, (4, "a"): 12.0, (1, "b"): 60.0, (3, "c"): 210.0}
    assert [r.offset for r, _, _ in out.predictions] == [0, 2, 4, 1, 3]
    np.testing.assert_array_equal(out.final_states[0]["h"], [[6.0, 6.0]])
    np.testing.assert_array_equal(out.final_states[2]["h"], [[105.0, 105.0]])


def test_fresh_state_records_start_from_zero() -> None:
    recs = [
        (raw(None, 0), Decoded("a", 0, (step(1),))),
        (raw(None, 1), Decoded("a", 0, (step(2),), fresh_state=True)),
    ]
    works = list(group_by_stream(recs, str).values())
    out = run_waves(AddStep(), FakeCodec(), FakeCodec.spec.states, works)
    assert [p["y"] for _, _, p in out.predictions] == [2.0, 4.0]


def test_no_streams_no_runs() -> None:
    session = AddStep()
    out = run_waves(session, FakeCodec(), FakeCodec.spec.states, list[StreamWork]())
    assert (out.waves, out.predictions, session.runs) == (0, [], [])


# -- state cache -----------------------------------------------------------------------------


def test_cache_drops_revoked_partitions_and_expires_like_redis() -> None:
    cache = StateCache(ttl_ms=1000)
    st = {"h": np.zeros((1, 2), np.float32)}
    cache.put("a", StoredState(st, 0, 5, 10_000))
    cache.put("b", StoredState(st, 1, 5, 10_000))
    cache.put("a", StoredState(st, 2, 6, 10_000))  # the stream moved partition
    assert cache.drop_partitions({0}) == 0
    assert cache.drop_partitions({2}) == 1
    assert cache.get("a") is None
    entry = cache.get("b")
    assert entry is not None
    assert not cache.is_expired(entry, 10_999)
    assert cache.is_expired(entry, 11_000)


def test_observe_many_equals_one_observe_per_value() -> None:
    from prometheus_client import CollectorRegistry, Histogram

    from statecast.worker.metrics import observe_many

    values = [0.0, 0.0001, 0.0003, 0.001, 0.02, 7.0, 100.0]
    reg_a, reg_b = CollectorRegistry(), CollectorRegistry()
    a = Histogram("h", "h", buckets=(0.0001, 0.001, 0.01, 1.0), registry=reg_a)
    b = Histogram("h", "h", buckets=(0.0001, 0.001, 0.01, 1.0), registry=reg_b)
    for v in values:
        a.observe(v)
    observe_many(b, values)
    for le in ("0.0001", "0.001", "0.01", "1.0", "+Inf"):
        assert reg_a.get_sample_value("h_bucket", {"le": le}) == reg_b.get_sample_value(
            "h_bucket", {"le": le}
        )
    assert reg_a.get_sample_value("h_sum") == pytest.approx(reg_b.get_sample_value("h_sum"))
    assert reg_b.get_sample_value("h_count") == len(values)
