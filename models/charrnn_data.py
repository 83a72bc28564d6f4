"""Byte corpora for the character model and its n-gram baseline, from the IMDB reviews.

The reviews and their train/val/test split are the sentiment model's (``sentiment_data``:
the pinned wheel, cleaned text, duplicates dropped). Each split becomes one byte stream:
UTF-8 reviews joined by ``\\n``, in split order, cut to a byte budget so training fits a
shared CPU. The RNN and the n-gram baseline read the very same bytes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

SEPARATOR = b"\n"
DEFAULT_TRAIN_BYTES = 7_000_000
DEFAULT_EVAL_BYTES = 500_000

Bytes = npt.NDArray[np.uint8]


def join_texts(texts: Sequence[str], budget: int) -> Bytes:
    """``texts`` as UTF-8, separator-joined, truncated to ``budget`` bytes."""
    parts: list[bytes] = []
    size = 0
    for text in texts:
        blob = text.encode("utf-8") + SEPARATOR
        parts.append(blob)
        size += len(blob)
        if size >= budget:
            break
    return np.frombuffer(b"".join(parts)[:budget], dtype=np.uint8).copy()


def imdb_bytes(split: str, budget: int) -> Bytes:
    """The byte stream of one IMDB split (``train``, ``val`` or ``test``)."""
    from statecast.models.sentiment_data import load_splits

    splits = load_splits()
    frame = {"train": splits.train, "val": splits.val, "test": splits.test}[split]
    return join_texts([str(t) for t in frame["text"].tolist()], budget)


def parallel_streams(data: Bytes, streams: int) -> npt.NDArray[np.int64]:
    """``[streams, L]``: ``data`` cut into ``streams`` contiguous slices of equal length, so
    a batch row continues the same text from one chunk to the next."""
    length = len(data) // streams
    if length < 2:
        raise ValueError(f"{len(data)} bytes cannot feed {streams} streams")
    return data[: streams * length].astype(np.int64).reshape(streams, length)
