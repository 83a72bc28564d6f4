"""IMDB reviews replayed as conversations on the ``text`` topic.

A conversation is one stream (one key) whose messages are consecutive pieces of one
review: its sentences, packed up to ``max_chars`` per message. Replayed round-robin
(message 0 of every conversation, then message 1, ...), so many conversations interleave
across partitions while each keeps its order. Events are the team's text events,
``{"stream", "ts", "text"}``. With ``mode=conversation`` the worker's prediction after the
last message is the sentiment of the whole review, to compare with the review's label.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import orjson
from aiokafka import AIOKafkaProducer

TEXT_TOPIC = "text"
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
MAX_MESSAGE_CHARS = 280


@dataclass(frozen=True)
class Conversation:
    stream: str
    label: int  # the review's sentiment, 1 = positive
    messages: tuple[str, ...]


def split_messages(text: str, max_chars: int = MAX_MESSAGE_CHARS) -> list[str]:
    """Sentences packed greedily into messages of at most ``max_chars`` (a longer sentence
    is one message of its own)."""
    messages: list[str] = []
    current = ""
    for sentence in _SENTENCE_END.split(text.strip()):
        if not sentence:
            continue
        if current and len(current) + 1 + len(sentence) > max_chars:
            messages.append(current)
            current = sentence
        else:
            current = f"{current} {sentence}" if current else sentence
    if current:
        messages.append(current)
    return messages


def conversations_from_reviews(
    texts: Sequence[str],
    labels: Sequence[int],
    n: int,
    prefix: str = "conv",
    seed: int = 0,
    max_chars: int = MAX_MESSAGE_CHARS,
) -> list[Conversation]:
    """``n`` conversations from reviews drawn with ``seed`` (reused when n > len(texts))."""
    if not texts or len(texts) != len(labels):
        raise ValueError("need as many labels as texts, and at least one text")
    rng = np.random.default_rng(seed)
    picks = np.concatenate([rng.permutation(len(texts)) for _ in range(-(-n // len(texts)))])[:n]
    return [
        Conversation(
            stream=f"{prefix}-{i:06d}",
            label=int(labels[j]),
            messages=tuple(split_messages(texts[j], max_chars)),
        )
        for i, j in enumerate(picks.tolist())
    ]


def load_imdb_conversations(n: int, seed: int = 0, prefix: str = "conv") -> list[Conversation]:
    """Conversations from the IMDB *test* split (never seen in training)."""
    from statecast.models.sentiment_data import load_splits  # data code: only when replaying IMDB

    test = load_splits().test
    return conversations_from_reviews(
        test["text"].tolist(), test["label"].tolist(), n, prefix=prefix, seed=seed
    )


def round_robin(conversations: Sequence[Conversation]) -> Iterator[tuple[Conversation, int]]:
    """``(conversation, message index)``: message k of every conversation, then k + 1."""
    longest = max((len(c.messages) for c in conversations), default=0)
    for k in range(longest):
        for conv in conversations:
            if k < len(conv.messages):
                yield conv, k


def event_bytes(stream: str, ts_ms: int, text: str) -> bytes:
    return orjson.dumps({"stream": stream, "ts": ts_ms, "text": text})


@dataclass(frozen=True)
class ReplayReport:
    messages: int
    conversations: int
    seconds: float


async def replay_conversations(
    producer: AIOKafkaProducer,
    conversations: Sequence[Conversation],
    topic: str = TEXT_TOPIC,
    rate: float | None = None,
) -> ReplayReport:
    """Produce every message (keyed by stream, ``ts`` = send time), at ``rate`` messages/s
    or as fast as possible, and wait for every ack."""
    start = time.monotonic()
    pending: list[asyncio.Future[object]] = []
    sent = 0
    for conv, k in round_robin(conversations):
        if rate is not None:
            ahead = sent / rate - (time.monotonic() - start)
            if ahead > 0:
                await asyncio.sleep(ahead)
        value = event_bytes(conv.stream, int(time.time() * 1000), conv.messages[k])
        pending.append(await producer.send(topic, value, key=conv.stream.encode()))
        sent += 1
    await asyncio.gather(*pending)
    return ReplayReport(sent, len(conversations), time.monotonic() - start)


async def replay_imdb(
    bootstrap: str, n: int, topic: str = TEXT_TOPIC, rate: float | None = None, seed: int = 0
) -> ReplayReport:
    """Replay ``n`` IMDB test reviews as conversations into ``topic`` on ``bootstrap``."""
    convs = load_imdb_conversations(n, seed=seed)
    # acks=all, no idempotence: Tansu has no InitProducerId.
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        return await replay_conversations(producer, convs, topic=topic, rate=rate)
    finally:
        await producer.stop()


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m statecast.loadtest.text_streams``: replay IMDB conversations once, then exit."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--bootstrap", default="127.0.0.1:19092")
    parser.add_argument("--topic", default=TEXT_TOPIC)
    parser.add_argument("--conversations", type=int, default=200)
    parser.add_argument("--rate", type=float, default=None, help="messages/s (default: max)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    report = asyncio.run(
        replay_imdb(args.bootstrap, args.conversations, args.topic, args.rate, args.seed)
    )
    print(
        f"replayed {report.messages} messages of {report.conversations} conversations "
        f"to {args.topic} in {report.seconds:.1f}s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
