"""The frame route end to end: PNG/JPEG frames keyed by camera -> worker -> Kafka + Redis.

Serves the shipped ``video_lstm`` ONNX file (copied beside a manifest of its own), and with
``caption_every`` its caption decoder ``video_caption``. The
reference for every prediction is the same ONNX step run offline over each camera's
decoded frames one at a time, carrying state; bad frames must reach the dead-letter topic
with their reason and leave every camera's state alone.
"""

from __future__ import annotations

import io
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import orjson
import pytest
from PIL import Image
from prometheus_client import CollectorRegistry

from statecast.contract.manifest import ManifestEntry, load_manifest, upsert_entry
from statecast.contract.paths import PACKAGE_ROOT
from statecast.contract.spec import ModelSpec
from statecast.export.step_export import read_spec
from statecast.models.video_data import make_clips, synthetic_images
from statecast.worker.captions import Captioner
from statecast.worker.codecs.base import Decoded, RawRecord
from statecast.worker.codecs.frames import FrameCodec
from statecast.worker.loop import Worker
from statecast.worker.routing import Route
from tests.fixtures.e2e import by_stream, stored_state
from tests.fixtures.kafka import consume_all, create_topic, produce
from tests.fixtures.tiny_models import TinyModel, worker_settings

pytestmark = pytest.mark.integration

CAMERAS = 6
MODEL = "video_lstm"


