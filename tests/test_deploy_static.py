"""Offline checks of deploy/: every artefact is run through the real validator.

kustomize renders both overlays; kubernetes-validate (strict, Kubernetes 1.30) checks the
built-in kinds, the cloudcoil CRD models the KEDA and prometheus-operator kinds; checkov
and hadolint look for security findings; promtool checks and unit-tests the alert rules;
the dashboard is validated against the JSON schema generated from @grafana/schema. Each
validator is also shown to reject a broken input, so a silent no-op cannot pass.
The tools come from `make deploy-tools`; without them these tests skip, unless
STATECAST_DEPLOY_REQUIRED is set (as `make test` does), when they fail.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from deploy.tools import generate, toolbox
from deploy.tools.toolbox import ROOT, run
from tests.fixtures.deploy import dashboard_exprs, fill_variables, need

pytestmark = pytest.mark.unit

# The metric names fixed by the worker contract: the dashboard must chart every one.
FIXED_METRICS = (
    "statecast_records_consumed_total",
    "statecast_predictions_published_total",
    "statecast_dead_letters_total",
    "statecast_batch_records",
    "statecast_waves_per_batch",
    "statecast_step_seconds",
    "statecast_redis_seconds",
    "statecast_event_latency_seconds",
    "statecast_consumer_lag",
    "statecast_streams_cached",
    "statecast_state_resets_total",
    "statecast_state_version_mismatches_total",
    "statecast_dependency_up",
    "statecast_errors_total",
    "statecast_ready",
)
CUSTOM_GROUPS = ("keda.sh/", "monitoring.coreos.com/")


def docs(rendered: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(rendered) if d]


def by_kind(documents: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [d for d in documents if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


@pytest.fixture(scope="module", params=toolbox.OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    name = str(request.param)
    return name, docs(toolbox.kustomize(name))


def worker_env(documents: list[dict[str, Any]]) -> dict[str, str]:
    data: dict[str, str] = by_kind(documents, "ConfigMap")["data"]
    return data


# --- generated files ---------------------------------------------------------------------


def test_generated_files_are_up_to_date() -> None:
    assert generate.main(["--check"]) == 0, "run `python -m deploy.tools.generate`"


def test_prometheus_rule_wraps_the_alert_file() -> None:
    rule = yaml.safe_load((ROOT / "deploy/k8s/base/prometheusrule.yaml").read_text())
    alerts = yaml.safe_load((ROOT / "deploy/prometheus/alerts.yaml").read_text())
    assert rule["spec"]["groups"] == alerts["groups"]


# --- Kubernetes ----------------------------------------------------------------------------


def test_overlay_has_every_resource(overlay: tuple[str, list[dict[str, Any]]]) -> None:
    _, documents = overlay
    kinds = sorted(d["kind"] for d in documents)
    assert kinds == sorted(
        [
            "Namespace",
            "ServiceAccount",
            "ConfigMap",
            "Service",
            "Deployment",
            "PodDisruptionBudget",
            "NetworkPolicy",
            "ServiceMonitor",
            "PrometheusRule",
            "ScaledObject",
            "TriggerAuthentication",
        ]
    )
    assert {d["metadata"].get("namespace", "statecast") for d in documents} == {"statecast"}


def test_deployment_is_locked_down(overlay: tuple[str, list[dict[str, Any]]]) -> None:
    name, documents = overlay
    pod = by_kind(documents, "Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["automountServiceAccountToken"] is False
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert {"cpu", "memory"} <= set(container["resources"]["limits"])
    # SIGKILL must not cut the drain short.
    drain = float(worker_env(documents)["STATECAST_DRAIN_TIMEOUT_S"])
    assert pod["terminationGracePeriodSeconds"] > drain
    # Secrets come from a Secret, never from the ConfigMap.
    secret_refs = {e["valueFrom"]["secretKeyRef"]["key"] for e in container["env"]}
    assert secret_refs == {"kafka-sasl-username", "kafka-sasl-password", "redis-password"}
    assert not any("PASSWORD" in k for k in worker_env(documents))
    # Probes, Service and ServiceMonitor all reach the port the worker listens on.
    (port,) = container["ports"]
    assert port["containerPort"] == int(worker_env(documents)["STATECAST_HTTP_PORT"])
    assert by_kind(documents, "Service")["spec"]["ports"][0]["targetPort"] == port["name"]
    endpoint = by_kind(documents, "ServiceMonitor")["spec"]["endpoints"][0]
    assert endpoint["port"] == port["name"]
    pod_labels = by_kind(documents, "Deployment")["spec"]["template"]["metadata"]["labels"]
    policy = by_kind(documents, "NetworkPolicy")["spec"]
    assert policy["podSelector"]["matchLabels"].items() <= pod_labels.items()
    gpus = container["resources"]["limits"].get("nvidia.com/gpu")
    assert (gpus == "1") if name == "gpu" else (gpus is None)


def test_config_names_real_worker_settings(overlay: tuple[str, list[dict[str, Any]]]) -> None:
    """Every variable the manifests set is one the worker reads (no typo goes unnoticed)."""
    _, documents = overlay
    known = set(re.findall(r'"(STATECAST_[A-Z0-9_]+)"', (ROOT / "worker/settings.py").read_text()))
    container = by_kind(documents, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    used = set(worker_env(documents)) | {e["name"] for e in container["env"]}
    keda_trigger = by_kind(documents, "ScaledObject")["spec"]["triggers"][0]["metadata"]
    used |= {v for k, v in keda_trigger.items() if k.endswith("FromEnv")}
    assert used - known == set()
    assert worker_env(documents)["STATECAST_HTTP_PORT"] == "8080"


def test_routes_name_models_the_image_ships(overlay: tuple[str, list[dict[str, Any]]]) -> None:
    """The worker refuses to start on a route whose model is not in the manifest."""
    _, documents = overlay
    routes = worker_env(documents)["STATECAST_ROUTES"]
    models = {r.split("=", 1)[1].split("?", 1)[0] for r in routes.split(";") if r}
    manifest = json.loads((ROOT / "models/manifest.json").read_text())
    assert models
    assert models - {m["name"] for m in manifest["models"]} == set()


def test_scaling_is_capped_at_the_partition_count(
    overlay: tuple[str, list[dict[str, Any]]],
) -> None:
    _, documents = overlay
    scaled = by_kind(documents, "ScaledObject")
    deployment = by_kind(documents, "Deployment")
    assert scaled["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    trigger = scaled["spec"]["triggers"][0]
    assert trigger["type"] == "kafka"
    assert trigger["metadata"]["allowIdleConsumers"] == "false"
    assert 1 <= scaled["spec"]["minReplicaCount"] <= scaled["spec"]["maxReplicaCount"] <= 12
    pdb = by_kind(documents, "PodDisruptionBudget")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_kubernetes_validate_strict(overlay: tuple[str, list[dict[str, Any]]]) -> None:
    need(toolbox.KUBERNETES_VALIDATE)
    _, documents = overlay
    builtin = [d for d in documents if not d["apiVersion"].startswith(CUSTOM_GROUPS)]
    result = validate(builtin)
    assert result.returncode == 0, result.output
    # It only warns on kinds it has no schema for: that must never happen here.
    assert "Couldn't find schema" not in result.output, result.output
    assert result.output.count("passed for resource") == len(builtin), result.output


def test_kubernetes_validate_rejects_a_broken_deployment() -> None:
    need(toolbox.KUBERNETES_VALIDATE)
    deployment = copy.deepcopy(by_kind(docs(toolbox.kustomize("cpu")), "Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["securityContext"]["runAsUsr"] = 1
    assert validate([deployment]).returncode != 0


def validate(documents: list[dict[str, Any]]) -> toolbox.Result:
    return run(
        [toolbox.KUBERNETES_VALIDATE, "--strict", "-k", "1.30.0", "-"],
        stdin=yaml.safe_dump_all(documents),
    )


BAD_CUSTOM_RESOURCES = (
    ("ScaledObject", ("spec", "maxReplicaCunt"), 12),  # unknown field
    ("ScaledObject", ("spec", "maxReplicaCount"), "12"),  # wrong type
    ("ServiceMonitor", ("spec", "endpoints"), [{"port": "http-metrics", "intervall": "1s"}]),
)


@pytest.fixture(scope="module")
def crd_results() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(results for both overlays' custom resources, results for the broken ones), from one
    run of the checker: importing the CRD models takes most of its time."""
    need(toolbox.TOOLS_PYTHON)
    good = [
        d
        for name in toolbox.OVERLAYS
        for d in docs(toolbox.kustomize(name))
        if d["apiVersion"].startswith(CUSTOM_GROUPS)
    ]
    bad = []
    for kind, path, value in BAD_CUSTOM_RESOURCES:
        doc = copy.deepcopy(next(d for d in good if d["kind"] == kind))
        node = doc
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
        bad.append(doc)
    result = run(
        [toolbox.TOOLS_PYTHON, "deploy/tools/check_crds.py"],
        stdin=yaml.safe_dump_all(good + bad),
    )
    checked = [json.loads(line) for line in result.output.splitlines() if line.startswith("{")]
    assert len(checked) == len(good) + len(bad), result.output
    assert result.returncode == 1, "the broken documents must fail the run"
    return checked[: len(good)], checked[len(good) :]


