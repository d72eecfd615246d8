"""job.evaluation.evaluate's pure parts: tables, report, per-label CSV, thresholds file checks, pair note."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest

from job.data.labels import find_correlated_pairs
from job.errors import UserError
from job.evaluation import evaluate, loading, report
from job.evaluation.scores import evaluate_predictions

NAMES = ["desert", "mountains", "sea", "sunset", "trees"]


def _split(n: int, seed: int, tie: bool = False):
    rng = np.random.default_rng(seed)
    y = (rng.random((n, len(NAMES))) < 0.4).astype(np.int64)
    if tie:
        y[:, 3] = y[:, 2]  # sunset always with sea
    logits = np.where(y > 0, 2.0, -2.0) + rng.normal(0, 1.5, y.shape)
    return y, logits.astype(np.float32)


def _metrics(tie: bool = False):
    metrics, preds = {}, {}
    thresholds = np.array([0.3, 0.4, 0.5, 0.6, 0.7])
    for i, split in enumerate(("train", "val", "test")):
        y, logits = _split(60, i, tie=tie and split != "test")
        preds[split] = loading.SplitPredictions(split, y, logits)
        metrics[split] = evaluate_predictions(y, logits, NAMES, 0.5)
        metrics[split]["num_examples"] = 60
        metrics[split]["tuned"] = evaluate_predictions(y, logits, NAMES, thresholds)
    metrics["checkpoint"] = {"uri": "/runs/r/checkpoint_epoch-000002", "epoch": 2, "val_loss": 0.3}
    return metrics, preds, thresholds


def test_per_label_csv_has_every_split_label_and_column():
    metrics, _, thresholds = _metrics()
    rows = list(csv.DictReader(io.StringIO(report.format_per_label_csv(metrics, NAMES))))
    assert tuple(rows[0].keys()) == report.PER_LABEL_CSV_COLUMNS
    assert [(r["split"], r["label"]) for r in rows] == [(s, n) for s in ("train", "val", "test") for n in NAMES]
    test_sea = next(r for r in rows if r["split"] == "test" and r["label"] == "sea")
    assert float(test_sea["threshold"]) == pytest.approx(thresholds[2])
    assert float(test_sea["f1_at_0.5"]) == pytest.approx(metrics["test"]["per_label"]["sea"]["f1"], abs=1e-6)
    assert float(test_sea["f1_tuned"]) == pytest.approx(metrics["test"]["tuned"]["per_label"]["sea"]["f1"], abs=1e-6)
    assert int(test_sea["support"]) == metrics["test"]["per_label"]["sea"]["support"]


def test_per_label_csv_leaves_undefined_average_precision_empty():
    y, logits = _split(20, 0)
    y[:, 4] = 0
    m = evaluate_predictions(y, logits, NAMES, 0.5)
    metrics = {"test": {**m, "tuned": m, "num_examples": 20}}
    rows = list(csv.DictReader(io.StringIO(report.format_per_label_csv(metrics, NAMES))))
    assert rows[4]["label"] == "trees" and rows[4]["average_precision"] == ""


def test_report_has_split_table_threshold_table_and_per_label_rows():
    metrics, preds, thresholds = _metrics()
    note = report.format_pair_note([], preds["train"].y_true, NAMES, "train", preds, thresholds, 0.95)
    text = report.format_report(metrics, NAMES, run_uri="/runs/r", data_uri="/data/d", pair_note=note)
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("| split |"))
    assert all(c in header for c in report.TABLE_COLUMNS)
    for split in ("train", "val", "test"):
        row = next(line for line in lines if line.startswith(f"| {split} |"))
        assert f"{metrics[split]['macro_f1']:.4f}" in row
    assert (
        next(line for line in lines if line.startswith("| tuned |")).count(
            f"{metrics['test']['tuned']['macro_f1']:.4f}"
        )
        == 1
    )
    for name in NAMES:
        assert any(line.startswith(f"| {name} |") for line in lines)
    assert "No pair of labels" in text


def test_pair_note_names_tied_pair_and_exactly_one_accuracy():
    metrics, preds, thresholds = _metrics(tie=True)
    pairs = find_correlated_pairs(preds["train"].y_true, NAMES, 0.95)
    assert [(p.first, p.second) for p in pairs] == [("sea", "sunset")]
    note = report.format_pair_note(pairs, preds["train"].y_true, NAMES, "train", preds, thresholds, 0.95)
    assert "**sea + sunset**" in note
    test = preds["test"]
    one = (test.y_true[:, 2] > 0) != (test.y_true[:, 3] > 0)
    assert f"On the {int(one.sum())} test images with only one of them" in note


def test_format_table_prints_undefined_map_as_dash():
    metrics, _, _ = _metrics()
    metrics["test"]["mean_average_precision"] = None
    table = report.format_table(metrics)
    assert table.splitlines()[3].split()[6] == "-"


def _write_thresholds(tmp_path, obj) -> str:
    (tmp_path / "thresholds.json").write_text(json.dumps(obj))
    return str(tmp_path)


def test_load_thresholds_reads_a_good_file(tmp_path):
    run = _write_thresholds(tmp_path, {"class_names": NAMES, "thresholds": [0.1, 0.2, 0.3, 0.4, 0.5]})
    np.testing.assert_allclose(loading.load_thresholds(run, NAMES), [0.1, 0.2, 0.3, 0.4, 0.5])


def test_load_thresholds_missing_file_is_none(tmp_path):
    assert loading.load_thresholds(str(tmp_path), NAMES) is None


@pytest.mark.parametrize(
    "obj, words",
    [
        ({"class_names": NAMES, "thresholds": [0.5, 0.5, 0.5]}, "has 3 threshold(s), but the run has 5 labels"),
        ({"class_names": NAMES[::-1], "thresholds": [0.5] * 5}, "is for labels"),
        ({"class_names": NAMES, "thresholds": [0.5, 0.5, 0.5, 0.5, 1.5]}, "outside [0, 1]"),
        ({"class_names": NAMES}, "not a valid thresholds file"),
    ],
)
def test_load_thresholds_rejects_bad_files(tmp_path, obj, words):
    run = _write_thresholds(tmp_path, obj)
    with pytest.raises(UserError, match="python -m job evaluate") as info:
        loading.load_thresholds(run, NAMES)
    assert words in str(info.value)


def test_evaluate_run_on_a_folder_that_is_not_a_run(tmp_path):
    with pytest.raises(UserError, match="is not a run folder"):
        evaluate.evaluate_run(str(tmp_path))
