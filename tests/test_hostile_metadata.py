"""Load tools learn partition counts from metadata requests that name their topics (a strict
broker lists no topics for a request naming none), against the real broker."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from aiokafka.admin import client as admin_client

from statecast.loadtest.latency import LatencyBook, SendLog
from statecast.loadtest.measure import Measurer
from statecast.loadtest.topics import ensure_topics, partition_counts

pytestmark = pytest.mark.integration


@pytest.fixture
def metadata_requests(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The topic lists of every metadata request the admin client sends."""
    asked: list[Any] = []
    real = admin_client.MetadataRequest

    def recording(topics: Any = None, *args: Any, **kwargs: Any) -> Any:
        asked.append(topics)
        return real(topics, *args, **kwargs)

    monkeypatch.setattr(admin_client, "MetadataRequest", recording)
    return asked


async def test_topics_are_created_and_counted_by_name(
    kafka_bootstrap: str, unique: Callable[[str], str], metadata_requests: list[Any]
) -> None:
    a, b = unique("meta-a"), unique("meta-b")
    assert await ensure_topics(kafka_bootstrap, {a: 3, b: 1}) == {a: 3, b: 1}
    # An existing topic keeps its count, whatever is asked for.
    assert await ensure_topics(kafka_bootstrap, {a: 5}) == {a: 3}
    assert await partition_counts(kafka_bootstrap, [a, b], wait_s=0.0) == {a: 3, b: 1}
    assert metadata_requests
    assert all(topics for topics in metadata_requests), "a metadata request named no topic"


async def test_measurer_assigns_every_partition_of_its_topic(
    kafka_bootstrap: str, unique: Callable[[str], str], metadata_requests: list[Any]
) -> None:
    topic = unique("meta-preds")
    await ensure_topics(kafka_bootstrap, {topic: 4})
    measurer = Measurer(kafka_bootstrap, topic, LatencyBook(SendLog()))
    await measurer.start()
    try:
        assert {tp.partition for tp in measurer._consumer.assignment()} == {0, 1, 2, 3}
    finally:
        await measurer.stop()
    assert all(topics for topics in metadata_requests)
