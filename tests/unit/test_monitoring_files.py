"""Monitoring files: alert rules (lint + behaviour), PrometheusRule/PodMonitor against the CRDs,
the Grafana dashboard against the metrics job.telemetry really exports, kustomize output."""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml

from job.telemetry import DriverTelemetry, WorkerTelemetry
from tests.cli import require, require_tool, run_command

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "monitoring" / "alerts.rules.yml"
PROMETHEUS_RULE = ROOT / "k8s" / "monitoring" / "prometheusrule.yaml"
POD_MONITOR = ROOT / "k8s" / "monitoring" / "podmonitor.yaml"
DASHBOARD = ROOT / "k8s" / "monitoring" / "dashboards" / "multilabel-training.json"
ARCHITECTURE = ROOT / "docs" / "architecture.md"
SCHEMAS = ROOT.parent / "shared" / "schemas" / "prometheus-operator"


# ---- helpers -----------------------------------------------------------------------------


def documented_metrics() -> set[str]:
    """Metric names in the "Metric names" table of docs/architecture.md."""
    text = ARCHITECTURE.read_text()
    section = text.split("## Metric names", 1)[1].split("\n## ", 1)[0]
    names = set(re.findall(r"`(multilabel_[a-z0-9_]+)`", section))
    assert len(names) >= 15, names
    return names


def exported_samples() -> set[str]:
    """Sample names of a real, fully populated worker and driver exposition."""
    from prometheus_client.parser import text_string_to_metric_families

    worker = WorkerTelemetry("r", 0, port=None)
    worker.record_step(0.1, 8, 0.01)
    worker.record_epoch(
        1,
        {
            "loss": 1.0,
            "val_loss": 1.0,
            "val_binary_accuracy": 0.5,
            "val_macro_f1": 0.5,
            "val_mean_average_precision": 0.5,
            "learning_rate": 0.1,
        },
    )
    worker.record_checkpoint(1.0, ok=True)
    driver = DriverTelemetry("r", port=None)
    driver.set_state("running")
    names = set()
    for text in (worker.exposition(), driver.exposition()):
        for family in text_string_to_metric_families(text.decode()):
            names.update(s.name for s in family.samples)
    return names


PROMQL_KEYWORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "inf",
    "nan",
}


def promql_metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (strings, matchers, ranges and labels removed)."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    e = re.sub(r"\{[^}]*\}", " ", e)
    e = re.sub(r"\[[^\]]*\]", " ", e)
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    e = re.sub(r"\$\{?\w+\}?", " ", e)
    names = set()
    for m in re.finditer(r"(?<![\w.])[A-Za-z_:][\w:]*", e):
        token = m.group(0)
        if e[m.end() :].lstrip().startswith("(") or token.lower() in PROMQL_KEYWORDS:
            continue  # a function or aggregation, or an operator
        names.add(token)
    return names


def dashboard_exprs(dashboard: dict) -> list[tuple[str, str]]:
    """(panel title, expr) for every query of every panel, rows' nested panels included."""
    out = []
    stack = list(dashboard["panels"])
    while stack:
        panel = stack.pop()
        stack.extend(panel.get("panels", []))
        for target in panel.get("targets", []):
            out.append((panel["title"], target["expr"]))
    return out


def rule_groups(path: Path) -> list[dict]:
    doc = yaml.safe_load(path.read_text())
    return doc["spec"]["groups"] if doc.get("kind") == "PrometheusRule" else doc["groups"]


def all_rules() -> list[dict]:
    return [rule for group in rule_groups(RULES) for rule in group["rules"]]


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    return run_command(cmd, timeout=60, **kwargs)


def test_promql_metric_names_parser():
    """Guards the dashboard/rule checks below: the parser must find names, and only names."""
    expr = (
        'histogram_quantile(0.95, sum by (run, le) (rate(foo_bucket{run=~"$run", le!="x"}'
        "[$__rate_interval]))) / on (run) group_left bar_total offset 10m > 1e-3 and baz"
    )
    assert promql_metric_names(expr) == {"foo_bucket", "bar_total", "baz"}


