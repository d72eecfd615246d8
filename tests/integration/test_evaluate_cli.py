"""`train` / `evaluate` outputs on a real (tiny) run: files, thresholds, clear errors, s3://.

One run (200 synthetic images, 2 epochs, `train --local`) is trained once per session and
shared with tests/integration/test_export_predict.py; tests that break a run copy it first.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
from pathlib import Path

import pytest
from PIL import Image

from job import storage
from tests.cli import assert_clean_error, run_cli
from tests.contracts import METRICS_SPLIT_KEYS, PER_LABEL_CSV_COLUMNS, PER_LABEL_KEYS, SPLITS
from tests.trained_run import shared_run

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SPLIT_KEYS = METRICS_SPLIT_KEYS | {"tuned", "num_examples"}
LABEL_KEYS = PER_LABEL_KEYS
PNG_SIZES = {
    "predictions.png": (1320, 1370),
    "per_label.png": (1600, 750),
    "cooccurrence.png": (1025, 875),
    "history.png": (1500, 480),
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return shared_run(tmp_path_factory)


def check_outputs(read, exists) -> dict:
    """Assert every evaluation file is there and parses; returns metrics.json."""
    metrics = json.loads(read("metrics.json"))
    for split in SPLITS:
        assert SPLIT_KEYS <= set(metrics[split]), split
        assert set(metrics[split]["per_label"]) == {"desert", "mountains", "sea", "sunset", "trees"}
        for report in metrics[split]["per_label"].values():
            assert LABEL_KEYS <= set(report)
    assert metrics["checkpoint"]["epoch"] in (1, 2)
    thresholds = json.loads(read("thresholds.json"))
    assert len(thresholds["thresholds"]) == 5
    rows = list(csv.DictReader(io.StringIO(read("per_label.csv").decode())))
    assert PER_LABEL_CSV_COLUMNS == set(rows[0])
    assert len(rows) == 15
    for r in rows:
        t = metrics[r["split"]]["tuned"]["per_label"][r["label"]]
        assert float(r["threshold"]) == pytest.approx(t["threshold"], abs=1e-6)
        assert float(r["f1_tuned"]) == pytest.approx(t["f1"], abs=1e-6)
    report = read("report.md").decode()
    for section in (
        "## Metrics per split",
        "## test: threshold 0.5 vs tuned",
        "## Per label (test)",
        "## Correlated labels",
    ):
        assert section in report
    assert f"{metrics['test']['macro_f1']:.4f}" in report
    for name, size in PNG_SIZES.items():
        assert exists(name), name
        image = Image.open(io.BytesIO(read(name)))
        assert image.format == "PNG" and image.size == size, name
    return metrics


def test_train_writes_every_evaluation_output(trained):
    _, run = trained
    check_outputs(lambda name: (run / name).read_bytes(), lambda name: (run / name).stat().st_size > 1000)


def test_tuned_thresholds_do_not_lower_val_f1(trained):
    _, run = trained
    metrics = json.loads((run / "metrics.json").read_text())
    val = metrics["val"]
    assert val["tuned"]["macro_f1"] >= val["macro_f1"] - 1e-12
    for name, at_half in val["per_label"].items():
        assert val["tuned"]["per_label"][name]["f1"] >= at_half["f1"] - 1e-12, name


def test_evaluate_cli_writes_to_output_folder(trained, tmp_path):
    data, run = trained
    out = tmp_path / "eval"
    done = run_cli("evaluate", "--run", str(run), "--data", str(data), "--output", str(out), "--splits", "val,test")
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"val", "test", "checkpoint"}
    assert {
        "report.md",
        "per_label.csv",
        "predictions.png",
        "per_label.png",
        "cooccurrence.png",
        "history.png",
        "thresholds.json",
    } <= set(os.listdir(out))
    # The same checkpoint and data give the same numbers as the run's own evaluation.
    original = json.loads((run / "metrics.json").read_text())
    assert metrics["test"]["macro_f1"] == pytest.approx(original["test"]["macro_f1"], abs=1e-6)


def test_evaluate_run_without_checkpoints(trained, tmp_path):
    _, run = trained
    empty = tmp_path / "no-checkpoints"
    empty.mkdir()
    shutil.copy(run / "config.json", empty / "config.json")
    assert_clean_error(run_cli("evaluate", "--run", str(empty)), "no intact checkpoint", "Train it first")


def test_evaluate_data_with_other_class_names(trained, tmp_path):
    data, run = trained
    other = tmp_path / "other-labels"
    shutil.copytree(data, other)
    manifest = json.loads((other / "dataset.json").read_text())
    manifest["class_names"] = ["cat", "dog", "fish", "bird", "frog"]
    (other / "dataset.json").write_text(json.dumps(manifest))
    assert_clean_error(
        run_cli("evaluate", "--run", str(run), "--data", str(other), "--output", str(tmp_path / "o")),
        "has labels ['cat'",
        "the run was trained on",
    )


def test_evaluate_with_thresholds_of_wrong_width(trained, tmp_path):
    _, run = trained
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    (copy / "thresholds.json").write_text(json.dumps({"thresholds": [0.5, 0.5, 0.5]}))
    # Without val, evaluation uses the saved thresholds: it must refuse a file of the wrong width.
    assert_clean_error(
        run_cli("evaluate", "--run", str(copy), "--splits", "test"), "has 3 threshold(s), but the run has 5 labels"
    )


def test_evaluate_an_s3_run(trained, bucket):
    data, run = trained
    s3_data, s3_run = f"s3://{bucket}/datasets/tiny", f"s3://{bucket}/runs/tiny"
    storage.upload_dir(str(data), s3_data)
    storage.upload_dir(str(run), s3_run)
    for name in ("metrics.json", "report.md", "per_label.csv", *PNG_SIZES):
        storage.delete(storage.join(s3_run, name))
    done = run_cli("evaluate", "--run", s3_run, "--data", s3_data)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    metrics = check_outputs(
        lambda name: storage.read_bytes(storage.join(s3_run, name)),
        lambda name: storage.size(storage.join(s3_run, name)) > 1000,
    )
    local = json.loads((run / "metrics.json").read_text())
    assert metrics["test"]["macro_f1"] == pytest.approx(local["test"]["macro_f1"], abs=1e-6)
