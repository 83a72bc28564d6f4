"""The records of the hostile soak: valid streams on every route, mixed with hostile records
of every class the worker must survive, each with the dead-letter reason it must get.

Deterministic for a seed. Valid records of one stream keep their order; hostile records are
spread between them at random positions. Some hostile records are keyed as a valid stream
(a body naming another stream, a broken event of that stream): they must be dead-lettered
without touching that stream's state.
"""

from __future__ import annotations

import io
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import orjson
from PIL import Image

FORECAST, TEXT, FRAMES = "forecast", "text", "frames"
ROUTE_SHARE = {FORECAST: 0.6, TEXT: 0.2, FRAMES: 0.2}
_WORDS = [
    "the",
    "film",
    "was",
    "great",
    "awful",
    "boring",
    "brilliant",
    "moving",
    "dull",
    "superb",
    "acting",
    "plot",
    "story",
    "cast",
    "music",
    "ending",
    "slow",
    "fast",
    "funny",
    "sad",
    "i",
    "loved",
    "hated",
    "it",
    "this",
    "a",
    "an",
    "and",
    "but",
    "not",
    "very",
    "really",
]


@dataclass(frozen=True)
class SoakRecord:
    route: str
    key: bytes | None
    value: bytes
    # None for a valid record; else the dead-letter reason it must get and its class name.
    reason: str | None = None
    hostile: str | None = None


@dataclass
class SoakData:
    records: list[SoakRecord] = field(default_factory=list)
    # Streams whose stored state the soak corrupts before the run, by how.
    redis_poison: dict[tuple[str, str], str] = field(default_factory=dict)

    @property
    def hostile(self) -> int:
        return sum(1 for r in self.records if r.hostile is not None)


# -- valid records --------------------------------------------------------------------------


def _sensor_event(stream: str, ts: int, features: Sequence[str], rng: random.Random) -> bytes:
    values = {f: round(rng.gauss(0.0, 1.0), 4) for f in features}
    return orjson.dumps({"stream": stream, "ts": ts, "values": values})


def _sentence(rng: random.Random) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(rng.randint(4, 24)))


def frame_png(h: int, w: int, rng: random.Random) -> bytes:
    yy, xx = np.mgrid[0:h, 0:w]
    phase = rng.random() * 6.28
    pixels = (127 + 120 * np.sin(xx / (2 + rng.random() * 4) + yy / 5 + phase)).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


def _jpeg(size: int, progressive: bool, repeat_last_scan: int = 0) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (size, size), 128).save(buf, "JPEG", progressive=progressive)
    data = buf.getvalue()
    if repeat_last_scan:
        last = data[[m.start() for m in re.finditer(rb"\xff\xda", data)][-1] : -2]
        data = data[:-2] + last * repeat_last_scan + data[-2:]
    return data


# -- hostile classes: (route, make(rng, victim stream) -> (key, value), expected reason) ----

Maker = Callable[[random.Random, str], tuple[bytes | None, bytes]]


def _event(stream: object, ts: str, values: str) -> bytes:
    """A forecast event with ``ts`` and ``values`` written as raw JSON text (orjson cannot
    write 2**63 or 1e39-as-float32-overflow the way a hostile producer can)."""
    return b'{"stream":%b,"ts":%b,"values":{%b}}' % (
        orjson.dumps(stream),
        ts.encode(),
        values.encode(),
    )


# Heavy classes (hundreds of KB each) are rarer so a 100,000-record soak stays ~100 MB.
_RARE = 0.25