# ---- alert rules ---------------------------------------------------------------------------


def test_promtool_accepts_rules_file_and_prometheusrule_spec(tmp_path):
    promtool = require_tool("promtool")
    spec = tmp_path / "prometheusrule-spec.yml"
    spec.write_text(yaml.safe_dump(yaml.safe_load(PROMETHEUS_RULE.read_text())["spec"]))
    for path in (RULES, spec):
        result = run([promtool, "check", "rules", str(path)])
        assert result.returncode == 0, result.stdout + result.stderr
        assert "SUCCESS: 10 rules found" in result.stdout, result.stdout


def test_prometheusrule_groups_equal_the_plain_rules_file():
    """One source of truth: monitoring/alerts.rules.yml. Paste its `groups:` into the CR."""
    assert rule_groups(PROMETHEUS_RULE) == rule_groups(RULES)
    cr = yaml.safe_load(PROMETHEUS_RULE.read_text())
    assert cr["apiVersion"] == "monitoring.coreos.com/v1" and cr["kind"] == "PrometheusRule"


def test_every_alert_tells_the_reader_what_to_do():
    rules = all_rules()
    assert {r["alert"] for r in rules} == {
        "MultilabelTrainingNoProgress",
        "MultilabelWorkerMetricsMissing",
        "MultilabelLossNaN",
        "MultilabelRunFailed",
        "MultilabelRayJobFailed",
        "MultilabelThroughputDropped",
        "MultilabelCheckpointFailures",
        "MultilabelInputBound",
        "MultilabelPreemptedOften",
        "MultilabelCheckpointUploadBacklog",
    }
    for rule in rules:
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, rule["alert"]
        assert rule["annotations"]["summary"].strip(), rule["alert"]
        assert len(rule["annotations"]["description"].split()) >= 25, rule["alert"]


# Metrics of the KubeRay operator that rules may use, with their label names, as its source
# defines them at the chart version infra/modules/addons pins (ray-project/kuberay v1.6.2,
# ray-operator/controllers/ray/metrics/ray_job_metrics.go), plus the labels Prometheus adds.
KUBERAY_METRICS = {
    "kuberay_job_deployment_status": {"name", "namespace", "uid", "deployment_status"},
    "kuberay_job_info": {"name", "namespace", "uid"},
}
# rayv1.JobDeploymentStatus values (ray-operator/apis/ray/v1/rayjob_types.go at v1.6.2).
KUBERAY_JOB_DEPLOYMENT_STATUSES = {
    "",
    "Initializing",
    "Running",
    "Complete",
    "Failed",
    "ValidationFailed",
    "Suspending",
    "Suspended",
    "Retrying",
    "Waiting",
}
TARGET_LABELS = {"job", "instance", "pod", "service", "endpoint", "container"}


def label_matchers(expr: str, metric: str) -> list[tuple[str, str, str]]:
    """(label, operator, value) of every matcher in `metric{...}` selectors of the expression."""
    out = []
    for body in re.findall(rf"\b{metric}\{{([^}}]*)\}}", expr):
        out += re.findall(r'([A-Za-z_]\w*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"', body)
    return out


def test_rules_and_dashboard_name_only_documented_and_exported_metrics():
    documented, exported = documented_metrics(), exported_samples()
    exprs = [("rule " + r["alert"], r["expr"]) for r in all_rules()]
    exprs += dashboard_exprs(json.loads(DASHBOARD.read_text()))
    for where, expr in exprs:
        names = promql_metric_names(expr)
        assert names, f"{where}: no metric found in {expr!r}"
        for name in names:
            if name.startswith("kuberay_"):
                assert name in KUBERAY_METRICS, f"{where}: {name} is not a KubeRay 1.6 operator metric"
                continue
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            assert name in documented or base in documented, f"{where}: {name} not in architecture.md"
            assert name in exported, f"{where}: {name} is not exported by job.telemetry"


