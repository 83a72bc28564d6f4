"""The loop's fast RawRecord construction builds the dataclass's own objects."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

from statecast.worker.codecs.base import RawRecord
from statecast.worker.loop import _RAW_FIELDS, raw_records


def test_raw_records_equal_the_dataclass_built_ones() -> None:
    fetched = [
        SimpleNamespace(offset=7, timestamp=1_700_000_000_000, key=b"s1", value=b"{}"),
        SimpleNamespace(offset=8, timestamp=-1, key=None, value=None),
    ]
    got = raw_records("sensors", 3, fetched)
    want = [RawRecord("sensors", 3, r.offset, r.timestamp, r.key, r.value) for r in fetched]
    assert got == want
    assert [hash(g) for g in got] == [hash(w) for w in want]
    assert all(type(g) is RawRecord for g in got)


def test_the_fast_path_sets_every_field_of_the_dataclass() -> None:
    # A field added to RawRecord must be added to raw_records too.
    assert tuple(f.name for f in dataclasses.fields(RawRecord)) == _RAW_FIELDS
    (one,) = raw_records("t", 0, [SimpleNamespace(offset=1, timestamp=2, key=b"k", value=b"v")])
    assert {name: getattr(one, name) for name in _RAW_FIELDS} == {
        "topic": "t",
        "partition": 0,
        "offset": 1,
        "timestamp_ms": 2,
        "key": b"k",
        "value": b"v",
    }