def _hostile_classes(features: Sequence[str]) -> list[tuple[str, str, Maker, str, float]]:
    vals = ",".join(f'"{f}":1.0' for f in features)
    huge = ",".join(f'"{f}":1e39' for f in features)  # overflows float32
    long_id = "L" * 600
    bomb_jpeg = _jpeg(2048, progressive=True, repeat_last_scan=1000)
    big_jpeg = _jpeg(2100, progressive=False)  # 4.4 MP, over the 4 MP budget

    def keyed(value: Callable[[str], bytes]) -> Maker:
        return lambda rng, victim: (victim.encode(), value(victim))

    return [
        # -- forecast ---------------------------------------------------------------------
        (FORECAST, "not_json", keyed(lambda v: b"{garbage"), "not_json", 1),
        (FORECAST, "not_object", keyed(lambda v: b"[1,2,3]"), "schema", 1),
        (FORECAST, "parse_bomb", keyed(lambda v: b"[" + b"[]," * 1300 + b"[]]"), "schema", 1),
        (FORECAST, "stream_wrong_type", keyed(lambda v: _event(5, "1", vals)), "wrong_type", 1),
        (FORECAST, "missing_feature", keyed(lambda v: _event(v, "1", "")), "missing_feature", 1),
        (FORECAST, "not_finite", keyed(lambda v: _event(v, "1", huge)), "not_finite", 1),
        (
            FORECAST,
            "ts_int64",
            keyed(lambda v: _event(v, str(2**63), vals)),
            "ts_out_of_range",
            1,
        ),
        (
            FORECAST,
            "key_mismatch",
            lambda rng, v: (b"someone-else", _event(v, "1", vals)),
            "key_mismatch",
            1,
        ),
        (
            FORECAST,
            "long_stream_id",
            lambda rng, v: (long_id.encode(), _event(long_id, "1", vals)),
            "stream_too_long",
            1,
        ),
        (FORECAST, "too_large", keyed(lambda v: b" " * 5000), "too_large", 1),
        (FORECAST, "empty", keyed(lambda v: b""), "empty", 1),
        # -- text ---------------------------------------------------------------------------
        (
            TEXT,
            "poison_ts",
            keyed(lambda v: b'{"stream":%b,"ts":1e300,"text":"hi"}' % orjson.dumps(v)),
            "ts_out_of_range",
            1,
        ),
        (
            TEXT,
            "nfkc_amplification",
            keyed(lambda v: orjson.dumps({"stream": v, "text": "\ufdfa" * 5000})),
            "too_large",
            _RARE,
        ),
        (
            TEXT,
            "token_amplification",
            keyed(lambda v: orjson.dumps({"stream": v, "text": "\ufdfa" * 1100})),
            "too_many_tokens",
            _RARE,
        ),
        (
            TEXT,
            "text_bytes",
            keyed(lambda v: orjson.dumps({"stream": v, "text": "a " * 70_000})),
            "too_large",
            _RARE,
        ),
        (
            TEXT,
            "text_wrong_type",
            keyed(lambda v: orjson.dumps({"stream": v, "text": 5})),
            "wrong_type",
            1,
        ),
        (
            TEXT,
            "text_empty",
            keyed(lambda v: orjson.dumps({"stream": v, "text": "  "})),
            "empty",
            1,
        ),
        (
            TEXT,
            "text_key_mismatch",
            lambda rng, v: (b"other-conv", orjson.dumps({"stream": v, "text": "great film"})),
            "key_mismatch",
            1,
        ),
        # -- frames -------------------------------------------------------------------------
        (FRAMES, "jpeg_scan_bomb", keyed(lambda v: bomb_jpeg), "too_many_scans", 1),
        (FRAMES, "pixels", keyed(lambda v: big_jpeg), "wrong_size", _RARE),
        (FRAMES, "undecodable", lambda rng, v: (v.encode(), rng.randbytes(300)), "undecodable", 1),
        (FRAMES, "frame_no_key", lambda rng, v: (None, frame_png(32, 32, rng)), "no_key", 1),
        (
            FRAMES,
            "frame_long_key",
            lambda rng, v: (b"K" * 600, frame_png(32, 32, rng)),
            "stream_too_long",
            1,
        ),
        (
            FRAMES,
            "frame_too_large",
            lambda rng, v: (v.encode(), rng.randbytes(270_000)),
            "too_large",
            _RARE,
        ),
        (FRAMES, "frame_empty", keyed(lambda v: b""), "empty", 1),
    ]


HOSTILE_CLASSES = tuple(c[1] for c in _hostile_classes(("a",)))
REDIS_POISONS = ("wrong_type", "corrupt")


def build(
    total: int,
    hostile_share: float,
    features: Sequence[str],
    frame_size: tuple[int, int],
    seed: int = 0,
) -> SoakData:
    """``total`` records, ``hostile_share`` of them hostile (every class at least once)."""
    rng = random.Random(seed)
    classes = _hostile_classes(features)
    n_hostile = max(len(classes), round(total * hostile_share))
    n_valid = total - n_hostile
    data = SoakData()
    per_route: dict[str, list[SoakRecord]] = {}
    victims: dict[str, list[str]] = {}
    # Valid streams: ~40 records each, round-robin so streams interleave.
    for route, share in ROUTE_SHARE.items():
        count = round(n_valid * share)
        n_streams = max(4, count // 40)
        streams = [f"{route}-{i}" for i in range(n_streams)]
        victims[route] = streams
        out: list[SoakRecord] = []
        for i in range(count):
            stream = streams[i % n_streams]
            step = i // n_streams
            if route == FORECAST:
                value = _sensor_event(stream, 1_700_000_000_000 + step * 1_800_000, features, rng)
            elif route == TEXT:
                value = orjson.dumps({"stream": stream, "text": _sentence(rng)})
            else:
                value = frame_png(frame_size[0], frame_size[1], rng)
            out.append(SoakRecord(route, stream.encode(), value))
        per_route[route] = out
        # Two streams per route start from a value we did not write.
        data.redis_poison[(route, streams[0])] = "wrong_type"
        data.redis_poison[(route, streams[1])] = "corrupt"
    # Every class once, the rest drawn by weight.
    picks = list(classes) + rng.choices(
        classes, [c[4] for c in classes], k=n_hostile - len(classes)
    )
    for route, name, make, reason, _ in picks:
        key, value = make(rng, rng.choice(victims[route]))
        hostile = SoakRecord(route, key, value, reason, name)
        seq = per_route[route]
        seq.insert(rng.randrange(len(seq) + 1), hostile)
    # Interleave the routes (each keeps its own order).
    cursors = {r: 0 for r in per_route}
    while cursors:
        route = rng.choices(list(cursors), [len(per_route[r]) - cursors[r] for r in cursors])[0]
        data.records.append(per_route[route][cursors[route]])
        cursors[route] += 1
        if cursors[route] == len(per_route[route]):
            del cursors[route]
    return data