def test_custom_resources_match_their_crds(
    crd_results: tuple[list[dict[str, Any]], list[dict[str, Any]]],
) -> None:
    good, _ = crd_results
    assert len(good) == 4 * len(toolbox.OVERLAYS)
    assert [g for g in good if not g["ok"]] == []


def test_crd_check_rejects_bad_documents(
    crd_results: tuple[list[dict[str, Any]], list[dict[str, Any]]],
) -> None:
    _, bad = crd_results
    assert len(bad) == len(BAD_CUSTOM_RESOURCES)
    assert [b for b in bad if b["ok"]] == []


def test_checkov_finds_nothing(tmp_path: Path) -> None:
    need(toolbox.CHECKOV)
    for name in toolbox.OVERLAYS:
        (tmp_path / f"{name}.yaml").write_text(toolbox.kustomize(name))
    (tmp_path / "Dockerfile").write_text((ROOT / "deploy/docker/Dockerfile").read_text())
    result = run(
        [
            toolbox.CHECKOV,
            "--config-file",
            "deploy/checkov.yaml",
            "-d",
            tmp_path,
            "-o",
            "json",
        ],
        timeout=240,
    )
    assert result.returncode == 0, result.output
    reports = json.loads(result.output[result.output.index("[") :])
    assert {r["check_type"] for r in reports} == {"kubernetes", "dockerfile"}
    for report in reports:
        assert report["summary"]["failed"] == 0, report["results"]["failed_checks"]
        assert report["summary"]["passed"] > 0


