"""`train` / `evaluate` outputs on a real (tiny) run: files, thresholds, clear errors, s3://,
and the per-image predictions (predictions/SPLIT.parquet) checked against metrics.json.

One run (200 synthetic images, 2 epochs, `train --local`) is trained once per session and
shared with tests/integration/test_export_predict.py; tests that break a run copy it first.
The prediction-grid and pixel-limit tests evaluate in this process (no second TensorFlow
start) and only the test split, with the run's saved thresholds.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from job import storage
from job.data import shards
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
    # A train split file from an earlier evaluation would disagree with the new metrics.json.
    (out / "predictions").mkdir(parents=True)
    shutil.copy(run / "predictions" / "train.parquet", out / "predictions" / "train.parquet")
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
    assert sorted(os.listdir(out / "predictions")) == ["test.parquet", "val.parquet"]
    report = (out / "report.md").read_text()
    assert "[predictions/val.parquet](predictions/val.parquet)" in report
    assert "predictions/train.parquet" not in report


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
    for name in ("metrics.json", "report.md", "per_label.csv", "predictions", *PNG_SIZES):
        storage.delete(storage.join(s3_run, name))
    done = run_cli("evaluate", "--run", s3_run, "--data", s3_data)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    metrics = check_outputs(
        lambda name: storage.read_bytes(storage.join(s3_run, name)),
        lambda name: storage.size(storage.join(s3_run, name)) > 1000,
    )
    local = json.loads((run / "metrics.json").read_text())
    assert metrics["test"]["macro_f1"] == pytest.approx(local["test"]["macro_f1"], abs=1e-6)
    # The per-image files went to the bucket too, and hold what the local evaluation wrote.
    for split in SPLITS:
        on_s3 = _read_predictions(storage.read_bytes(storage.join(s3_run, "predictions", f"{split}.parquet")))
        _assert_same_predictions(on_s3, pq.read_table(run / "predictions" / f"{split}.parquet"))


# ---------------------------------------------------------------------------- per-image predictions


def _read_predictions(data: bytes) -> pa.Table:
    return pq.read_table(pa.BufferReader(data))


def _meta(table: pa.Table) -> dict:
    return {k.decode(): json.loads(v) for k, v in table.schema.metadata.items()}


def _split_examples(data: Path, split: str) -> list[shards.Example]:
    """The split's examples, in data set order, as the shards hold them."""
    manifest = shards.load_manifest(str(data))
    return [example for _, example in shards.read_split(str(data), manifest, split)]