def test_kuberay_rules_match_labels_and_values_the_operator_exports():
    """A matcher on a label KubeRay does not set, or on a status it never reports, never matches."""
    used = 0
    for rule in all_rules():
        for metric, labels in KUBERAY_METRICS.items():
            for label, op, value in label_matchers(rule["expr"], metric):
                used += 1
                assert label in labels | TARGET_LABELS, f"{rule['alert']}: {metric} has no label {label}"
                if label == "deployment_status":
                    wanted = value.split("|") if "~" in op else [value]
                    unknown = set(wanted) - KUBERAY_JOB_DEPLOYMENT_STATUSES
                    assert not unknown, f"{rule['alert']}: KubeRay reports no deployment_status {unknown}"
                if label == "namespace" and op == "=":
                    rayjob = yaml.safe_load((ROOT / "k8s" / "base" / "rayjob.yaml").read_text())
                    assert value == rayjob["metadata"]["namespace"], f"{rule['alert']}: not the RayJob's namespace"
    assert used, "no rule reads KubeRay's RayJob metrics"


def _series(metric: str, values: str, /, **labels: str) -> dict:
    body = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    return {"series": f"{metric}{{{body}}}", "values": values}


def _alerts(at: str, name: str, *label_sets: dict) -> dict:
    return {"eval_time": at, "alertname": name, "exp_alerts": [{"exp_labels": dict(ls)} for ls in label_sets]}


