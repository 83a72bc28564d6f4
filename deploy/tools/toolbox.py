"""Where `make deploy-tools` puts the validators, and small helpers to run them."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / ".cache" / "deploy"
TOOLS_PYTHON = CACHE / "venv" / "bin" / "python"
KUBERNETES_VALIDATE = CACHE / "venv" / "bin" / "kubernetes-validate"
HADOLINT = CACHE / "venv" / "bin" / "hadolint"
CHECKOV = CACHE / "checkov" / "bin" / "checkov"
DASHBOARD_SCHEMA = CACHE / "dashboard.schema.json"
PROMTOOL = CACHE / "prometheus" / "usr" / "bin" / "promtool"
PROMETHEUS = CACHE / "prometheus" / "usr" / "bin" / "prometheus"

OVERLAYS = ("cpu", "gpu")
# Set by `make test` / `make deploy-check`: a missing tool is then a failure, not a skip.
REQUIRED_ENV = "STATECAST_DEPLOY_REQUIRED"


@dataclass(frozen=True)
class Result:
    returncode: int
    output: str


def required() -> bool:
    return os.environ.get(REQUIRED_ENV, "") not in ("", "0")


def missing(*tools: Path) -> list[Path]:
    return [t for t in tools if not t.exists()]


def run(cmd: list[str | Path], stdin: str | None = None, timeout: float = 120) -> Result:
    """Run a tool from the repository root; stdout and stderr together, for messages."""
    proc = subprocess.run(
        [str(c) for c in cmd],
        cwd=ROOT,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return Result(proc.returncode, proc.stdout + proc.stderr)


def kustomize(overlay: str) -> str:
    result = run(["kubectl", "kustomize", f"deploy/k8s/overlays/{overlay}"])
    if result.returncode != 0:
        raise RuntimeError(f"kubectl kustomize {overlay} failed:\n{result.output}")
    return result.output
