"""Stored states the worker cannot use: another state version (per-route policy) or garbage."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import orjson
import pytest
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry

from statecast.worker.loop import Worker
from statecast.worker.routing import Route
from statecast.worker.state.codec import StateCodec, StoredState
from statecast.worker.state.store import state_key
from tests.fixtures.kafka import consume_all, create_topic, produce
from tests.fixtures.tiny_models import TinyModel, event, offline_predictions, tiny_forecast_model
from tests.fixtures.tiny_models import worker_settings as make_settings

pytestmark = pytest.mark.integration

FEATS = ("demand", "temperature", "workday")
ROWS = [[31.0, 12.0, 1.0], [33.0, 11.0, 1.0], [29.0, 9.5, 0.0]]


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    return tiny_forecast_model(tmp_path_factory.mktemp("policy"), seed=7)


async def test_mismatched_and_corrupt_states_follow_the_route_policy(
    model: TinyModel, kafka_bootstrap: str, redis_url: str, unique: Callable[[str], str]
) -> None:
    reset_topic, dl_topic = unique("reset"), unique("strict")
    preds, dlq = unique("predictions"), unique("dlq")
    for t in (reset_topic, dl_topic, preds, dlq):
        await create_topic(kafka_bootstrap, t, partitions=1)
    prefix = unique("state")
    spec = model.spec

    def key(stream: str) -> str:
        return state_key(prefix, spec.name, spec.state_version, stream)

    # A state written by a model of another state version under the same key; its offset
    # (on a partition we do not read) must not fence anything.
    other = StateCodec(spec.states, "s000000000000")
    alien = other.encode(
        StoredState(
            {s.name: np.ones((s.layers, s.hidden), np.float32) for s in spec.states}, 99, 5, 0
        )
    )
    client = aioredis.Redis.from_url(redis_url)
    try:
        await client.mset(
            {key("mismatch"): alien, key("corrupt"): b"not a state", key("strict"): alien}
        )
        for stream, topic in (("mismatch", reset_topic), ("corrupt", reset_topic)):
            await produce(
                kafka_bootstrap,
                topic,
                [
                    (stream.encode(), event(stream, i, dict(zip(FEATS, r, strict=True))))
                    for i, r in enumerate(ROWS)
                ],
            )
        await produce(
            kafka_bootstrap,
            dl_topic,
            [
                (b"strict", event("strict", i, dict(zip(FEATS, r, strict=True))))
                for i, r in enumerate(ROWS)
            ],
        )
        settings = make_settings(
            bootstrap=kafka_bootstrap,
            redis_url=redis_url,
            model=model,
            routes=[
                Route(reset_topic, spec.name),
                Route(dl_topic, spec.name, on_state_mismatch="dead_letter"),
            ],
            predictions=preds,
            dlq=dlq,
            group=unique("group"),
            prefix=prefix,
        )
        registry = CollectorRegistry()
        stats = await Worker(settings, registry).run(max_records=9, idle_timeout_s=20)
        strict_after = await client.get(key("strict"))
    finally:
        await client.aclose()

    assert stats.predictions == 6
    assert stats.dead_letters == 3
    want, _ = offline_predictions(model.onnx_path, spec, ROWS)  # both restart from zero
    got: dict[str, list[float]] = {}
    for r in await consume_all(kafka_bootstrap, preds, expected=6):
        p = orjson.loads(r.value)
        got.setdefault(p["stream"], []).append(p["prediction"]["demand_next"])
    np.testing.assert_allclose(got["mismatch"], want, atol=1e-4)
    np.testing.assert_allclose(got["corrupt"], want, atol=1e-4)
    dead = await consume_all(kafka_bootstrap, dlq, expected=3)
    assert [dict(d.headers)["statecast.reason"] for d in dead] == [b"state_mismatch"] * 3
    assert strict_after == alien  # the dead-letter policy leaves the stored state alone

    def sample(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    assert sample("statecast_state_version_mismatches_total", model=spec.name) == 2
    assert sample("statecast_state_resets_total", model=spec.name, reason="mismatch") == 1
    assert sample("statecast_state_resets_total", model=spec.name, reason="corrupt") == 1
    assert sample("statecast_dead_letters_total", reason="state_mismatch") == 3
