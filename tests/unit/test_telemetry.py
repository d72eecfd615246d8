"""job.telemetry: metric names and labels, values a dashboard shows, lint, ports, cardinality."""

from __future__ import annotations

import logging
import math
import socket
import subprocess
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from job.telemetry import (
    CHECKPOINT_SECONDS_BUCKETS,
    STEP_SECONDS_BUCKETS,
    DriverTelemetry,
    WorkerTelemetry,
    resolve_bind_address,
    worker_port,
)
from tests.cli import require_tool, run_command
from tests.prometheus_server import free_port

EPOCH_LOGS = {
    "loss": 0.25,
    "val_loss": 0.5,
    "val_binary_accuracy": 0.9,
    "val_macro_f1": 0.75,
    "val_mean_average_precision": 0.8,
    "learning_rate": 0.001,
}


def samples(exposition: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Parse an exposition into {(sample name, sorted labels): value}."""
    out = {}
    for family in text_string_to_metric_families(exposition.decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(exposition: bytes, name: str, **labels: str) -> float:
    key = (name, tuple(sorted(labels.items())))
    found = samples(exposition)
    assert key in found, f"{name}{labels} not exported; have {sorted(k[0] for k in found)}"
    return found[key]


def busy_worker(run: str = "r1", rank: int = 0, steps: int = 10) -> WorkerTelemetry:
    w = WorkerTelemetry(run, rank, port=None)
    for _ in range(steps):
        w.record_step(0.2, 32, 0.05)
    w.record_epoch(1, EPOCH_LOGS)
    w.record_checkpoint(1.5, ok=True)
    w.record_checkpoint(0.5, ok=False)
    w.add_s3_retries(3)
    return w


def promtool_check(exposition: bytes) -> subprocess.CompletedProcess:
    promtool = require_tool("promtool")
    return run_command([promtool, "check", "metrics"], input=exposition, timeout=30)


# ---- ports -------------------------------------------------------------------------------


def test_worker_port_is_base_plus_local_rank():
    assert worker_port(9401, 0) == 9401
    assert worker_port(9401, 3) == 9404
    with pytest.raises(ValueError):
        worker_port(9401, -1)


# ---- values ------------------------------------------------------------------------------


def test_steps_examples_and_wait_are_counted_per_run_and_rank():
    w = busy_worker(run="exp-7", rank=1, steps=10)
    text = w.exposition()
    labels = {"run": "exp-7", "rank": "1"}
    assert value(text, "multilabel_train_steps_total", **labels) == 10
    assert value(text, "multilabel_train_examples_total", **labels) == 320
    assert value(text, "multilabel_input_wait_seconds_total", **labels) == pytest.approx(0.5)
    assert value(text, "multilabel_train_step_seconds_count", **labels) == 10
    assert value(text, "multilabel_train_step_seconds_sum", **labels) == pytest.approx(2.0)
    # 0.2 s steps land in the 0.25 s bucket, not in the 0.1 s one.
    assert value(text, "multilabel_train_step_seconds_bucket", le="0.1", **labels) == 0
    assert value(text, "multilabel_train_step_seconds_bucket", le="0.25", **labels) == 10


def test_throughput_and_stall_ratio_follow_recent_steps():
    w = WorkerTelemetry("r", 0, port=None)
    for _ in range(100):  # slow, input-bound phase
        w.record_step(1.0, 10, 0.9)
    text = w.exposition()
    assert value(text, "multilabel_train_examples_per_second", run="r", rank="0") == pytest.approx(10)
    assert value(text, "multilabel_input_stall_ratio", run="r", rank="0") == pytest.approx(0.9)
    for _ in range(100):  # the input pipeline caught up: the gauges show it, not a lifetime mean
        w.record_step(0.1, 10, 0.0)
    text = w.exposition()
    assert value(text, "multilabel_train_examples_per_second", run="r", rank="0") == pytest.approx(100)
    assert value(text, "multilabel_input_stall_ratio", run="r", rank="0") == 0


def test_stall_ratio_stays_within_0_and_1_for_inconsistent_timings():
    w = WorkerTelemetry("r", 0, port=None)
    w.record_step(0.1, 4, 5.0)  # wait longer than the step: a caller's clock mix-up
    assert value(w.exposition(), "multilabel_input_stall_ratio", run="r", rank="0") == 1.0
    w.record_step(0.0, 4, 0.0)
    assert 0.0 <= value(w.exposition(), "multilabel_input_stall_ratio", run="r", rank="0") <= 1.0


def test_gauges_are_not_exported_before_their_first_value():
    """A 0 loss or 0 img/s before the first epoch/step would be a lie on the dashboard."""
    w = WorkerTelemetry("r", 0, port=None)
    names = {k[0] for k in samples(w.exposition())}
    assert "multilabel_train_steps_total" in names  # counters start at 0 so increase() sees step 1
    assert "multilabel_checkpoint_failures_total" in names
    for gauge in (
        "multilabel_train_loss",
        "multilabel_train_examples_per_second",
        "multilabel_input_stall_ratio",
        "multilabel_epoch",
    ):
        assert gauge not in names


def test_epoch_logs_become_gauges_and_nan_stays_nan():
    w = WorkerTelemetry("r", 0, port=None)
    w.record_epoch(3, dict(EPOCH_LOGS, loss=float("nan"), unrelated_metric=5.0))
    text = w.exposition()
    assert value(text, "multilabel_epoch", run="r", rank="0") == 3
    assert math.isnan(value(text, "multilabel_train_loss", run="r", rank="0"))
    assert b'multilabel_train_loss{rank="0",run="r"} NaN' in text
    assert value(text, "multilabel_val_loss", run="r", rank="0") == 0.5
    assert value(text, "multilabel_val_binary_accuracy", run="r", rank="0") == 0.9
    assert value(text, "multilabel_val_macro_f1", run="r", rank="0") == 0.75
    assert value(text, "multilabel_val_mean_average_precision", run="r", rank="0") == 0.8
    assert value(text, "multilabel_learning_rate", run="r", rank="0") == 0.001
    assert b"unrelated_metric" not in text


def test_missing_epoch_keys_are_ignored_and_keep_last_value():
    w = WorkerTelemetry("r", 0, port=None)
    w.record_epoch(1, EPOCH_LOGS)
    w.record_epoch(2, {"loss": 0.125, "val_macro_f1": "not a number"})
    text = w.exposition()
    assert value(text, "multilabel_epoch", run="r", rank="0") == 2
    assert value(text, "multilabel_train_loss", run="r", rank="0") == 0.125
    assert value(text, "multilabel_val_macro_f1", run="r", rank="0") == 0.75


def test_checkpoint_saves_and_failures():
    w = WorkerTelemetry("r", 0, port=None)
    w.record_checkpoint(2.0, ok=True)
    w.record_checkpoint(400.0, ok=True)
    w.record_checkpoint(9.0, ok=False)
    text = w.exposition()
    assert value(text, "multilabel_checkpoint_saves_total", run="r", rank="0") == 2
    assert value(text, "multilabel_checkpoint_failures_total", run="r", rank="0") == 1
    assert value(text, "multilabel_checkpoint_save_seconds_count", run="r", rank="0") == 2
    assert value(text, "multilabel_checkpoint_save_seconds_bucket", run="r", rank="0", le="300.0") == 1
    assert value(text, "multilabel_checkpoint_save_seconds_bucket", run="r", rank="0", le="600.0") == 2


def test_bucket_ranges_cover_documented_spans():
    assert STEP_SECONDS_BUCKETS[0] <= 0.005 and STEP_SECONDS_BUCKETS[-1] >= 60
    assert CHECKPOINT_SECONDS_BUCKETS[0] <= 0.05 and CHECKPOINT_SECONDS_BUCKETS[-1] >= 600
    assert list(STEP_SECONDS_BUCKETS) == sorted(STEP_SECONDS_BUCKETS)


def test_driver_run_state_has_exactly_one_current_state():
    d = DriverTelemetry("exp-7", port=None)
    text = d.exposition()
    assert [value(text, "multilabel_run_state", run="exp-7", state=s) for s in ("running", "succeeded", "failed")] == [
        0,
        0,
        0,
    ]
    d.set_state("running")
    d.set_state("failed")
    text = d.exposition()
    assert value(text, "multilabel_run_state", run="exp-7", state="failed") == 1
    assert value(text, "multilabel_run_state", run="exp-7", state="running") == 0
    assert value(text, "multilabel_run_state", run="exp-7", state="succeeded") == 0
    with pytest.raises(ValueError, match="unknown run state"):
        d.set_state("paused")


def test_driver_counters():
    d = DriverTelemetry("r", port=None)
    d.add_worker_restarts(1)
    d.add_worker_restarts(0)
    d.add_worker_restarts(2, cause="preemption")
    d.add_preemptions(3)
    d.add_s3_retries(4)
    text = d.exposition()
    assert value(text, "multilabel_worker_restarts_total", run="r", cause="failure") == 1
    assert value(text, "multilabel_worker_restarts_total", run="r", cause="preemption") == 2
    assert value(text, "multilabel_preemptions_total", run="r") == 3
    assert value(text, "multilabel_s3_retries_total", run="r") == 4


def test_driver_and_workers_share_a_process_without_clashing():
    a, b, d = WorkerTelemetry("r", 0, None), WorkerTelemetry("r", 1, None), DriverTelemetry("r", None)
    a.record_step(0.1, 8, 0.0)
    assert value(a.exposition(), "multilabel_train_steps_total", run="r", rank="0") == 1
    assert value(b.exposition(), "multilabel_train_steps_total", run="r", rank="1") == 0
    assert b"rank=" not in d.exposition()


# ---- lint and cardinality ------------------------------------------------------------------


def test_promtool_accepts_worker_and_driver_exposition_without_warnings():
    worker = busy_worker()
    driver = DriverTelemetry("r1", port=None)
    driver.set_state("running")
    driver.add_worker_restarts(1)
    for text in (worker.exposition(), driver.exposition()):
        result = promtool_check(text)
        assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
        assert result.stdout.strip() == b"" and result.stderr.strip() == b"", (
            result.stdout.decode() + result.stderr.decode()
        )


def test_promtool_flags_a_bad_exposition():
    """Guards the lint test above: promtool must report our kind of mistake."""
    bad = b"# HELP multilabel_steps x\n# TYPE multilabel_steps counter\nmultilabel_steps 1\n"
    result = promtool_check(bad)
    assert b"_total" in result.stdout + result.stderr


def test_series_count_does_not_grow_with_steps():
    w = WorkerTelemetry("r", 0, port=None)
    for _ in range(10):
        w.record_step(0.05, 16, 0.01)
    w.record_epoch(1, EPOCH_LOGS)
    after_10 = set(samples(w.exposition()))
    for i in range(2000):
        w.record_step(0.001 * (i % 500), 16, 0.0)  # spread over all buckets
    w.record_epoch(2, EPOCH_LOGS)
    after_2010 = set(samples(w.exposition()))
    assert after_2010 == after_10
    assert len(after_10) < 80


# ---- HTTP server ---------------------------------------------------------------------------


def test_worker_serves_metrics_over_http_and_frees_the_port_on_close():
    port = free_port()
    w = WorkerTelemetry("r", 0, port=port)
    try:
        assert w.port == port
        w.record_step(0.1, 8, 0.0)
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
        assert value(body, "multilabel_train_steps_total", run="r", rank="0") == 1
    finally:
        w.close()
    assert w.port is None
    with socket.socket() as s:  # the port can be bound again: the server is really gone
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", port))
    w.close()  # idempotent


def test_taken_port_logs_a_warning_and_training_continues(caplog):
    port = free_port()
    first = DriverTelemetry("r", port=port)
    try:
        with caplog.at_level(logging.WARNING, logger="job.telemetry"):
            second = WorkerTelemetry("r", 0, port=port)
        assert second.port is None
        assert any(str(port) in rec.getMessage() and "continues" in rec.getMessage() for rec in caplog.records), (
            caplog.text
        )
        second.record_step(0.1, 8, 0.0)  # still records
        assert value(second.exposition(), "multilabel_train_steps_total", run="r", rank="0") == 1
        second.close()
    finally:
        first.close()


@pytest.mark.parametrize("port,enabled", [(None, True), (0, True), (12345, False)])
def test_no_server_when_disabled_or_no_port(port, enabled):
    w = WorkerTelemetry("r", 0, port=port, enabled=enabled)
    assert w.port is None
    w.close()


# ---- bind address (tests/unit/test_metrics_bind.py checks who can connect) ------------------


@pytest.mark.parametrize(
    "environ,expected",
    [
        ({}, "127.0.0.1"),  # train --local, or a Ray the driver starts itself
        ({"PATH": "/usr/bin", "RAY_ADDRESS": ""}, "127.0.0.1"),  # empty is unset, as for connect()
        ({"KUBERNETES_SERVICE_HOST": "10.96.0.1"}, "0.0.0.0"),  # any pod: the kubelet sets it
        ({"RAY_ADDRESS": "10.0.0.5:6379"}, "0.0.0.0"),  # joined a cluster: ray job submit, KubeRay
        ({"KUBERNETES_SERVICE_HOST": "10.96.0.1", "RAY_ADDRESS": "auto"}, "0.0.0.0"),
    ],
)
def test_auto_bind_address_is_loopback_unless_in_a_pod_or_on_a_cluster(environ, expected):
    assert resolve_bind_address("auto", environ) == expected


@pytest.mark.parametrize("setting", ["0.0.0.0", "127.0.0.1", "10.1.2.3", "::"])
def test_an_explicit_bind_address_wins_over_the_environment(setting):
    assert resolve_bind_address(setting, {}) == setting
    assert resolve_bind_address(setting, {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "RAY_ADDRESS": "x:1"}) == setting


def test_auto_reads_the_process_environment_by_default(monkeypatch):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert resolve_bind_address() == "127.0.0.1"
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    assert resolve_bind_address() == "0.0.0.0"