def test_hadolint_dockerfile() -> None:
    need(toolbox.HADOLINT)
    result = run([toolbox.HADOLINT, "deploy/docker/Dockerfile"])
    assert result.returncode == 0, result.output


# --- Prometheus rules ----------------------------------------------------------------------


def test_promtool_check_rules() -> None:
    need(toolbox.PROMTOOL)
    result = run([toolbox.PROMTOOL, "check", "rules", "deploy/prometheus/alerts.yaml"])
    assert result.returncode == 0, result.output


def test_promtool_rule_unit_tests() -> None:
    need(toolbox.PROMTOOL)
    result = run([toolbox.PROMTOOL, "test", "rules", "deploy/prometheus/alerts_test.yaml"])
    assert result.returncode == 0, result.output
    assert "SUCCESS" in result.output


def test_every_alert_has_a_unit_test_and_a_docs_entry() -> None:
    alerts = yaml.safe_load((ROOT / "deploy/prometheus/alerts.yaml").read_text())
    names = {r["alert"] for g in alerts["groups"] for r in g["rules"] if "alert" in r}
    tests = yaml.safe_load((ROOT / "deploy/prometheus/alerts_test.yaml").read_text())
    tested = {
        t["alertname"]
        for case in tests["tests"]
        for t in case.get("alert_rule_test", [])
        if t.get("exp_alerts")
    }
    assert names - tested == set(), "alerts never shown firing"
    # Operators look an alert up in the manual: docs/metrics.md, section "Alerts".
    manual = (ROOT / "docs" / "metrics.md").read_text()
    assert {n for n in names if n not in manual} == set(), "alerts missing from docs/metrics.md"


# --- Grafana -------------------------------------------------------------------------------


def test_dashboard_matches_the_grafana_schema() -> None:
    need(toolbox.TOOLS_PYTHON, toolbox.DASHBOARD_SCHEMA)
    result = check_dashboard(ROOT / "deploy/grafana/statecast.json")
    assert result.returncode == 0, result.output


def test_dashboard_schema_rejects_a_broken_dashboard(tmp_path: Path) -> None:
    need(toolbox.TOOLS_PYTHON, toolbox.DASHBOARD_SCHEMA)
    broken = generate.build_dashboard()
    broken["panels"][1]["gridPos"]["w"] = "wide"
    broken["refresh"] = 30
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(broken))
    result = check_dashboard(path)
    assert result.returncode == 1
    assert "2 error(s)" in result.output, result.output


def check_dashboard(path: Path) -> toolbox.Result:
    return run(
        [toolbox.TOOLS_PYTHON, "deploy/tools/check_dashboard.py", toolbox.DASHBOARD_SCHEMA, path]
    )


def test_dashboard_charts_every_metric() -> None:
    exprs = " ".join(dashboard_exprs())
    assert [m for m in FIXED_METRICS if m not in exprs] == []
    board = json.loads((ROOT / "deploy/grafana/statecast.json").read_text())
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))


def test_dashboard_queries_parse(tmp_path: Path) -> None:
    """promtool parses every panel query (template variables filled in) as a rule."""
    need(toolbox.PROMTOOL)
    rules = [
        {"record": f"statecast:panel_query_{i}", "expr": fill_variables(expr)}
        for i, expr in enumerate(dashboard_exprs())
    ]
    path = tmp_path / "panel_queries.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "panels", "rules": rules}]}))
    result = run([toolbox.PROMTOOL, "check", "rules", path])
    assert result.returncode == 0, result.output
