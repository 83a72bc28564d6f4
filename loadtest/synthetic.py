"""Synthetic sensor streams from the ``gan_demand`` generator, as many as asked, all distinct.

``statecast replay --synthetic gan --streams 1000000`` replaces the replay of one real
series from shifted start rows (a million copies of the same 365 days) with a million
different streams: stream ``i`` runs day after day through the real 2014 calendar from its
own start day, with its own temperature offset (a site a little warmer or cooler), and every
(stream, day) gets fresh generator noise, so no two streams share a day. Each day's demand
comes from the GAN's ONNX generator (onnxruntime only, no torch) conditioned on that day's
real temperature profile (plus the stream's offset) and workday flag. Events are the sensor
route's: ``{"stream", "ts", "values": {"demand", "temperature", "workday"}}``.

Days are synthesised lazily, one block of :data:`BLOCK_STREAMS` streams at a time, when the
round-robin cursor first needs that block's next day: one ``session.run`` per block-day,
then only byte formatting per event. Everything is seeded: a run with the same seed and
stream count sends the same events.

:class:`SyntheticGenerator` is a :class:`~statecast.loadtest.generator.Generator` (same
``run``, acks, rate and count handling) that builds its events here instead of from
pre-rendered series. ``python -m statecast.loadtest.synthetic`` prints how many events per
second the synthesis and formatting alone sustain (no broker).
"""

from __future__ import annotations

import argparse
import functools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson
from aiokafka import AIOKafkaProducer

from statecast.contract.manifest import DEFAULT_MANIFEST, check_digest, load_manifest
from statecast.contract.paths import PACKAGE_ROOT
from statecast.loadtest.generator import Generator, GeneratorConfig, StreamPlan, partition_for
from statecast.loadtest.latency import SendLog

MODEL_NAME = "gan_demand"
DAY = 48
HALF_HOUR_MS = 30 * 60 * 1000
START_MS = 1_388_534_400_000  # 2014-01-01T00:00:00Z, as models.datasets dates elecdemand
BLOCK_STREAMS = 8192
TEMPERATURE_OFFSET_SD = 1.5  # degC between sites
Floats = npt.NDArray[np.float32]


@dataclass(frozen=True)
class RealCalendar:
    """The real 2014 days the streams run through: temperatures and workday flags."""

    temperature: Floats  # [days, 48] degC
    workday: npt.NDArray[np.int64]  # [days]

    @classmethod
    def load(cls) -> RealCalendar:
        from statecast.models.datasets import load_elecdemand

        frame = load_elecdemand()
        n = len(frame) // DAY
        temp = frame["temperature"].to_numpy(np.float32)[: n * DAY].reshape(n, DAY)
        work = frame["workday"].to_numpy(np.int64)[: n * DAY].reshape(n, DAY)[:, 0]
        return cls(temp, work)

    def __len__(self) -> int:
        return len(self.workday)


class GanSynthesiser:
    """Synthetic days for blocks of streams from the ONNX generator."""

    def __init__(
        self,
        n_streams: int,
        seed: int = 7,
        onnx_path: Path | None = None,
        calendar: RealCalendar | None = None,
        threads: int = 1,
    ) -> None:
        from statecast.worker.inference import build_session

        if onnx_path is None:
            entry = load_manifest(DEFAULT_MANIFEST)[MODEL_NAME]
            onnx_path = check_digest(entry, PACKAGE_ROOT)
        self.session = build_session(onnx_path, "cpu", intra_op_threads=threads)
        self.noise_dim = int(self.session.get_inputs()[1].shape[1])
        self.calendar = calendar or RealCalendar.load()
        self.n_streams = n_streams
        self.seed = seed
        rng = np.random.default_rng([seed, n_streams])
        self.start_day = rng.integers(0, len(self.calendar), size=n_streams)
        self.temp_offset = rng.normal(0.0, TEMPERATURE_OFFSET_SD, size=n_streams).astype(np.float32)
        # Each stream's first timestamp, as Python ints for the per-event arithmetic.
        self.first_ts: list[int] = (START_MS + self.start_day * (DAY * HALF_HOUR_MS)).tolist()

    def block_day(self, block: int, day: int) -> tuple[Floats, Floats, npt.NDArray[np.int64]]:
        """Demand (GW), temperature (degC) ``[S, 48]`` and workday ``[S]`` of day ``day``
        (counted from each stream's start) for the streams of ``block``."""
        lo = block * BLOCK_STREAMS
        hi = min(lo + BLOCK_STREAMS, self.n_streams)
        cal_day = (self.start_day[lo:hi] + day) % len(self.calendar)
        temp = self.calendar.temperature[cal_day] + self.temp_offset[lo:hi, None]
        work = self.calendar.workday[cal_day]
        x = np.concatenate([temp, work[:, None].astype(np.float32)], axis=1)
        rng = np.random.default_rng([self.seed, block, day])
        z = rng.standard_normal((hi - lo, self.noise_dim), dtype=np.float32)
        (demand,) = self.session.run(["demand"], {"x": x, "z": z})
        return np.asarray(demand, np.float32), temp.astype(np.float32), work

    def event_ts(self, stream: int, step: int) -> int:
        return self.first_ts[stream] + step * HALF_HOUR_MS


