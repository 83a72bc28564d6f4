"""The built wheel works outside the repository.

The wheel is built from the tracked files (copied out, so the build writes nothing into the
checkout) and installed with ``--no-deps`` into a fresh venv. The runtime dependencies come
from the project's venv through a ``.pth`` line (no network, no second copy), placed after
a directory whose ``torch`` refuses to import: serving and checking the shipped models must
not need the training stack. Then, from an empty working directory, ``statecast worker
--help`` and ``statecast models verify --skip-parity`` (digests and embedded specs of every
shipped model, read from the installed package) must succeed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

from statecast.contract.manifest import DEFAULT_MANIFEST, load_manifest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent


def _tracked_copy(dest: Path) -> Path:
    """The checkout's tracked files (working-tree content, symlinks kept) under ``dest``."""
    listed = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout
    for rel in filter(None, listed.decode().split("\0")):
        src = ROOT / rel
        if not src.exists() and not src.is_symlink():
            continue  # deleted in the working tree, not yet committed
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            target.symlink_to(os.readlink(src))
        else:
            shutil.copy2(src, target)
    return dest


def _run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


def test_wheel_installs_outside_the_repository_and_serves(tmp_path: Path) -> None:
    src = _tracked_copy(tmp_path / "src")
    dist = tmp_path / "dist"
    build = ["wheel", "--no-deps", "--no-build-isolation", "-w", str(dist), str(src)]
    _run([sys.executable, "-m", "pip", *build], cwd=tmp_path)
    (wheel,) = dist.glob("statecast-*.whl")

    # What the package must carry: every file the shipped manifest names.
    names = set(zipfile.ZipFile(wheel).namelist())
    manifest = load_manifest(DEFAULT_MANIFEST)
    assert "statecast/models/manifest.json" in names
    assert "statecast/models/tokenizer/sentiment_lstm.json" in names
    # Manifest paths are relative to the package root (statecast/).
    for entry in manifest.values():
        for path in (entry.onnx, *(a.path for a in entry.artefacts.values())):
            assert f"statecast/{path}" in names, f"the wheel lacks {path} ({entry.name})"
    assert not any(n.split("/")[0] in ("worker", "models", "export", "loadtest") for n in names)

    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False, system_site_packages=False).create(env_dir)
    py = env_dir / "bin" / "python"
    _run(
        [sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", str(wheel)],
        cwd=tmp_path,
    )
    site = Path(
        subprocess.run(
            [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    blocker = tmp_path / "no-torch"
    (blocker / "torch").mkdir(parents=True)
    (blocker / "torch" / "__init__.py").write_text(
        "raise ImportError('torch must not be needed to serve or verify models')\n"
    )
    # .pth files are read in name order: the blocker comes before the dependencies.
    (site / "_0_no_torch.pth").write_text(f"{blocker}\n")
    (site / "_1_runtime_deps.pth").write_text(f"{sysconfig.get_paths()['purelib']}\n")

    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STATECAST_", "PYTHON"))}
    where = _run([str(py), "-c", "import statecast; print(statecast.__file__)"], cwd, env)
    assert str(site) in where, where  # the installed copy, not the checkout

    statecast = str(env_dir / "bin" / "statecast")
    out = _run([statecast, "worker", "--help"], cwd, env)
    assert "--max-records" in out
    out = _run([statecast, "models", "verify", "--skip-parity"], cwd, env)
    for name in manifest:
        assert name in out, out
