"""One replay: real series -> N streams -> Kafka, optionally measured end to end.

Used by ``statecast replay``, the benchmark's latency phase and the demo. The generator and
the measurer run as two tasks on one event loop, both owned and awaited here.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from statecast.loadtest.generator import Generator, GeneratorConfig, StreamPlan, make_producer
from statecast.loadtest.latency import LatencyBook, SendLog
from statecast.loadtest.measure import Measurer
from statecast.loadtest.series import series_for_topic
from statecast.loadtest.topics import ensure_topics


@dataclass(frozen=True)
class TopicLoad:
    """``streams`` concurrent streams replayed into ``topic``."""

    topic: str
    streams: int
    series_topic: str = ""  # which real series to replay (default: the topic's own name)


@dataclass(frozen=True)
class ReplaySettings:
    bootstrap: str
    loads: tuple[TopicLoad, ...]
    generator: GeneratorConfig
    partitions: int = 8  # for topics this replay creates
    measure: bool = False
    predictions_topic: str = "predictions"
    # After the last event is sent: how long to wait for predictions that are still due.
    drain_s: float = 30.0
    seed: int = 7


async def build_plans(settings: ReplaySettings) -> list[StreamPlan]:
    wanted = {load.topic: settings.partitions for load in settings.loads}
    if settings.measure:
        wanted.setdefault(settings.predictions_topic, settings.partitions)
    counts = await ensure_topics(settings.bootstrap, wanted)
    # Data loading is CPU work of a few seconds: keep it off the loop.
    return [
        StreamPlan(
            topic=load.topic,
            series=tuple(
                await asyncio.to_thread(series_for_topic, load.series_topic or load.topic)
            ),
            n_streams=load.streams,
            partitions=counts[load.topic],
            id_prefix=load.series_topic or load.topic,
            seed=settings.seed,
        )
        for load in settings.loads
    ]


class Progress:
    """The live line: events sent and predictions matched per second over the last update."""

    def __init__(self, gen: Generator, book: LatencyBook | None) -> None:
        self._gen, self._book = gen, book
        self._last = (time.monotonic(), 0, 0)

    def __call__(self) -> str:
        now = time.monotonic()
        then, sent0, matched0 = self._last
        dt = max(now - then, 1e-9)
        sent = self._gen.events
        line = f"sent {sent:,} ({(sent - sent0) / dt:,.0f}/s)"
        matched = 0
        if self._book is not None:
            matched = self._book.matched
            s = self._book.summary()
            line += (
                f" | predictions {matched:,} ({(matched - matched0) / dt:,.0f}/s)"
                f" p50 {s['p50_ms']:.1f} ms p99 {s['p99_ms']:.1f} ms"
            )
        self._last = (now, sent, matched)
        return line


async def run_replay(
    settings: ReplaySettings,
    plans: Sequence[StreamPlan] | None = None,
    on_prediction: Callable[[dict[str, Any], float], None] | None = None,
    progress_out: TextIO | None = sys.stderr,
    generator_factory: Callable[..., Generator] = Generator,
) -> dict[str, Any]:
    """Produce (and measure); return the JSON-able summary. ``generator_factory`` builds
    the event source (``loadtest.synthetic.generator_factory`` for GAN streams)."""
    plans = list(plans) if plans is not None else await build_plans(settings)
    sends = SendLog()
    book = LatencyBook(sends) if settings.measure else None
    measurer = (
        Measurer(settings.bootstrap, settings.predictions_topic, book, on_prediction)
        if book is not None
        else None
    )
    producer = make_producer(settings.bootstrap)
    await producer.start()
    try:
        gen = generator_factory(producer, plans, settings.generator, sends)
        if measurer is None:
            report = await gen.run()
            if progress_out is not None:
                progress_out.write(f"sent {report.events:,} in {report.seconds:.1f} s\n")
            return {"generator": report.to_dict(), "streams": gen.streams}
        assert book is not None
        await measurer.start()
        try:
            gen_task = asyncio.create_task(gen.run(), name="generator")
            done_at: list[float] = []

            def until() -> bool:
                if not gen_task.done():
                    return False
                if not done_at:
                    done_at.append(time.monotonic())
                return book.matched >= sends.records or (
                    time.monotonic() - done_at[0] > settings.drain_s
                )

            measure_task = asyncio.create_task(
                measurer.run(
                    until,
                    idle_timeout_s=settings.drain_s + (settings.generator.duration_s or 0) + 60,
                    progress=Progress(gen, book) if progress_out is not None else None,
                    out=progress_out or sys.stderr,
                ),
                name="measurer",
            )
            try:
                report = await gen_task
                await measure_task
            finally:
                for task in (gen_task, measure_task):
                    if not task.done():
                        task.cancel()
                await asyncio.gather(gen_task, measure_task, return_exceptions=True)
        finally:
            await measurer.stop()
        return {
            "generator": report.to_dict(),
            "streams": gen.streams,
            "measurement": book.summary(),
        }
    finally:
        await producer.stop()
