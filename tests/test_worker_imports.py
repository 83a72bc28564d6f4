"""The import graph, read from the source (ast) and checked in a fresh interpreter.

- The serving side (``statecast.worker``) never imports the exporter, the training code or
  the load tools, nor torch or keras: a worker image needs none of them.
- Nothing imports the bare top-level names ``worker``, ``models``, ``export``,
  ``loadtest``: they are folders of the repository, importable only as
  ``statecast.<name>`` (an installed wheel has no such top-level packages).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parent.parent
WORKER = ROOT / "worker"
FORBIDDEN_IN_WORKER = (
    "statecast.export",
    "statecast.models",
    "statecast.loadtest",
    "torch",
    "keras",
    "tensorflow",
)
BARE = ("worker", "models", "export", "loadtest")
SOURCE_DIRS = ("statecast", "worker", "models", "export", "loadtest", "tests", "examples")


def _python_files(top: Path) -> Iterator[Path]:
    for path in sorted(top.rglob("*.py")):
        if not any(part.startswith(".") for part in path.relative_to(ROOT).parts):
            yield path


def _module_name(path: Path) -> str:
    """``worker/state/store.py`` -> ``statecast.worker.state.store``."""
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    if parts and parts[0] in BARE:
        parts.insert(0, "statecast")
    return ".".join(parts)


def imports_of(path: Path) -> list[tuple[int, str]]:
    return imports_in(path.read_text(), _module_name(path), path.name == "__init__.py")


def imports_in(source: str, module: str, is_package: bool) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in ``source`` (the text of ``module``),
    relative ones resolved, imports inside functions included."""
    package = module.split(".") if is_package else module.split(".")[:-1]
    out: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                name = ".".join([*base, node.module] if node.module else base)
            else:
                name = node.module or ""
            out.append((node.lineno, name))
    return out


def _is_under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def test_the_worker_never_imports_exporter_training_or_load_tools() -> None:
    files = list(_python_files(WORKER))
    assert len(files) > 20  # the walk found the worker package
    bad = [
        f"{path.relative_to(ROOT)}:{line}: {name}"
        for path in files
        for line, name in imports_of(path)
        if any(_is_under(name, p) for p in FORBIDDEN_IN_WORKER)
    ]
    assert not bad, "statecast.worker imports what it must not:\n" + "\n".join(bad)


def test_no_module_imports_the_bare_folder_names() -> None:
    bad = [
        f"{path.relative_to(ROOT)}:{line}: {name}"
        for top in SOURCE_DIRS
        if (ROOT / top).is_dir()
        for path in _python_files(ROOT / top)
        for line, name in imports_of(path)
        if any(_is_under(name, b) for b in BARE)
    ]
    assert not bad, "import them as statecast.<name>:\n" + "\n".join(bad)


def test_the_import_reader_sees_what_it_must_refuse() -> None:
    # The checks above can only fail if the reader finds these imports at all.
    source = (
        "import torch\n"
        "from worker import loop\n"
        "def f():\n"
        "    from ..export import parity\n"
        "    from . import batching\n"
    )
    names = [name for _, name in imports_in(source, "statecast.worker.probe", False)]
    assert names == ["torch", "worker", "statecast.export", "statecast.worker"]


def test_one_onnx_runtime_session_builder() -> None:
    """Serving, parity, load tools and exporters all build sessions through
    ``statecast.worker.inference.build_session`` (same options, providers, threads)."""
    builders = [
        f"{path.relative_to(ROOT)}:{node.lineno}"
        for top in ("statecast", "worker", "models", "export", "loadtest", "examples")
        if (ROOT / top).is_dir()
        for path in _python_files(ROOT / top)
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Call)
        and (
            (isinstance(node.func, ast.Attribute) and node.func.attr == "InferenceSession")
            or (isinstance(node.func, ast.Name) and node.func.id == "InferenceSession")
        )
    ]
    assert [b.split(":")[0] for b in builders] == ["worker/inference.py"], builders


def test_importing_every_worker_module_loads_no_training_code() -> None:
    """The same at run time: imports done inside functions or by libraries count too."""
    modules = sorted(
        _module_name(p) for p in _python_files(WORKER) if not p.name.startswith("__main__")
    )
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}:\n"
        "    importlib.import_module(m)\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'keras', "
        "'tensorflow') or m.startswith(('statecast.export', 'statecast.models', "
        "'statecast.loadtest')))\n"
        "print(len(sys.modules), bad)\n"
        "raise SystemExit(1 if bad else 0)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
