"""Reviews replayed as conversations: message splitting and round-robin order."""

from __future__ import annotations

import orjson
import pytest

from statecast.loadtest.text_streams import (
    conversations_from_reviews,
    event_bytes,
    round_robin,
    split_messages,
)

pytestmark = pytest.mark.unit

REVIEW = (
    "I went in expecting little. The first act is slow! Then it finds its feet? "
    "By the end I was moved, truly moved. A rare thing."
)


def test_split_messages_packs_whole_sentences_and_loses_nothing() -> None:
    msgs = split_messages(REVIEW, max_chars=40)
    assert len(msgs) > 1
    assert all(len(m) <= 40 for m in msgs)
    assert " ".join(msgs) == REVIEW
    assert all(m[-1] in ".!?" for m in msgs)
    assert split_messages(REVIEW, max_chars=10_000) == [REVIEW]
    long_sentence = "word " * 30 + "end."
    assert split_messages(long_sentence, max_chars=20) == [long_sentence.strip()]


def test_conversations_are_seeded_and_keep_labels() -> None:
    texts = [REVIEW, "Awful. Just awful.", "Fine."]
    labels = [1, 0, 1]
    convs = conversations_from_reviews(texts, labels, n=7, prefix="t", seed=3)
    assert [c.stream for c in convs] == [f"t-{i:06d}" for i in range(7)]
    assert convs == conversations_from_reviews(texts, labels, n=7, prefix="t", seed=3)
    for c in convs:
        source = " ".join(c.messages)
        assert c.label == labels[texts.index(source)]
    with pytest.raises(ValueError, match="labels"):
        conversations_from_reviews(texts, [1], n=2)


def test_round_robin_interleaves_and_keeps_each_conversation_in_order() -> None:
    convs = conversations_from_reviews([REVIEW, "One. Two."], [1, 0], n=2, seed=0)
    convs = [
        c.__class__(c.stream, c.label, tuple(split_messages(" ".join(c.messages), 30)))
        for c in convs
    ]
    order = list(round_robin(convs))
    assert len(order) == sum(len(c.messages) for c in convs)
    assert order[0][0] is convs[0]
    assert order[1][0] is convs[1]
    for conv in convs:
        assert [k for c, k in order if c is conv] == list(range(len(conv.messages)))


def test_event_bytes_is_the_team_text_event() -> None:
    assert orjson.loads(event_bytes("conv-1", 5, "héllo")) == {
        "stream": "conv-1",
        "ts": 5,
        "text": "héllo",
    }
