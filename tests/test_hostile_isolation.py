"""Per-record isolation after decoding: a codec that raises, a session that fails, outputs
that are not finite, a prediction orjson cannot encode, a message the broker refuses, and a
retrier that retries only outages. Each failure costs only its record or stream."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from aiokafka import errors as kafka_errors
from prometheus_client import CollectorRegistry
from redis import exceptions as redis_errors

from statecast.contract.spec import ModelSpec, OutputSpec, StateSpec, TensorSpec
from statecast.worker.backoff import DependencyWatch, Retrier
from statecast.worker.batching import StreamWork
from statecast.worker.codecs.base import Array, Decoded, RawRecord, Rejected
from statecast.worker.codecs.forecast import ForecastCodec
from statecast.worker.isolation import (
    REASON_DECODE_ERROR,
    REASON_INFERENCE_ERROR,
    REASON_NOT_FINITE_OUTPUT,
    REASON_UNENCODABLE,
    compute_isolating,
    decode_isolating,
    publish_dead_letters,
    publish_isolating,
)
from statecast.worker.messages import DeadLetter, prediction_messages
from statecast.worker.metrics import WorkerMetrics
from statecast.worker.publisher import OutMessage

SPEC = ModelSpec(
    name="acc",
    version="1",
    kind="forecast",
    inputs=(TensorSpec("x", "float32", (-1, 3)),),
    outputs=(OutputSpec("demand_next", "GW"),),
    states=(StateSpec("h", 1, 1),),
    preprocess={"features": ["demand", "temperature", "workday"]},
)
POISON = 666.0  # a feature value the fake session cannot run


class Accumulator:
    """h += demand; the prediction is demand * 1e30 (inf in float32 for demand >= 1e9)."""

    def run(self, feeds: Mapping[str, Array]) -> dict[str, Array]:
        x = feeds["x"]
        if (x[:, 0] == POISON).any():
            raise RuntimeError("ONNXRuntimeError: poisoned input")
        demand = x[:, :1].astype(np.float32)
        with np.errstate(over="ignore"):
            pred = demand * np.float32(1e30)
        return {"demand_next": pred, "state_out.h": feeds["state_in.h"] + demand[None, :, :]}


def work(stream: str, demands: Sequence[float], ts: int = 1, partition: int = 0) -> StreamWork:
    w = StreamWork(f"k:{stream}", stream, partition)
    for i, d in enumerate(demands):
        raw = RawRecord("t", partition, i, 1_700_000_000_000, stream.encode(), b"{}")
        x = np.array([d, 0.0, 0.0], np.float32)
        w.records.append((raw, Decoded(stream, ts, ({"x": x},))))
    return w


def compute(works: list[StreamWork], **kw: Any) -> Any:
    codec = ForecastCodec(SPEC, {}, Path("."))
    return compute_isolating(
        Accumulator(), codec, SPEC.states, works, "acc@1", lambda: 1_700_000_000_100, **kw
    )


def reasons(dead: list[DeadLetter]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for d in dead:
        out.setdefault(d.reason, set()).add(d.record.key.decode() if d.record.key else "")
    return out


# -- decode --------------------------------------------------------------------------------


class FragileCodec:
    """Raises on any batch holding a record whose value is b"boom" (a codec bug)."""

    def decode(self, records: Sequence[RawRecord]) -> list[Decoded | Rejected]:
        if any(r.value == b"boom" for r in records):
            raise IndexError("list index out of range")
        return [Decoded("s", 1, ()) for _ in records]


@pytest.mark.unit
def test_a_codec_that_raises_costs_only_its_record() -> None:
    raws = [RawRecord("t", 0, i, 0, b"s", v) for i, v in enumerate([b"a", b"boom", b"c"])]
    out = decode_isolating(FragileCodec(), raws)  # type: ignore[arg-type]
    assert [type(o).__name__ for o in out] == ["Decoded", "Rejected", "Decoded"]
    assert isinstance(out[1], Rejected)
    assert out[1].reason == REASON_DECODE_ERROR
    assert "IndexError" in out[1].detail


# -- waves, outputs, encoding --------------------------------------------------------------


@pytest.mark.unit
def test_clean_batch_passes_through_unchanged() -> None:
    works = [work("a", [1.0, 2.0]), work("b", [3.0])]
    out = compute(works)
    assert out.dead == []
    assert [w.stream for w in out.works] == ["a", "b"]
    assert [float(s["h"][0, 0]) for s in out.final_states] == [3.0, 3.0]
    assert len(out.messages) == len(out.predictions) == 3


@pytest.mark.unit
def test_a_non_finite_output_dead_letters_its_stream_and_keeps_its_state() -> None:
    # 1e9 * 1e30 overflows float32: the prediction is inf (orjson would write null).
    works = [work("ok", [1.0, 2.0]), work("hot", [1.0, 1e9]), work("ok2", [4.0])]
    out = compute(works)
    assert reasons(out.dead) == {REASON_NOT_FINITE_OUTPUT: {"hot"}}
    assert len(out.dead) == 2  # both records of the stream's batch
    assert [w.stream for w in out.works] == ["ok", "ok2"]  # "hot" does not advance
    assert [float(s["h"][0, 0]) for s in out.final_states] == [3.0, 4.0]
    assert all(b"null" not in m.value for m in out.messages)


@pytest.mark.unit
def test_a_failing_session_is_retried_stream_by_stream() -> None:
    works = [work("a", [1.0]), work("poisoned", [2.0, POISON]), work("c", [5.0])]
    out = compute(works)
    assert reasons(out.dead) == {REASON_INFERENCE_ERROR: {"poisoned"}}
    assert [w.stream for w in out.works] == ["a", "c"]
    assert [float(s["h"][0, 0]) for s in out.final_states] == [1.0, 5.0]


@pytest.mark.unit
def test_a_prediction_orjson_cannot_encode_dead_letters_its_stream() -> None:
    # The poison pill one step later: a ts no JSON encoder takes.
    works = [work("a", [1.0]), work("pill", [1.0], ts=10**30)]
    with pytest.raises(TypeError):
        prediction_messages("acc@1", [(r, d, {"p": 1.0}) for r, d in works[1].records], 0)
    out = compute(works)
    assert reasons(out.dead) == {REASON_UNENCODABLE: {"pill"}}
    assert [w.stream for w in out.works] == ["a"]
    assert len(out.messages) == 1


# -- the retrier retries only outages where a record can be blamed -------------------------


@pytest.mark.unit
async def test_isolating_retrier_raises_a_record_error_and_retries_an_outage() -> None:
    metrics = WorkerMetrics(CollectorRegistry())
    retrier = Retrier(metrics, 0.001, 0.001)
    watch = DependencyWatch("redis", metrics, 60)
    calls = {"n": 0}

    async def wrong_type() -> int:
        calls["n"] += 1
        raise redis_errors.ResponseError("WRONGTYPE Operation against a key")

    with pytest.raises(redis_errors.ResponseError):
        await retrier.call(watch, "redis_write", wrong_type, isolate=True)
    assert calls["n"] == 1  # not retried: it is not an outage

    async def flaky() -> int:
        calls["n"] += 1
        if calls["n"] < 4:
            raise redis_errors.ConnectionError("Connection refused")
        return 7

    assert await retrier.call(watch, "redis_write", flaky, isolate=True) == 7
    assert watch.up


# -- publishing ----------------------------------------------------------------------------


class SizeLimitedBroker:
    """A publisher whose broker refuses any batch holding a message over ``limit`` bytes, as
    a real broker does with MessageSizeTooLargeError (Tansu enforces no such limit)."""

    def __init__(self, limit: int = 4096) -> None:
        self.limit = limit
        self.published: list[OutMessage] = []

    async def publish(self, topic: str, messages: Sequence[OutMessage]) -> None:
        if any(len(m.value) > self.limit for m in messages):
            raise kafka_errors.MessageSizeTooLargeError("the message is larger than the limit")
        self.published.extend(messages)


def pred(i: int) -> OutMessage:
    raw = RawRecord("t", 0, i, 0, b"s", b"")
    return prediction_messages("m@1", [(raw, Decoded("s", 1, ()), {"p": i})], 0)[0]


@pytest.mark.unit
async def test_a_message_the_broker_refuses_is_isolated() -> None:
    broker = SizeLimitedBroker()
    huge = pred(1)._replace(value=b"x" * 10_000)
    refused = await publish_isolating(broker, "out", [pred(0), huge, pred(2)])  # type: ignore[arg-type]
    assert [i for i, _ in refused] == [1]
    assert isinstance(refused[0][1], kafka_errors.MessageSizeTooLargeError)
    assert [orjson.loads(m.value)["id"] for m in broker.published] == ["t/0/0", "t/0/2"]


@pytest.mark.unit
async def test_an_outage_while_publishing_is_not_isolated() -> None:
    class Down:
        async def publish(self, topic: str, messages: Sequence[OutMessage]) -> None:
            raise kafka_errors.KafkaConnectionError("connection refused")

    with pytest.raises(kafka_errors.KafkaConnectionError):
        await publish_isolating(Down(), "out", [pred(0)])  # type: ignore[arg-type]


@pytest.mark.unit
async def test_a_dead_letter_too_large_goes_again_without_its_value() -> None:
    broker = SizeLimitedBroker()
    big = DeadLetter(RawRecord("t", 0, 9, 0, b"s", b"y" * 10_000), "too_large", "x")
    small = DeadLetter(RawRecord("t", 0, 10, 0, b"s", b"{"), "not_json", "x")
    assert await publish_dead_letters(broker, "dlq", [big, small]) == 0  # type: ignore[arg-type]
    by_source = {dict(m.headers)["statecast.source"]: m for m in broker.published}
    assert by_source[b"t/0/10"].value == b"{"
    assert by_source[b"t/0/9"].value == b""
    assert dict(by_source[b"t/0/9"].headers)["statecast.truncated"] == b"1"
    assert dict(by_source[b"t/0/9"].headers)["statecast.reason"] == b"too_large"