def _labels_and_scores(table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """(n, k) 0/1 labels and float64 scores from a predictions file, in its class_names order."""
    names = _meta(table)["class_names"]
    y = np.array([[name in row for name in names] for row in table.column("labels").to_pylist()], dtype=np.int64)
    scores = np.stack([table.column(f"score_{name}").to_numpy() for name in names], axis=1).astype(np.float64)
    return y, scores


def _assert_same_predictions(got: pa.Table, want: pa.Table) -> None:
    assert got.column("id").to_pylist() == want.column("id").to_pylist()
    for name in ("labels", "predicted", "predicted_tuned"):
        assert got.column(name).to_pylist() == want.column(name).to_pylist(), name
    np.testing.assert_allclose(_labels_and_scores(got)[1], _labels_and_scores(want)[1], atol=1e-6)
    assert _meta(got)["thresholds"] == pytest.approx(_meta(want)["thresholds"], abs=1e-12)


def test_predictions_files_give_back_the_metrics(trained):
    from job.evaluation.scores import evaluate_predictions

    data, run = trained
    metrics = json.loads((run / "metrics.json").read_text())
    thresholds = json.loads((run / "thresholds.json").read_text())["thresholds"]
    for split in SPLITS:
        table = pq.read_table(run / "predictions" / f"{split}.parquet")
        meta = _meta(table)
        names = meta["class_names"]
        assert names == ["desert", "mountains", "sea", "sunset", "trees"]
        assert (meta["split"], meta["thresholds"]) == (split, thresholds)
        assert table.column_names == ["id", "labels", *(f"score_{n}" for n in names), "predicted", "predicted_tuned"]
        assert table.column("id").to_pylist() == [e.id for e in _split_examples(data, split)]
        assert table.num_rows == metrics[split]["num_examples"]
        y, scores = _labels_and_scores(table)
        # The predicted columns are the scores against 0.5 and against the tuned thresholds.
        for column, t in (("predicted", np.full(len(names), 0.5)), ("predicted_tuned", np.asarray(thresholds))):
            decided = [[n for j, n in enumerate(names) if s[j] > t[j]] for s in scores]
            assert table.column(column).to_pylist() == decided, (split, column)
        with np.errstate(divide="ignore"):
            logits = np.log(scores) - np.log1p(-scores)
        for at, want in ((0.5, metrics[split]), (thresholds, metrics[split]["tuned"])):
            got = evaluate_predictions(y, logits, names, at)
            for key in ("micro_f1", "macro_f1", "mean_average_precision"):
                assert got[key] == pytest.approx(want[key], abs=1e-6), (split, at, key)
            assert {n: r["support"] for n, r in got["per_label"].items()} == {
                n: r["support"] for n, r in want["per_label"].items()
            }


def _run_config(run: Path, **changes):
    """The run's saved config with `section.key=value` changes, e.g. data__max_pixels=400."""
    from job.storage.run_store import RunStore

    cfg = RunStore(str(run)).read_config().config
    for key, value in changes.items():
        section, name = key.split("__")
        cfg = dataclasses.replace(cfg, **{section: dataclasses.replace(getattr(cfg, section), **{name: value})})
    return cfg


def test_an_image_above_the_pixel_limit_is_left_out_of_predictions_and_metrics(trained, tmp_path, bucket):
    from job.evaluation.evaluate import evaluate_run

    data, run = trained
    # The data set again, with one 4x larger image put in the middle of test (2 shards).
    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    manifest = shards.load_manifest(str(copy))
    test = _split_examples(copy, "test")
    width, height = Image.open(io.BytesIO(test[0].image)).size
    big = io.BytesIO()
    Image.fromarray(np.full((2 * height, 2 * width, 3), 90, np.uint8)).save(big, format="JPEG")
    test.insert(13, shards.Example(id="too-big", image=big.getvalue(), labels=test[0].labels))
    written = shards.write_split(str(copy), "test", iter(test), len(test), 2, manifest.format, 5, generation="big")
    shards.write_manifest(str(copy), dataclasses.replace(manifest, splits={**manifest.splits, "test": written}))

    out = f"s3://{bucket}/evaluations/pixel-limit"
    cfg = _run_config(run, data__max_pixels=width * height)
    metrics = evaluate_run(str(run), data_uri=str(copy), cfg=cfg, splits=("test",), output_uri=out)

    got = _read_predictions(storage.read_bytes(storage.join(out, "predictions", "test.parquet")))
    assert "too-big" not in got.column("id").to_pylist()
    assert metrics["test"]["num_examples"] == len(test) - 1 == got.num_rows
    # Every other row is the one the run's own evaluation wrote for that image: nothing shifted.
    _assert_same_predictions(got, pq.read_table(run / "predictions" / "test.parquet"))
    original = json.loads((run / "metrics.json").read_text())["test"]
    for key in ("micro_f1", "macro_f1", "mean_average_precision"):
        assert metrics["test"][key] == pytest.approx(original[key], abs=1e-6), key


def test_worst_errors_grid_and_report(trained, tmp_path, monkeypatch):
    from job.data.pipeline import decode_image
    from job.evaluation import plots
    from job.evaluation.evaluate import evaluate_run
    from job.evaluation.report import worst_error_rows, worst_errors

    data, run = trained
    drawn = {}
    draw = plots.prediction_grid

    def keep(images, y_true, probs, thresholds, class_names, **kwargs):
        drawn.update(images=images, y_true=y_true, **kwargs)
        return draw(images, y_true, probs, thresholds, class_names, **kwargs)

    monkeypatch.setattr(plots, "prediction_grid", keep)
    out = tmp_path / "worst"
    cfg = _run_config(run, evaluation__prediction_grid="worst", evaluation__prediction_grid_images=6)
    evaluate_run(str(run), data_uri=str(data), cfg=cfg, splits=("test",), output_uri=str(out))

    table = pq.read_table(out / "predictions" / "test.parquet")
    meta, ids = _meta(table), table.column("id").to_pylist()
    y, scores = _labels_and_scores(table)
    rows = worst_error_rows(worst_errors(y, scores, meta["thresholds"], meta["class_names"], limit=6), 6)
    assert rows, "the 2-epoch model makes no mistake on test: nothing to check"
    assert drawn["ids"] == [ids[r] for r in rows]
    assert drawn["title"] == "Test: worst errors at tuned thresholds"
    np.testing.assert_array_equal(drawn["y_true"], y[rows])
    # Each image is the one its id names in the shards (decoded as evaluation decodes).
    size = cfg.data.image_size
    by_id = {example.id: example.image for example in _split_examples(data, "test")}
    for image, example_id in zip(drawn["images"], drawn["ids"]):
        want = decode_image(by_id[example_id], size).numpy()
        assert np.abs(image.astype(np.float64) - want).max() <= 1.0, example_id
    # 4 images a row at 3.3 x 3.0 inches each (100 dpi), plus title and legend.
    assert Image.open(out / "predictions.png").size == (330 * min(len(rows), 4), 170 + 300 * -(-len(rows) // 4))

    report = (out / "report.md").read_text()
    assert "the test images with the worst errors" in report
    section = report[report.index("## Worst errors (test)") : report.index("## Correlated labels")]
    for e in worst_errors(y, scores, meta["thresholds"], meta["class_names"]):
        cells = next(line for line in section.splitlines() if line.startswith(f"| {e.label} |")).split(" | ")
        for cell, ranked in ((cells[2], e.false_positives), (cells[3], e.false_negatives)):
            listed = re.findall(r"(\S+) \(([0-9.]+)\)", cell)
            assert [i for i, _ in listed] == [ids[row] for row, _ in ranked], e.label
            assert [float(v) for _, v in listed] == pytest.approx([v for _, v in ranked], abs=6e-4), e.label