def _number_table(scale: int, low: int, high: int, fmt: bytes) -> list[bytes]:
    """``fmt % (code / scale)`` for every integer code in ``low..high-1`` (offset by low)."""
    return [fmt % (code / scale) for code in range(low, high)]


# Demand (GW, 4 decimals) and temperature (degC, 1 decimal) as text, by integer code:
# formatting a float per event was the synthesiser's largest cost; a lookup is not.
DEMAND_SCALE, DEMAND_RANGE = 10_000, (0, 200_000)  # 0.0000 .. 19.9999 GW
TEMP_SCALE, TEMP_RANGE = 10, (-600, 900)  # -60.0 .. 89.9 degC


@functools.cache
def _number_texts() -> tuple[list[bytes], list[bytes]]:
    return (
        _number_table(DEMAND_SCALE, *DEMAND_RANGE, b"%.4f"),
        _number_table(TEMP_SCALE, *TEMP_RANGE, b"%.1f"),
    )


class _Blocks:
    """The current synthetic day of each block of streams, rendered one half-hour column
    at a time: the round-robin order sends every stream's step k before any step k + 1,
    so each block keeps one column (its streams' value tails for the current step)."""

    def __init__(self, synth: GanSynthesiser) -> None:
        self.synth = synth
        self.day: dict[int, int] = {}
        self.codes: dict[int, tuple[npt.NDArray[np.int32], npt.NDArray[np.int16], list[int]]] = {}
        self.column: dict[int, tuple[int, list[bytes]]] = {}
        self.runs = 0

    def _day(self, block: int, day: int) -> None:
        demand, temp, work = self.synth.block_day(block, day)
        d = np.clip(np.rint(demand * DEMAND_SCALE), DEMAND_RANGE[0], DEMAND_RANGE[1] - 1)
        t = np.clip(np.rint(temp * TEMP_SCALE), TEMP_RANGE[0], TEMP_RANGE[1] - 1)
        # Small integer codes: a million streams hold 123 block-days of these at once.
        self.codes[block] = (
            (d - DEMAND_RANGE[0]).astype(np.int32),
            (t - TEMP_RANGE[0]).astype(np.int16),
            work.tolist(),
        )
        self.day[block] = day
        self.runs += 1

    def tail(self, stream: int, step: int) -> bytes:
        """``,"values":{...}}``: the part of the event after its timestamp."""
        block = stream // BLOCK_STREAMS
        col = self.column.get(block)
        if col is None or col[0] != step:
            day, hh = divmod(step, DAY)
            if self.day.get(block) != day:
                self._day(block, day)
            dcode, tcode, work = self.codes[block]
            dt, tt = _number_texts()
            col = (
                step,
                [
                    _TAIL % (dt[a], tt[b], w)
                    for a, b, w in zip(
                        dcode[:, hh].tolist(), tcode[:, hh].tolist(), work, strict=True
                    )
                ],
            )
            self.column[block] = col
        return col[1][stream % BLOCK_STREAMS]


_TAIL = b',"values":{"demand":%s,"temperature":%s,"workday":%d}}'


@dataclass(frozen=True)
class StreamSet:
    """``n_streams`` synthetic streams on ``topic`` named ``<prefix>-<i>``."""

    topic: str
    n_streams: int
    partitions: int
    prefix: str

    @classmethod
    def of(cls, plan: StreamPlan) -> StreamSet:
        return cls(plan.topic, plan.n_streams, plan.partitions, plan.id_prefix or plan.topic)


class SyntheticStreams:
    """Every stream of every set flattened for the hot loop; ``event`` builds one value."""

    def __init__(
        self, sets: Sequence[StreamSet], seed: int = 7, onnx_path: Path | None = None
    ) -> None:
        self.topics: list[str] = []
        self.keys: list[bytes] = []
        self.prefixes: list[bytes] = []
        self.partitions: list[int] = []
        self._blocks: list[_Blocks] = []
        self._local: list[int] = []  # index of the stream within its set
        self._set_of: list[int] = []
        for k, st in enumerate(sets):
            self._blocks.append(
                _Blocks(GanSynthesiser(st.n_streams, seed=seed + k, onnx_path=onnx_path))
            )
            for i in range(st.n_streams):
                key = f"{st.prefix}-{i:07d}".encode()
                self.topics.append(st.topic)
                self.keys.append(key)
                self.prefixes.append(b'{"stream":"' + key + b'","ts":')
                self.partitions.append(partition_for(key, st.partitions))
                self._local.append(i)
                self._set_of.append(k)

    def __len__(self) -> int:
        return len(self.keys)

    def event(self, i: int, step: int, now_ms: int | None = None) -> bytes:
        """Stream ``i``'s event number ``step``; ``now_ms`` replaces the data's time."""
        blocks = self._blocks[self._set_of[i]]
        local = self._local[i]
        ts = blocks.synth.event_ts(local, step) if now_ms is None else now_ms
        return self.prefixes[i] + b"%d" % ts + blocks.tail(local, step)

    @property
    def block_days(self) -> int:
        """How many block-days were synthesised so far (one ``session.run`` each)."""
        return sum(b.runs for b in self._blocks)


