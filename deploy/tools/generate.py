"""Generate the Grafana dashboard and the PrometheusRule from their sources.

``python -m deploy.tools.generate`` rewrites ``deploy/grafana/statecast.json`` and
``deploy/k8s/base/prometheusrule.yaml``; ``--check`` exits 1 when either is stale (the
deploy tests run it). The dashboard is code so that every panel follows one pattern and
the live test can read the queries back; the rule file ``deploy/prometheus/alerts.yaml``
stays plain YAML so ``promtool`` checks and unit-tests exactly what operators load.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "statecast.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yaml"
PROMETHEUS_RULE = ROOT / "deploy" / "k8s" / "base" / "prometheusrule.yaml"

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
JOB = 'job=~"$job"'
MODEL = 'job=~"$job", model=~"$model"'


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str


@dataclass(frozen=True)
class Panel:
    title: str
    description: str
    unit: str
    queries: tuple[Query, ...]
    kind: str = "timeseries"
    width: int = 12
    overrides: tuple[dict[str, Any], ...] = field(default=())


def _quantiles(metric: str, by: str, selector: str, qs: tuple[float, ...]) -> tuple[Query, ...]:
    return tuple(
        Query(
            f"histogram_quantile({q}, sum by ({by}, le) "
            f"(rate({metric}_bucket{{{selector}}}[$__rate_interval])))",
            f"p{round(q * 100)} {{{{{by}}}}}",
        )
        for q in qs
    )


def _mean(metric: str, by: str, selector: str) -> Query:
    return Query(
        f"sum by ({by}) (rate({metric}_sum{{{selector}}}[$__rate_interval]))"
        f" / sum by ({by}) (rate({metric}_count{{{selector}}}[$__rate_interval]))",
        f"mean {{{{{by}}}}}" if by else "mean",
    )


def panels() -> list[tuple[str, list[Panel]]]:
    """Rows of panels, top to bottom. Every query is one the live test must see data for."""
    return [
        (
            "Throughput",
            [
                Panel(
                    "Records consumed / s",
                    "Input records read from Kafka, by topic.",
                    "reqps",
                    (
                        Query(
                            "sum by (topic) "
                            f"(rate(statecast_records_consumed_total{{{JOB}}}[$__rate_interval]))",
                            "{{topic}}",
                        ),
                    ),
                ),
                Panel(
                    "Predictions published / s",
                    "Predictions acked by Kafka, by model.",
                    "reqps",
                    (
                        Query(
                            "sum by (model) (rate(statecast_predictions_published_total"
                            f"{{{MODEL}}}[$__rate_interval]))",
                            "{{model}}",
                        ),
                    ),
                ),
            ],
        ),
        (
            "Latency",
            [
                Panel(
                    "Event-to-prediction latency",
                    "From the event's timestamp to its prediction being acked, by model.",
                    "s",
                    _quantiles(
                        "statecast_event_latency_seconds", "model", MODEL, (0.5, 0.95, 0.99)
                    ),
                ),
                Panel(
                    "Step latency",
                    "One batched ONNX Runtime step (one wave), by model.",
                    "s",
                    _quantiles("statecast_step_seconds", "model", MODEL, (0.5, 0.99)),
                ),
                Panel(
                    "Redis round trip",
                    "One batched state read (MGET) or write (Lua) per batch.",
                    "s",
                    _quantiles("statecast_redis_seconds", "op", JOB, (0.5, 0.99)),
                ),
            ],
        ),
        (
            "Batching",
            [
                Panel(
                    "Batch fill",
                    "Records per polled batch: small batches mean the workers idle.",
                    "short",
                    (
                        _mean("statecast_batch_records", "job", JOB),
                        *_quantiles("statecast_batch_records", "job", JOB, (0.99,)),
                    ),
                ),
                Panel(
                    "Waves per batch",
                    "Steps needed per batch: the most records any one stream has in it.",
                    "short",
                    (
                        _mean("statecast_waves_per_batch", "job", JOB),
                        *_quantiles("statecast_waves_per_batch", "job", JOB, (0.99,)),
                    ),
                ),
            ],
        ),
        (
            "Kafka",
            [
                Panel(
                    "Consumer lag per partition",
                    "Records behind the log end, per assigned partition.",
                    "short",
                    (
                        Query(
                            f"sum by (topic, partition) (statecast_consumer_lag{{{JOB}}})",
                            "{{topic}}[{{partition}}]",
                        ),
                    ),
                ),
                Panel(
                    "Dead letters / s by reason",
                    "Records sent to statecast.dlq, by reason code.",
                    "reqps",
                    (
                        Query(
                            "sum by (reason) "
                            f"(rate(statecast_dead_letters_total{{{JOB}}}[$__rate_interval]))",
                            "{{reason}}",
                        ),
                    ),
                ),
            ],
        ),
        (
            "State",
            [
                Panel(
                    "Streams in cache",
                    "Streams whose state the workers hold in memory, by model.",
                    "short",
                    (
                        Query(
                            f"sum by (model) (statecast_streams_cached{{{MODEL}}})",
                            "{{model}}",
                        ),
                    ),
                    width=8,
                ),
                Panel(
                    "State resets / s",
                    "States started from zero, by model and reason "
                    "(missing = new or expired stream, mismatch = other state version).",
                    "reqps",
                    (
                        Query(
                            "sum by (model, reason) (rate(statecast_state_resets_total"
                            f"{{{MODEL}}}[$__rate_interval]))",
                            "{{model}} {{reason}}",
                        ),
                    ),
                    width=8,
                ),
                Panel(
                    "State version mismatches / s",
                    "Stored states written by another state version of the model.",
                    "reqps",
                    (
                        Query(
                            "sum by (model) (rate(statecast_state_version_mismatches_total"
                            f"{{{MODEL}}}[$__rate_interval]))",
                            "{{model}}",
                        ),
                    ),
                    width=8,
                ),
            ],
        ),
        (
            "Health",
            [
                Panel(
                    "Workers up / ready",
                    "Scraped workers, and how many pass /readyz.",
                    "short",
                    (
                        Query(f"sum(up{{{JOB}}})", "up"),
                        Query(f"sum(statecast_ready{{{JOB}}})", "ready"),
                    ),
                    width=8,
                ),
                Panel(
                    "Dependencies up",
                    "Workers that reach Kafka and Redis.",
                    "short",
                    (
                        Query(
                            f"sum by (dependency) (statecast_dependency_up{{{JOB}}})",
                            "{{dependency}}",
                        ),
                    ),
                    width=8,
                ),
                Panel(
                    "Errors / s by stage",
                    "Errors the worker counted and retried, by stage.",
                    "reqps",
                    (
                        Query(
                            "sum by (stage) "
                            f"(rate(statecast_errors_total{{{JOB}}}[$__rate_interval]))",
                            "{{stage}}",
                        ),
                    ),
                    width=8,
                ),
            ],
        ),
    ]


def _panel_json(panel: Panel, pid: int, x: int, y: int) -> dict[str, Any]:
    return {
        "id": pid,
        "type": panel.kind,
        "title": panel.title,
        "description": panel.description,
        "datasource": DATASOURCE,
        "gridPos": {"h": 8, "w": panel.width, "x": x, "y": y},
        "fieldConfig": {
            "defaults": {"unit": panel.unit, "custom": {"lineWidth": 1, "fillOpacity": 10}},
            "overrides": list(panel.overrides),
        },
        "options": {
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
        "targets": [
            {
                "refId": chr(ord("A") + i),
                "datasource": DATASOURCE,
                "expr": q.expr,
                "legendFormat": q.legend,
                "range": True,
            }
            for i, q in enumerate(panel.queries)
        ],
    }


def _variable(name: str, label: str, query: str) -> dict[str, Any]:
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DATASOURCE,
        "query": {"query": query, "refId": f"{name}-values"},
        "definition": query,
        "refresh": 2,
        "includeAll": True,
        "multi": True,
        "allValue": ".+",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "options": [],
        "sort": 1,
        "hide": 0,
        "skipUrlSync": False,
    }


def build_dashboard() -> dict[str, Any]:
    out: list[dict[str, Any]] = []
    pid, y = 1, 0
    for row_title, row_panels in panels():
        out.append(
            {
                "id": pid,
                "type": "row",
                "title": row_title,
                "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
                "panels": [],
            }
        )
        pid, y, x = pid + 1, y + 1, 0
        for panel in row_panels:
            if x + panel.width > 24:
                x, y = 0, y + 8
            out.append(_panel_json(panel, pid, x, y))
            pid, x = pid + 1, x + panel.width
        y += 8
    return {
        "uid": "statecast-worker",
        "title": "statecast worker",
        "description": "Throughput, latency, batching, lag, dead letters, state and health "
        "of the statecast workers (metrics: docs/metrics.md).",
        "tags": ["statecast", "kafka", "onnx"],
        "editable": True,
        "graphTooltip": 1,
        "timezone": "utc",
        "refresh": "30s",
        "schemaVersion": 39,
        "version": 1,
        "time": {"from": "now-1h", "to": "now"},
        "timepicker": {},
        "fiscalYearStartMonth": 0,
        "liveNow": False,
        "weekStart": "",
        "links": [],
        "annotations": {"list": []},
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Data source",
                    "type": "datasource",
                    "query": "prometheus",
                    "current": {"selected": False, "text": "default", "value": "default"},
                    "options": [],
                    "refresh": 1,
                    "hide": 0,
                    "skipUrlSync": False,
                },
                _variable("job", "Job", "label_values(statecast_ready, job)"),
                _variable(
                    "model",
                    "Model",
                    'label_values(statecast_predictions_published_total{job=~"$job"}, model)',
                ),
            ]
        },
        "panels": out,
    }


def build_prometheus_rule() -> dict[str, Any]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "statecast-worker"},
        "spec": {"groups": groups},
    }


def rendered() -> dict[Path, str]:
    rule_header = (
        "# GENERATED from deploy/prometheus/alerts.yaml by `python -m deploy.tools.generate`;"
        " edit that file.\n"
    )
    return {
        DASHBOARD: json.dumps(build_dashboard(), indent=2) + "\n",
        PROMETHEUS_RULE: rule_header
        + yaml.safe_dump(build_prometheus_rule(), sort_keys=False, width=100),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="exit 1 when a file is stale")
    args = parser.parse_args(argv)
    stale = []
    for path, text in rendered().items():
        if path.exists() and path.read_text() == text:
            continue
        if args.check:
            stale.append(path)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {path.relative_to(ROOT)}")
    for path in stale:
        print(f"stale: {path.relative_to(ROOT)} (run python -m deploy.tools.generate)")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
