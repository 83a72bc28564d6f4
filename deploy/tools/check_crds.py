"""Validate the custom resources of rendered manifests against their CRD models.

Run with the deploy tools venv (it has the cloudcoil models):
    kubectl kustomize deploy/k8s/overlays/cpu | .cache/deploy/venv/bin/python \
        deploy/tools/check_crds.py
kubernetes-validate only warns on kinds it has no schema for, so the KEDA and
prometheus-operator kinds are checked here: pydantic strict validation, then a round trip
that must give back the input exactly (pydantic drops unknown fields silently otherwise).
Prints one JSON line per custom resource; exits 1 on any failure or unknown kind.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import yaml
from cloudcoil.models.keda import v1alpha1 as keda
from cloudcoil.models.prometheus_operator import v1 as prom

MODELS: dict[tuple[str, str], Any] = {
    ("keda.sh/v1alpha1", "ScaledObject"): keda.ScaledObject,
    ("keda.sh/v1alpha1", "TriggerAuthentication"): keda.TriggerAuthentication,
    ("monitoring.coreos.com/v1", "ServiceMonitor"): prom.ServiceMonitor,
    ("monitoring.coreos.com/v1", "PrometheusRule"): prom.PrometheusRule,
}
CUSTOM_GROUPS = ("keda.sh/", "monitoring.coreos.com/")


def check(doc: dict[str, Any]) -> str | None:
    """None when ``doc`` is valid, else why not."""
    model = MODELS.get((doc.get("apiVersion", ""), doc.get("kind", "")))
    if model is None:
        return "no CRD model for this kind"
    try:
        obj = model.model_validate(doc, strict=True)
    except Exception as exc:
        return f"invalid: {exc}"
    back = obj.model_dump(mode="json", by_alias=True, exclude_none=True)
    if back != doc:
        return f"round trip changed the document (unknown or mistyped fields): {back}"
    return None


def main() -> int:
    failures = 0
    for doc in yaml.safe_load_all(sys.stdin):
        if not doc or not str(doc.get("apiVersion", "")).startswith(CUSTOM_GROUPS):
            continue
        error = check(doc)
        failures += error is not None
        name = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        print(json.dumps({"resource": name, "ok": error is None, "error": error}))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