class SyntheticGenerator(Generator):
    """Produces GAN-synthesised sensor events for the streams of ``plans`` (their topic,
    stream count, partitions and id prefix; their real series are not used)."""

    def __init__(
        self,
        producer: AIOKafkaProducer,
        plans: Sequence[StreamPlan],
        config: GeneratorConfig,
        sends: SendLog | None = None,
        seed: int = 7,
        onnx_path: Path | None = None,
    ) -> None:
        # Generator's own __init__ would pre-render every stream's real series; only its
        # cursor and ack bookkeeping are needed here.
        self._start(producer, config, sends)
        self.synthetic = SyntheticStreams([StreamSet.of(p) for p in plans], seed, onnx_path)

    @property
    def streams(self) -> int:
        return len(self.synthetic)

    async def produce(self, n: int) -> None:
        """Build and send the next ``n`` events of the round-robin order."""
        s = self.synthetic
        now = time.time()
        now_ms = int(now * 1000)
        stamp = now_ms if self._ts_now else None
        builders: dict[tuple[str, int], Any] = {}
        counts: dict[tuple[str, int], int] = {}
        step, i, total = self._step, self._next, len(s)
        for _ in range(n):
            value = s.event(i, step, stamp)
            tp = (s.topics[i], s.partitions[i])
            builder = builders.get(tp)
            if builder is None:
                builder = builders[tp] = self._producer.create_batch()
                counts[tp] = 0
            if builder.append(timestamp=now_ms, key=s.keys[i], value=value) is None:
                await self._send(builder, tp, counts[tp], now)
                builder = builders[tp] = self._producer.create_batch()
                counts[tp] = 0
                builder.append(timestamp=now_ms, key=s.keys[i], value=value)
            counts[tp] += 1
            i += 1
            if i == total:
                i = 0
                step += 1
        self._step, self._next = step, i
        for tp, builder in builders.items():
            await self._send(builder, tp, counts[tp], now)
        self.events += n


def generator_factory(
    seed: int = 7, onnx_path: Path | None = None
) -> Callable[..., SyntheticGenerator]:
    """A drop-in for ``Generator`` in ``loadtest.replay.run_replay``."""

    def make(
        producer: AIOKafkaProducer,
        plans: Sequence[StreamPlan],
        config: GeneratorConfig,
        sends: SendLog | None = None,
    ) -> SyntheticGenerator:
        return SyntheticGenerator(producer, plans, config, sends, seed=seed, onnx_path=onnx_path)

    return make


# -- throughput of synthesis + formatting alone (no broker) ------------------------------


def measure(
    streams: int, events: int, seed: int = 7, onnx_path: Path | None = None
) -> dict[str, Any]:
    """Events/s of building sensor events from GAN days, in the replay's round-robin order
    (what the generator does per event, minus the producer)."""
    t0 = time.perf_counter()
    synthetic = SyntheticStreams([StreamSet("sensor", streams, 8, "sensor")], seed, onnx_path)
    setup_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    size = step = i = 0
    for _ in range(events):
        size += len(synthetic.event(i, step))
        i += 1
        if i == streams:
            i, step = 0, step + 1
    dt = time.perf_counter() - t0
    real_s = _real_replay_seconds(streams, events)
    return {
        "streams": streams,
        "events": events,
        "setup_s": round(setup_s, 2),
        "seconds": round(dt, 3),
        "events_per_s": round(events / dt, 1),
        "mean_event_bytes": round(size / events, 1),
        "block_days_synthesised": synthetic.block_days,
        # The same loop over the real series' pre-rendered rows (what `statecast replay`
        # without --synthetic does per event), measured now: the ratio is what counts on a
        # busy machine.
        "real_replay_events_per_s": round(events / real_s, 1),
    }


def _real_replay_seconds(streams: int, events: int) -> float:
    from statecast.loadtest.series import sensor_series

    series = sensor_series()[0]
    tails, ts = series.render_values(), series.ts.tolist()
    prefixes = [b'{"stream":"sensor-%07d","ts":' % i for i in range(streams)]
    starts = np.random.default_rng(7).integers(0, len(series), size=streams).tolist()
    t0 = time.perf_counter()
    step = i = 0
    n = len(series)
    for _ in range(events):
        row = (starts[i] + step) % n
        _ = prefixes[i] + b"%d" % ts[row] + tails[row]
        i += 1
        if i == streams:
            i, step = 0, step + 1
    return time.perf_counter() - t0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--streams", type=int, default=1_000_000)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    print(orjson.dumps(measure(args.streams, args.events, args.seed)).decode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
