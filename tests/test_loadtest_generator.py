"""The generator against the real broker: per-stream order, one partition per stream, real
values from the data sets, and every produced offset recorded for matching."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

import orjson
import pytest

from statecast.loadtest.generator import (
    Generator,
    GeneratorConfig,
    StreamPlan,
    make_producer,
    partition_for,
)
from statecast.loadtest.latency import SendLog
from statecast.loadtest.series import sensor_series
from tests.fixtures.kafka import consume_all, create_topic

pytestmark = pytest.mark.integration

STREAMS = 60
STEPS = 25
PARTITIONS = 4


async def test_streams_keep_order_partition_and_real_values(
    kafka_bootstrap: str, unique: Callable[[str], str]
) -> None:
    topic = unique("gen-sensor")
    await create_topic(kafka_bootstrap, topic, PARTITIONS)
    sensor = sensor_series()
    plan = StreamPlan(topic, tuple(sensor), STREAMS, PARTITIONS, id_prefix="sensor", seed=11)
    sends = SendLog()
    producer = make_producer(kafka_bootstrap)
    await producer.start()
    try:
        gen = Generator(producer, [plan], GeneratorConfig(count=STREAMS * 10), sends)
        await gen.run()
        # A second run continues every stream where the first left it, at a rate.
        await gen.run(GeneratorConfig(rate=20_000, count=STREAMS * (STEPS - 10)))
    finally:
        await producer.stop()
    assert sends.records == STREAMS * STEPS

    records = await consume_all(kafka_bootstrap, topic, STREAMS * STEPS)
    assert len(records) == STREAMS * STEPS
    by_stream: dict[str, list[tuple[int, int, dict[str, object]]]] = defaultdict(list)
    for rec in records:
        assert sends.sent_at(rec.topic, rec.partition, rec.offset) is not None
        event = orjson.loads(rec.value)
        assert rec.key == event["stream"].encode()
        by_stream[event["stream"]].append((rec.partition, rec.offset, event))

    starts = plan.start_rows()
    series = sensor[0]
    assert len(by_stream) == STREAMS
    for i in range(STREAMS):
        sid = plan.stream_id(i)
        events = by_stream[sid]
        partitions = {p for p, _, _ in events}
        assert partitions == {partition_for(sid.encode(), PARTITIONS)}
        events.sort(key=lambda e: e[1])  # offset order within the stream's one partition
        for step, (_, _, event) in enumerate(events):
            row = (starts[i] + step) % len(series)
            values = event["values"]
            assert isinstance(values, dict)
            assert values == {
                "demand": pytest.approx(series.values[row, 0], abs=1e-12),
                "temperature": pytest.approx(series.values[row, 1], abs=1e-12),
                "workday": int(series.values[row, 2]),
            }
            assert type(values["workday"]) is int
            ts = event["ts"]
            assert isinstance(ts, int)
            assert series.locate(ts) == row
        stamps = [int(str(e[2]["ts"])) for e in events]
        assert stamps == sorted(stamps)
        assert len(set(stamps)) == len(stamps)
