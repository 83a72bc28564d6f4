"""The manual names what the code has, and the code has nothing the manual leaves out.

- Every ``STATECAST_*`` variable that the worker's settings read is in
  docs/configuration.md, and every ``STATECAST_*`` name in README.md or docs/ is read
  somewhere in the code (a renamed or removed setting leaves no stale name behind).
- Every metric the worker registers is in docs/metrics.md, and every ``statecast_*``
  metric named there is one the worker registers.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from statecast.worker.metrics import WorkerMetrics

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
# A trailing "_" is a prefix written for a family (STATECAST_STACK_*), checked as one.
_VARIABLE = re.compile(r"STATECAST_[A-Z0-9_]*[A-Z0-9_]")
_METRIC = re.compile(r"\bstatecast_[a-z0-9_]+")
_SUFFIXES = ("_total", "_bucket", "_sum", "_count", "_created")
# Where the code reads its variables: the package folders, deploy tooling, tests, make.
_CODE_DIRS = ("statecast", "worker", "models", "export", "loadtest", "deploy", "tests")
_CODE_SUFFIXES = {".py", ".sh", ".env", ".mk", ".yaml"}


def _manual() -> dict[Path, str]:
    pages = [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]
    return {p: p.read_text(encoding="utf-8") for p in pages}


def _code_text() -> str:
    parts = [(ROOT / "Makefile").read_text(encoding="utf-8")]
    for folder in _CODE_DIRS:
        for path in sorted((ROOT / folder).rglob("*")):
            if (
                path.is_file()
                and (path.suffix in _CODE_SUFFIXES or path.name == "Dockerfile")
                and path.name != Path(__file__).name
            ):
                parts.append(path.read_text(encoding="utf-8", errors="replace"))
    return "\n".join(parts)


def _settings_variables() -> set[str]:
    source = (ROOT / "worker" / "settings.py").read_text(encoding="utf-8")
    return set(re.findall(r"\"(STATECAST_[A-Z0-9_]+)\"", source))


def _registered_metrics() -> set[str]:
    metrics = WorkerMetrics(CollectorRegistry())
    return {family.name for family in metrics.registry.collect()}


def _base_name(name: str) -> str:
    for suffix in _SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def test_the_settings_are_found() -> None:
    # Guards the extraction: an empty set would make the next test pass on nothing.
    found = _settings_variables()
    assert {"STATECAST_ROUTES", "STATECAST_REDIS_URL", "STATECAST_DRAIN_TIMEOUT_S"} <= found


def test_every_setting_is_documented() -> None:
    page = (DOCS / "configuration.md").read_text(encoding="utf-8")
    documented = set(_VARIABLE.findall(page))
    assert sorted(_settings_variables() - documented) == []


def test_every_documented_variable_exists_in_the_code() -> None:
    code = _code_text()
    stale = {
        f"{page.relative_to(ROOT)}: {name}"
        for page, text in _manual().items()
        for name in _VARIABLE.findall(text)
        if name not in code
    }
    assert sorted(stale) == []


def test_every_metric_is_documented() -> None:
    registered = _registered_metrics()
    assert "statecast_records_consumed" in registered
    page = (DOCS / "metrics.md").read_text(encoding="utf-8")
    documented = {_base_name(m) for m in _METRIC.findall(page)}
    assert sorted(registered - documented) == []


def test_every_documented_metric_is_registered() -> None:
    registered = _registered_metrics()
    page = (DOCS / "metrics.md").read_text(encoding="utf-8")
    unknown = {m for m in _METRIC.findall(page) if _base_name(m) not in registered}
    assert sorted(unknown) == []