@pytest.fixture(scope="module")
def shipped(tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    """The shipped model in a private root, so the test's manifest is its own."""
    entry = load_manifest()[MODEL]
    root = tmp_path_factory.mktemp("video")
    path = root / entry.onnx
    path.parent.mkdir(parents=True)
    shutil.copyfile(entry.onnx_path(PACKAGE_ROOT), path)
    manifest = root / "models" / "manifest.json"
    upsert_entry(
        ManifestEntry(entry.name, entry.version, entry.kind, entry.onnx, entry.sha256), manifest
    )
    return TinyModel(read_spec(path), manifest, root, path)


def png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def jpeg(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).resize((96, 64)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def offline(model: TinyModel, spec: ModelSpec, frames: list[bytes]) -> list[np.ndarray]:
    """One camera's probabilities, one frame at a time from a zero state, batch 1."""
    codec = FrameCodec(spec, {}, Path("."))
    sess = ort.InferenceSession(str(model.onnx_path), providers=["CPUExecutionProvider"])
    state = {s.input_name: np.zeros((s.layers, 1, s.hidden), np.float32) for s in spec.states}
    names = ["probs", *(s.output_name for s in spec.states)]
    out = []
    for i, value in enumerate(frames):
        (dec,) = codec.decode([RawRecord("t", 0, i, 0, b"cam", value)])
        assert isinstance(dec, Decoded), dec
        probs, *next_state = sess.run(names, {"x": dec.steps[0]["x"][None], **state})
        state = {s.input_name: a for s, a in zip(spec.states, next_state, strict=True)}
        out.append(probs[0])
    return out


async def test_frames_from_several_cameras_match_offline_and_bad_frames_dead_letter(
    shipped: TinyModel, kafka_bootstrap: str, redis_url: str, unique: Callable[[str], str]
) -> None:
    spec = shipped.spec
    h, w = int(spec.preprocess["height"]), int(spec.preprocess["width"])
    clips = make_clips(synthetic_images(CAMERAS, seed=11), CAMERAS, seed=12)
    frames: dict[str, list[bytes]] = {}
    for c in range(CAMERAS):
        n = int(clips.lengths[c])
        encode = jpeg if c % 3 == 0 else png  # every third camera sends larger JPEGs
        frames[f"cam-{c}"] = [encode(clips.frames[c, t]) for t in range(n)]
    assert clips.frames.shape[-2:] == (h, w)

    bad: list[tuple[bytes | None, bytes]] = [
        (b"cam-0", b"\x89PNG\r\n\x1a\n but not really"),  # undecodable
        (None, png(clips.frames[1, 0])),  # no camera id
        (b"cam-2", png(np.zeros((3000, 3000), np.uint8))),  # over max_pixels
        (b"cam-3", b"x" * 70_000),  # over max_bytes
    ]
    # Round-robin over cameras so their frames interleave across partitions; bad frames
    # ride in between and must not disturb any camera's sequence.
    records: list[tuple[bytes | None, bytes]] = []
    longest = max(len(v) for v in frames.values())
    for t in range(longest):
        for cam, seq in frames.items():
            if t < len(seq):
                records.append((cam.encode(), seq[t]))
        if t < len(bad):
            records.append(bad[t])
    good = sum(len(v) for v in frames.values())

    topic, preds, dlq = unique("frames"), unique("predictions"), unique("dlq")
    for name in (topic, preds, dlq):
        await create_topic(kafka_bootstrap, name, partitions=3)
    await produce(kafka_bootstrap, topic, records)
    route = Route(topic, MODEL, {"max_bytes": "65536", "max_pixels": "1000000"})
    settings = worker_settings(
        bootstrap=kafka_bootstrap,
        redis_url=redis_url,
        model=shipped,
        routes=[route],
        predictions=preds,
        dlq=dlq,
        group=unique("group"),
        prefix=unique("state"),
        max_batch_records=17,
    )
    registry = CollectorRegistry()
    stats = await Worker(settings, registry).run(max_records=len(records), idle_timeout_s=20)
    assert stats.records == len(records)
    assert stats.predictions == good
    assert stats.dead_letters == len(bad)

    got = await consume_all(kafka_bootstrap, preds, expected=good)
    by_cam: dict[str, list[dict[str, Any]]] = {}
    for r in got:
        p = orjson.loads(r.value)
        by_cam.setdefault(p["stream"], []).append(p)
    assert set(by_cam) == set(frames)
    classes = spec.outputs[0].fields
    for cam, seq in frames.items():
        rows = sorted(by_cam[cam], key=lambda p: int(p["id"].rsplit("/", 1)[1]))
        want = offline(shipped, spec, seq)
        assert len(rows) == len(want)
        for p, probs in zip(rows, want, strict=True):
            assert p["model"] == f"{MODEL}@{spec.version}"
            got_probs = np.array([p["prediction"]["probs"][c] for c in classes])
            np.testing.assert_allclose(got_probs, probs, atol=1e-4)
            assert p["prediction"]["class"] == classes[int(np.argmax(probs))]

    dead = await consume_all(kafka_bootstrap, dlq, expected=len(bad))
    reasons = sorted(dict(r.headers)["statecast.reason"].decode() for r in dead)
    assert reasons == sorted(["undecodable", "no_key", "wrong_size", "too_large"])
    for reason in ("undecodable", "no_key", "wrong_size", "too_large"):
        assert registry.get_sample_value("statecast_dead_letters_total", {"reason": reason}) == 1


CAPTION_MODEL = "video_caption"
EVERY = 4


@pytest.fixture(scope="module")
def shipped_with_captions(tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    """video_lstm and its caption decoder in a private root with a manifest of their own."""
    manifest = load_manifest()
    root = tmp_path_factory.mktemp("captions")
    target = root / "models" / "manifest.json"
    for name in (MODEL, CAPTION_MODEL):
        entry = manifest[name]
        path = root / entry.onnx
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(entry.onnx_path(PACKAGE_ROOT), path)
        upsert_entry(
            ManifestEntry(entry.name, entry.version, entry.kind, entry.onnx, entry.sha256), target
        )
    path = root / manifest[MODEL].onnx
    return TinyModel(read_spec(path), target, root, path)


def offline_states(model: TinyModel, frames: list[bytes]) -> list[dict[str, np.ndarray]]:
    """One camera's state after each frame (batch axis dropped), from a zero state."""
    spec = model.spec
    codec = FrameCodec(spec, {}, Path("."))
    sess = ort.InferenceSession(str(model.onnx_path), providers=["CPUExecutionProvider"])
    state = {s.name: np.zeros((s.layers, 1, s.hidden), np.float32) for s in spec.states}
    out = []
    for i, value in enumerate(frames):
        (dec,) = codec.decode([RawRecord("t", 0, i, 0, b"cam", value)])
        assert isinstance(dec, Decoded), dec
        feeds = {"x": dec.steps[0]["x"][None], **{s.input_name: state[s.name] for s in spec.states}}
        nxt = sess.run([s.output_name for s in spec.states], feeds)
        state = dict(zip([s.name for s in spec.states], nxt, strict=True))
        out.append({k: v[:, 0, :] for k, v in state.items()})
    return out


async def test_captions_every_n_frames_come_from_a_copy_of_each_cameras_state(
    shipped_with_captions: TinyModel,
    kafka_bootstrap: str,
    redis_url: str,
    unique: Callable[[str], str],
) -> None:
    model = shipped_with_captions
    captioner = Captioner.load(model.root / load_manifest(model.manifest)[CAPTION_MODEL].onnx)
    clips = make_clips(synthetic_images(5, seed=21), 5, seed=22)
    frames = {
        f"cam-{c}": [png(clips.frames[c, t]) for t in range(int(clips.lengths[c]))]
        for c in range(5)
    }
    records: list[tuple[bytes | None, bytes]] = []
    for t in range(max(len(v) for v in frames.values())):
        records += [(cam.encode(), seq[t]) for cam, seq in frames.items() if t < len(seq)]

    topic, preds, dlq = unique("frames"), unique("predictions"), unique("dlq")
    for name in (topic, preds, dlq):
        await create_topic(kafka_bootstrap, name, partitions=2)
    await produce(kafka_bootstrap, topic, records)
    prefix = unique("state")
    settings = worker_settings(
        bootstrap=kafka_bootstrap,
        redis_url=redis_url,
        model=model,
        routes=[Route(topic, MODEL, {"caption_every": str(EVERY)})],
        predictions=preds,
        dlq=dlq,
        group=unique("group"),
        prefix=prefix,
        max_batch_records=7,  # captions fall due in different polls and waves
    )
    stats = await Worker(settings, CollectorRegistry()).run(
        max_records=len(records), idle_timeout_s=20
    )
    assert stats.predictions == len(records)

    got = by_stream(await consume_all(kafka_bootstrap, preds, expected=len(records)))
    captioned = 0
    for cam, seq in frames.items():
        rows = sorted(got[cam], key=lambda p: int(p["id"].rsplit("/", 1)[1]))
        states = offline_states(model, seq)
        assert len(rows) == len(seq)
        for k, (p, state) in enumerate(zip(rows, states, strict=True), start=1):
            pred = p["prediction"]
            if k % EVERY:
                assert "caption" not in pred, (cam, k)
                continue
            captioned += 1
            assert pred["frames_seen"] == k
            (want,) = captioner.captions(state["h"].reshape(1, -1))
            assert pred["caption"] == want
            assert pred["caption"].startswith("a ")
        # The stored state advanced over the real frames only: decoding never touched it.
        stored = await stored_state(redis_url, model, prefix, cam)
        assert stored is not None
        tensors, _ = stored
        assert float(tensors["n"].reshape(-1)[0]) == len(seq)
        np.testing.assert_allclose(tensors["h"], states[-1]["h"], atol=1e-5)
    assert captioned == sum(len(v) // EVERY for v in frames.values())
