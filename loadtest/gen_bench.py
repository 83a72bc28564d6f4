"""Characters generated per second by the ``generate`` route's continuation step.

``python -m statecast.loadtest.gen_bench`` runs the shipped ``char_lstm`` exactly as the
worker's inference thread does (``run_waves`` with the route's codec on a
:class:`~statecast.worker.inference.StepSession`), for polls of 1, 64 and 512 streams that
each sent one prompt, and prints one JSON line per poll size:

- ``waves_s``: the waves over the prompts alone (``max_new_chars=0``);
- ``generate_s``: the extra time the continuations cost (same poll, ``max_new_chars=N``);
- ``chars_per_s``: continuation bytes produced per second of ``generate_s``;
- ``step_calls``: ``session.run`` calls of the generation (one per byte for all streams).

No broker or Redis: this isolates the generation cost the route adds to a poll (the
worker's throughput on the other stages is ``statecast bench``'s business).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from statecast.contract.manifest import DEFAULT_MANIFEST, check_digest, load_manifest
from statecast.contract.paths import PACKAGE_ROOT
from statecast.contract.spec import ModelSpec
from statecast.worker.batching import StreamWork, run_waves
from statecast.worker.codecs.base import Array, Decoded, RawRecord
from statecast.worker.codecs.generate import GenerateCodec
from statecast.worker.inference import StepSession

PROMPTS = (
    "This movie was one of the best I have seen in years. The acting",
    "I rented this film expecting a light comedy, but what I got was",
    "The plot makes no sense at all and the dialogue is",
    "Brilliant performances from the whole cast, especially",
)


class CountingSession:
    def __init__(self, session: StepSession) -> None:
        self.session = session
        self.calls = 0

    def run(self, feeds: Mapping[str, Array]) -> dict[str, Array]:
        self.calls += 1
        return self.session.run(feeds)


def _works(codec: GenerateCodec, streams: int) -> list[StreamWork]:
    works = []
    for i in range(streams):
        text = PROMPTS[i % len(PROMPTS)]
        raw = RawRecord(
            "bench",
            0,
            i,
            0,
            f"doc-{i}".encode(),
            orjson.dumps({"stream": f"doc-{i}", "text": text}),
        )
        (dec,) = codec.decode([raw])
        assert isinstance(dec, Decoded)
        works.append(StreamWork(f"k{i}", f"doc-{i}", 0, records=[(raw, dec)]))
    return works


def measure(streams: int, max_new: int, threads: int = 1) -> dict[str, Any]:
    entry = load_manifest(DEFAULT_MANIFEST)["char_lstm"]
    path = check_digest(entry, PACKAGE_ROOT)
    session = StepSession(path, "cpu", threads, 1)
    spec = ModelSpec.from_metadata(session.metadata())
    options = {"max_new_chars": str(max_new), "temperature": "0.8", "top_k": "0"}
    base = GenerateCodec(spec, {**options, "max_new_chars": "0"}, path.parent)
    codec = GenerateCodec(spec, options, path.parent)
    counted = CountingSession(session)
    run_waves(counted, base, spec.states, _works(base, streams))  # warm-up
    t0 = time.perf_counter()
    run_waves(counted, base, spec.states, _works(base, streams))
    waves_s = time.perf_counter() - t0
    counted.calls = 0
    t0 = time.perf_counter()
    outcome = run_waves(counted, codec, spec.states, _works(codec, streams))
    total_s = time.perf_counter() - t0
    generated = sum(int(p["continuation_bytes"]) for _, _, p in outcome.predictions)
    gen_s = max(total_s - waves_s, 1e-9)
    return {
        "streams": streams,
        "max_new_chars": max_new,
        "generated_bytes": generated,
        "waves_s": round(waves_s, 4),
        "generate_s": round(gen_s, 4),
        "chars_per_s": round(generated / gen_s, 1),
        "step_calls": counted.calls - outcome.waves,
        "threads": threads,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--streams", type=int, nargs="*", default=[1, 64, 512])
    parser.add_argument("--max-new-chars", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    for n in args.streams:
        print(orjson.dumps(measure(n, args.max_new_chars, args.threads)).decode(), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
