"""A real 2-worker Ray run watched the way users watch it: a real Prometheus scraping it with
the project's own scrape targets, and TensorBoard event files on the embedded S3 server.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import yaml

from job import storage
from tests.cli import run_cli
from tests.prometheus_server import PrometheusServer, values_by_label

pytestmark = [pytest.mark.integration, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]


def _project_targets() -> dict[str, list[str]]:
    """Scrape jobs and targets exactly as monitoring/prometheus-local.yml lists them."""
    cfg = yaml.safe_load((ROOT / "monitoring" / "prometheus-local.yml").read_text())
    return {
        job["job_name"]: [t for sc in job["static_configs"] for t in sc["targets"]] for job in cfg["scrape_configs"]
    }


def test_prometheus_scrapes_a_two_worker_run_and_tensorboard_lands_on_s3(s3_server, tmp_path):
    bucket = f"obs-{uuid.uuid4().hex[:10]}"
    storage.ensure_bucket(f"s3://{bucket}")
    data, run = f"s3://{bucket}/datasets/d", f"s3://{bucket}/runs/watched"
    run_cli("synth", "--out", data, "--num-images", "300", "--quiet", timeout=180, check=True)
    with PrometheusServer.start(tmp_path / "prom", _project_targets(), interval="1s") as prom:
        result = run_cli(
            "train",
            "--config",
            "configs/demo.yaml",
            "--data",
            data,
            "--output",
            run,
            "--set",
            "training.epochs=2",
            "--set",
            "model.width=8",
            "--set",
            "data.batch_size_per_worker=16",
            "--set",
            "telemetry.final_scrape_wait_seconds=4",
            timeout=420,
        )
        assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
        # Series go stale once a worker exits, so ask for the highest value seen during the run.
        steps = values_by_label(prom.query("max_over_time(multilabel_train_steps_total[15m])"), "rank")
        assert set(steps) == {"0", "1"} and all(v > 0 for v in steps.values()), steps
        for name in ("multilabel_val_loss", "multilabel_val_macro_f1", "multilabel_val_mean_average_precision"):
            assert prom.query(f"max_over_time({name}[15m])"), f"{name} was never scraped"
        state = prom.query('last_over_time(multilabel_run_state{state="succeeded"}[15m])')
        assert state and float(state[0]["value"][1]) == 1.0, state
        failed = prom.query('last_over_time(multilabel_run_state{state="failed"}[15m])')
        assert failed and float(failed[0]["value"][1]) == 0.0

    events = [u for u in storage.list_files(storage.join(run, "tensorboard")) if "tfevents" in u]
    assert events, "no TensorBoard event files under the run"
    import tensorflow as tf

    tags = set()
    for i, uri in enumerate(events):
        local = tmp_path / f"events-{i}"
        local.write_bytes(storage.read_bytes(uri))
        for event in tf.compat.v1.train.summary_iterator(str(local)):
            tags.update(v.tag for v in event.summary.value)
    assert {"epoch_loss", "epoch_learning_rate"} <= tags, tags