def test_alerts_fire_when_they_should_and_only_then(tmp_path):
    """`promtool test rules` on synthetic series (1 sample per minute).

    Annotations are stripped from a copy of the rules so the test checks the alert logic.
    """
    promtool = require_tool("promtool")
    doc = yaml.safe_load(RULES.read_text())
    for group in doc["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    rules = tmp_path / "rules.yml"
    rules.write_text(yaml.safe_dump(doc))

    running = lambda run, n: _series("multilabel_run_state", f"1x{n}", run=run, state="running")  # noqa: E731
    tests = [
        {  # stuck: steps stop at minute 15 while running; a finished run stopping is fine.
            "interval": "1m",
            "input_series": [
                running("stuck", 60),
                _series("multilabel_train_steps_total", "0+10x15 150x45", run="stuck", rank="0"),
                _series("multilabel_run_state", "1x15 0x45", run="done", state="running"),
                _series("multilabel_run_state", "0x15 1x45", run="done", state="succeeded"),
                _series("multilabel_train_steps_total", "0+10x15 150x45", run="done", rank="0"),
                running("healthy", 60),
                _series("multilabel_train_steps_total", "0+10x60", run="healthy", rank="0"),
            ],
            "alert_rule_test": [
                _alerts("24m", "MultilabelTrainingNoProgress"),
                _alerts("31m", "MultilabelTrainingNoProgress", {"run": "stuck", "severity": "critical"}),
                _alerts("31m", "MultilabelWorkerMetricsMissing"),
            ],
        },
        {  # the driver says running, but no worker series ever arrives.
            "interval": "1m",
            "input_series": [running("ghost", 30)],
            "alert_rule_test": [
                _alerts("10m", "MultilabelWorkerMetricsMissing"),
                _alerts("20m", "MultilabelWorkerMetricsMissing", {"run": "ghost", "severity": "warning"}),
                _alerts("20m", "MultilabelTrainingNoProgress"),
            ],
        },
        {  # loss becomes NaN at minute 3; a failed run.
            "interval": "1m",
            "input_series": [
                _series("multilabel_train_loss", "0.5 0.4 0.3 NaN NaN", run="r", rank="0"),
                _series("multilabel_val_loss", "0.5 0.4 0.3 0.3 0.3", run="r", rank="0"),
                _series("multilabel_run_state", "0 0 0 0 1", run="r", state="failed"),
            ],
            "alert_rule_test": [
                _alerts("2m", "MultilabelLossNaN"),
                _alerts("3m", "MultilabelLossNaN", {"run": "r", "rank": "0", "severity": "critical"}),
                _alerts("3m", "MultilabelRunFailed"),
                _alerts("4m", "MultilabelRunFailed", {"run": "r", "state": "failed", "severity": "critical"}),
            ],
        },
        {  # KubeRay's view: the RayJob goes Running -> Failed at minute 5, the driver's own
            # metrics are gone by then (it died). Another namespace's failed RayJob and a
            # completed one are not the job's failures.
            "interval": "1m",
            "input_series": [
                _series(
                    "kuberay_job_deployment_status",
                    "1x4 _x5",
                    name="multilabel-train",
                    namespace="multilabel",
                    uid="u1",
                    deployment_status="Running",
                ),
                _series(
                    "kuberay_job_deployment_status",
                    "_x4 1x5",
                    name="multilabel-train",
                    namespace="multilabel",
                    uid="u1",
                    deployment_status="Failed",
                ),
                _series(
                    "kuberay_job_deployment_status",
                    "1x9",
                    name="other",
                    namespace="someone-else",
                    uid="u2",
                    deployment_status="Failed",
                ),
                _series(
                    "kuberay_job_deployment_status",
                    "1x9",
                    name="done",
                    namespace="multilabel",
                    uid="u3",
                    deployment_status="Complete",
                ),
                _series("multilabel_run_state", "1x3", run="r", state="running"),
            ],
            "alert_rule_test": [
                _alerts("3m", "MultilabelRayJobFailed"),
                _alerts(
                    "6m",
                    "MultilabelRayJobFailed",
                    {"namespace": "multilabel", "name": "multilabel-train", "severity": "critical"},
                ),
                _alerts("6m", "MultilabelRunFailed"),  # the driver never said so
            ],
        },
        {  # rank 1 drops from 100 to 30 img/s at minute 70; rank 0 stays at 100.
            "interval": "1m",
            "input_series": [
                running("r", 100),
                _series("multilabel_train_examples_per_second", "100x100", run="r", rank="0"),
                _series("multilabel_train_examples_per_second", "100x69 30x30", run="r", rank="1"),
            ],
            "alert_rule_test": [
                _alerts("69m", "MultilabelThroughputDropped"),
                _alerts("75m", "MultilabelThroughputDropped"),  # pending (for: 10m)
                _alerts("85m", "MultilabelThroughputDropped", {"run": "r", "rank": "1", "severity": "warning"}),
            ],
        },
        {  # one checkpoint failure at minute 10: alerts for 15 minutes, then clears.
            "interval": "1m",
            "input_series": [
                _series("multilabel_checkpoint_failures_total", "0x10 1x30", run="r", rank="0"),
            ],
            "alert_rule_test": [
                _alerts("9m", "MultilabelCheckpointFailures"),
                _alerts("12m", "MultilabelCheckpointFailures", {"run": "r", "rank": "0", "severity": "warning"}),
                _alerts("30m", "MultilabelCheckpointFailures"),
            ],
        },
        {  # rank 0 waits for input half the time; rank 1 a tenth.
            "interval": "1m",
            "input_series": [
                running("r", 30),
                _series("multilabel_input_stall_ratio", "0.5x30", run="r", rank="0"),
                _series("multilabel_input_stall_ratio", "0.1x30", run="r", rank="1"),
            ],
            "alert_rule_test": [
                _alerts("5m", "MultilabelInputBound"),
                _alerts("15m", "MultilabelInputBound", {"run": "r", "rank": "0", "severity": "info"}),
            ],
        },
    ]
    test_file = tmp_path / "rules_test.yml"
    test_file.write_text(yaml.safe_dump({"rule_files": [str(rules)], "evaluation_interval": "1m", "tests": tests}))
    result = run([promtool, "test", "rules", str(test_file)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_prometheus_configs_are_valid_and_load_the_rules():
    promtool = require_tool("promtool")
    for name, target_host in (("prometheus.yml", "host.docker.internal"), ("prometheus-local.yml", "127.0.0.1")):
        path = ROOT / "monitoring" / name
        result = run([promtool, "check", "config", str(path)])
        assert result.returncode == 0, result.stdout + result.stderr
        assert "SUCCESS: 10 rules found" in result.stdout, result.stdout
        config = yaml.safe_load(path.read_text())
        targets = {t for job in config["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]}
        assert targets == {f"{target_host}:{port}" for port in (9400, 9401, 9402)}


# ---- dashboard -----------------------------------------------------------------------------


def test_dashboard_has_the_promised_panels_and_a_datasource_variable():
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    for panel in panels:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
    exprs = " ".join(expr for _, expr in dashboard_exprs(dashboard))
    for needle in (
        "multilabel_train_loss",
        "multilabel_val_loss",
        "multilabel_val_macro_f1",
        "multilabel_val_mean_average_precision",
        "multilabel_train_examples_per_second",
        "histogram_quantile(0.5, sum by (run, le) (rate(multilabel_train_step_seconds_bucket",
        "histogram_quantile(0.95, sum by (run, le) (rate(multilabel_train_step_seconds_bucket",
        "multilabel_input_stall_ratio",
        "multilabel_checkpoint_save_seconds",
        "multilabel_run_state",
    ):
        assert needle in exprs, needle
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"


# ---- Kubernetes resources ------------------------------------------------------------------


def crd_schema(filename: str) -> dict:
    path = SCHEMAS / filename
    require(path.exists(), f"CRD schema {path} not found (it lives outside the repo in shared/schemas)")
    crd = yaml.safe_load(path.read_text())
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    return strict(version["schema"]["openAPIV3Schema"])


def strict(schema: dict) -> dict:
    """Reject unknown fields like the API server's strict field validation (kubectl's default)."""
    schema = copy.deepcopy(schema)

    def walk(node):
        if isinstance(node, dict):
            if (
                "properties" in node
                and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")
            ):
                node["additionalProperties"] = False
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    return schema


@pytest.mark.parametrize(
    "path,crd",
    [
        (POD_MONITOR, "monitoring.coreos.com_podmonitors.yaml"),
        (PROMETHEUS_RULE, "monitoring.coreos.com_prometheusrules.yaml"),
    ],
)
def test_resources_validate_against_the_prometheus_operator_crds(path, crd):
    # No meta-schema check: the CRDs hold Go regexes (`^(?i)...`) that Python's re rejects.
    validator = jsonschema.Draft7Validator(crd_schema(crd))
    resource = yaml.safe_load(path.read_text())
    errors = [f"{'/'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(resource)]
    assert errors == []
    broken = copy.deepcopy(resource)  # a typo must be caught, or this test proves nothing
    broken["spec"]["selectr"] = {}
    assert list(validator.iter_errors(broken))


def test_podmonitor_selects_the_job_pods_on_the_documented_port_names():
    pm = yaml.safe_load(POD_MONITOR.read_text())
    assert pm["spec"]["selector"]["matchLabels"] == {"app.kubernetes.io/name": "multilabel-job"}
    endpoints = {e["port"]: e for e in pm["spec"]["podMetricsEndpoints"]}
    # train-metrics / driver-metrics: the job's; metrics: Ray's own, on the port KubeRay adds.
    assert set(endpoints) == {"train-metrics", "driver-metrics", "metrics"}
    assert all(e["path"] == "/metrics" for e in endpoints.values())
    assert all(len(name) <= 15 for name in endpoints)  # Kubernetes port-name limit


def test_kustomize_builds_podmonitor_rules_and_dashboard_configmap():
    kubectl = require_tool("kubectl")
    result = run([kubectl, "kustomize", str(ROOT / "k8s" / "monitoring")])
    assert result.returncode == 0, result.stderr
    docs = {d["kind"]: d for d in yaml.safe_load_all(result.stdout)}
    assert set(docs) == {"ConfigMap", "PodMonitor", "PrometheusRule"}
    cm = docs["ConfigMap"]
    assert cm["metadata"]["name"] == "multilabel-grafana-dashboard"  # no hash suffix
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(cm["data"]["multilabel-training.json"]) == json.loads(DASHBOARD.read_text())


def test_dashboard_has_a_single_copy_in_the_repo():
    """Compose mounts k8s/monitoring/dashboards/; a second copy would drift."""
    copies = []
    for dirpath, dirnames, filenames in os.walk(ROOT):
        dirnames[:] = [d for d in dirnames if not d.startswith(".") and d not in {"runs", "data"}]
        copies += [Path(dirpath) / f for f in filenames if f == DASHBOARD.name]
    assert copies == [DASHBOARD], copies
