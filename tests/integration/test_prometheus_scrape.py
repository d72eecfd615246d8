"""A real Prometheus scrapes two workers and a driver from job.telemetry over HTTP.

Checks what a user watching a run sees through Prometheus' own API: step counts per rank,
the run state, every dashboard query, and the alert rules loaded and evaluated.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from job.telemetry import DriverTelemetry, WorkerTelemetry
from tests.prometheus_server import PrometheusServer, free_port, values_by_label

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "monitoring" / "alerts.rules.yml"
DASHBOARD = ROOT / "k8s" / "monitoring" / "dashboards" / "multilabel-training.json"
RUN = "scrape-test"

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


@pytest.fixture
def job_telemetry():
    """Two workers (ranks 0, 1) and a driver, each serving /metrics on its own free port."""
    objects = []
    try:
        workers = [WorkerTelemetry(RUN, rank, port=free_port()) for rank in (0, 1)]
        objects += workers
        driver = DriverTelemetry(RUN, port=free_port())
        objects.append(driver)
        for obj in objects:
            assert obj.port is not None, "telemetry server did not start"
        yield workers, driver
    finally:
        for obj in objects:
            obj.close()


@pytest.fixture
def prometheus(tmp_path, job_telemetry):
    workers, driver = job_telemetry
    server = PrometheusServer.start(
        tmp_path / "prometheus",
        {
            "multilabel-workers": [f"127.0.0.1:{w.port}" for w in workers],
            "multilabel-driver": [f"127.0.0.1:{driver.port}"],
        },
        interval="1s",
        rule_files=[RULES],
    )
    try:
        yield server
    finally:
        server.stop()  # always, even if the test failed half-way
    assert server.process.poll() is not None


def test_prometheus_scrapes_steps_per_rank_and_run_state(prometheus, job_telemetry):
    workers, driver = job_telemetry
    driver.set_state("running")
    for rank, steps in ((0, 12), (1, 7)):
        for _ in range(steps):
            workers[rank].record_step(0.1, 16, 0.02)

    result = prometheus.wait_for(
        "multilabel_train_steps_total",
        lambda r: values_by_label(r, "rank") == {"0": 12.0, "1": 7.0},
        timeout_seconds=30,
    )
    assert {r["metric"]["run"] for r in result} == {RUN}
    assert {r["metric"]["job"] for r in result} == {"multilabel-workers"}

    prometheus.wait_for('multilabel_run_state{state="running"} == 1', lambda r: len(r) == 1, timeout_seconds=30)
    driver.set_state("succeeded")
    result = prometheus.wait_for(
        'multilabel_run_state{state="succeeded"} == 1', lambda r: len(r) == 1, timeout_seconds=30
    )
    assert result[0]["metric"]["run"] == RUN
    assert prometheus.query('multilabel_run_state{state="running"} == 1') == []


def test_every_dashboard_query_returns_data(prometheus, job_telemetry):
    workers, driver = job_telemetry
    driver.set_state("running")
    for worker in workers:
        worker.record_epoch(
            1,
            {
                "loss": 0.7,
                "val_loss": 0.8,
                "val_binary_accuracy": 0.6,
                "val_macro_f1": 0.4,
                "val_mean_average_precision": 0.5,
                "learning_rate": 0.001,
            },
        )
    workers[0].record_checkpoint(2.0, ok=True)

    def trained_between_scrapes(result):
        for worker in workers:  # keep training while waiting: rate() needs moving counters
            for _ in range(5):
                worker.record_step(0.2, 32, 0.05)
        return len(result) == 2

    prometheus.wait_for("increase(multilabel_train_steps_total[1m]) > 0", trained_between_scrapes, timeout_seconds=30)
    # increase() and rate() need two samples of a series: wait until every target (the driver's
    # too, whose counters never move here) has been scraped twice.
    prometheus.wait_for("count_over_time(up[1m]) >= 2", lambda result: len(result) == 3, timeout_seconds=30)

    dashboard = json.loads(DASHBOARD.read_text())
    exprs = []
    stack = list(dashboard["panels"])
    while stack:
        panel = stack.pop()
        stack.extend(panel.get("panels", []))
        exprs += [(panel["title"], t["expr"]) for t in panel.get("targets", [])]
    assert len(exprs) >= 15
    empty = []
    for title, expr in exprs:
        promql = expr.replace("$__rate_interval", "1m").replace('"$run"', '".*"').replace('"$rank"', '".*"')
        if not prometheus.query(promql):  # raises on a PromQL syntax error
            empty.append((title, promql))
    assert empty == []

    p50 = prometheus.query("histogram_quantile(0.5, sum by (le) (rate(multilabel_train_step_seconds_bucket[1m])))")
    # Steps of 0.2 s fall in the (0.1, 0.25] bucket; the quantile lies inside it.
    assert len(p50) == 1 and 0.1 < float(p50[0]["value"][1]) <= 0.25, p50


def test_alert_rules_load_and_evaluate_in_a_real_prometheus(prometheus, job_telemetry):
    _, driver = job_telemetry
    driver.set_state("running")
    rules_in_file = [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]
    assert len(rules_in_file) >= 8, "the rules file lost rules"

    def evaluated(_):
        groups = prometheus.api("rules")["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        return len(rules) == len(rules_in_file) and all(r["health"] == "ok" for r in rules)

    prometheus.wait_for("vector(1)", evaluated, timeout_seconds=30)
    driver.set_state("failed")

    def run_failed_firing(_):
        alerts = prometheus.api("alerts")["alerts"]
        return any(
            a["labels"]["alertname"] == "MultilabelRunFailed" and a["state"] == "firing" and a["labels"]["run"] == RUN
            for a in alerts
        )

    prometheus.wait_for("vector(1)", run_failed_firing, timeout_seconds=30)
