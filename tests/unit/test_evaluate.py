"""job.evaluation.evaluate's pure parts: tables, report, per-label CSV, thresholds file checks, pair note,
the worst-errors lists, and the per-image predictions file (and the id-carrying reader behind it)."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from job.config import DataConfig
from job.data import pipeline, shards
from job.data.labels import find_correlated_pairs
from job.errors import UserError
from job.evaluation import evaluate, loading, report
from job.evaluation.scores import evaluate_predictions, sigmoid
from job.storage.run_store import RunStore

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


# ---------------------------------------------------------------------------- per-image predictions


def test_worst_errors_rank_confident_mistakes_per_label():
    # Label "a" (threshold 0.5): negatives at 0.9, 0.7, 0.95, 0.6 are false positives, 0.5 is
    # not (p > t); positives at 0.1 and 0.5 are false negatives, 0.8 is right.
    # Label "b" (threshold 0.2): every decision right.
    y = np.array([[0, 0], [0, 1], [1, 0], [0, 0], [1, 1], [0, 0], [0, 0], [1, 0]])
    probs = np.array([[0.9, 0.1], [0.7, 0.9], [0.1, 0.0], [0.95, 0.1], [0.8, 0.3], [0.5, 0.1], [0.6, 0.2], [0.5, 0.1]])
    a, b = report.worst_errors(y, probs, [0.5, 0.2], ["a", "b"])
    assert (a.label, a.threshold) == ("a", 0.5)
    assert a.false_positives == [(3, 0.95), (0, 0.9), (1, 0.7)]  # 0.6 is the 4th: cut at 3
    assert a.false_negatives == [(2, 0.1), (7, 0.5)]  # 0.5 is not above 0.5: missed
    assert b.false_positives == [] and b.false_negatives == []
    # A deeper list for the grid; ties keep data set order.
    tied = report.worst_errors(np.zeros((3, 1)), np.full((3, 1), 0.7), [0.5], ["a"], limit=10)[0]
    assert [row for row, _ in tied.false_positives] == [0, 1, 2]


def test_worst_error_rows_take_each_labels_worst_before_anyones_second():
    e = report.LabelErrors
    errors = [
        e("a", 0.5, [(3, 0.9), (0, 0.8), (5, 0.7)], [(2, 0.1)]),
        e("b", 0.5, [], [(3, 0.2), (4, 0.3)]),
        e("c", 0.5, [(6, 0.99)], []),
    ]
    # Rank 1: a-FP 3, a-FN 2, b-FN 3 (already shown), c-FP 6; rank 2: a-FP 0, b-FN 4; rank 3: a-FP 5.
    assert report.worst_error_rows(errors, 10) == [3, 2, 6, 0, 4, 5]
    assert report.worst_error_rows(errors, 3) == [3, 2, 6]
    assert report.worst_error_rows([e("a", 0.5, [], [])], 4) == []


def test_worst_errors_section_names_ids_and_scores_escaped():
    errors = [
        report.LabelErrors("a|b", 0.25, [(1, 0.875)], []),
        report.LabelErrors("c", 0.5, [], [(0, 0.0625), (2, 0.125)]),
    ]
    text = report.format_worst_errors(errors, ["img<0>", "x|y", "z"], "test", "predictions/test.parquet")
    lines = text.splitlines()
    assert "| a\\|b | 0.250 | x\\|y (0.875) | - |" in lines
    assert "| c | 0.500 | - | img&lt;0&gt; (0.062), z (0.125) |" in lines
    assert "[predictions/test.parquet](predictions/test.parquet)" in text
    quiet = report.format_worst_errors([report.LabelErrors("c", 0.5, [], [])], [], "val", "predictions/val.parquet")
    assert "No label has a wrong decision on val" in quiet


def test_report_links_the_predictions_and_shows_the_worst_errors():
    metrics, preds, thresholds = _metrics()
    note = report.format_pair_note([], preds["train"].y_true, NAMES, "train", preds, thresholds, 0.95)
    links = {s: f"predictions/{s}.parquet" for s in ("train", "val", "test")}
    text = report.format_report(
        metrics,
        NAMES,
        run_uri="/runs/r",
        data_uri="/data/d",
        pair_note=note,
        predictions=links,
        worst_errors_note="WORST-TABLE",
        prediction_grid="worst",
    )
    for split in ("train", "val", "test"):
        assert f"- [predictions/{split}.parquet](predictions/{split}.parquet): {split}, 60 images" in text
    assert "## Worst errors (test)\n\nWORST-TABLE" in text
    assert "the test images with the worst errors" in text
    assert text.index("## Per label (test)") < text.index("## Worst errors") < text.index("## Correlated labels")


def _predictions(n: int = 10):
    y, logits = _split(n, 7)
    logits[0] = 0.0  # exactly 0.5: not predicted (p > t)
    ids = np.array([f"img-{i:02d}" for i in range(n)], dtype=object)
    return loading.SplitPredictions("test", y, logits, ids=ids)


def test_predictions_file_streams_row_groups_with_every_column(tmp_path):
    p = _predictions(10)
    thresholds = np.array([0.3, 0.4, 0.5, 0.6, 0.7])
    schema = evaluate.predictions_schema(NAMES, thresholds, "test", {"source": "f1", "checkpoint": "ck"})
    batches = evaluate.prediction_batches(p, schema, NAMES, thresholds, rows_per_group=4)
    assert not isinstance(batches, (list, tuple))  # a generator: one row group built at a time
    store = RunStore(str(tmp_path / "run"))
    assert store.write_predictions("test", schema, batches) == 10
    path = tmp_path / "run" / "predictions" / "test.parquet"
    assert store.predictions_uri("test") == str(path)
    parquet = pq.ParquetFile(path)
    assert [parquet.metadata.row_group(i).num_rows for i in range(parquet.num_row_groups)] == [4, 4, 2]
    table = parquet.read()
    assert table.column_names == ["id", "labels", *(f"score_{n}" for n in NAMES), "predicted", "predicted_tuned"]
    assert table.schema.field("score_sea").type == pa.float32()
    assert table.schema.field("labels").type == pa.list_(pa.string())
    meta = {k.decode(): json.loads(v) for k, v in table.schema.metadata.items()}
    assert meta == {
        "class_names": NAMES,
        "thresholds": thresholds.tolist(),
        "split": "test",
        "threshold_source": "f1",
        "checkpoint": "ck",
    }
    rows = table.to_pylist()
    probs = sigmoid(p.logits)
    assert [r["id"] for r in rows] == list(p.ids)
    for i, r in enumerate(rows):
        assert r["labels"] == [n for j, n in enumerate(NAMES) if p.y_true[i, j]]
        assert [r[f"score_{n}"] for n in NAMES] == pytest.approx(probs[i], abs=1e-7)
        assert r["predicted"] == [n for j, n in enumerate(NAMES) if probs[i, j] > 0.5]
        assert r["predicted_tuned"] == [n for j, n in enumerate(NAMES) if probs[i, j] > thresholds[j]]
    assert rows[0]["predicted"] == []  # every score of row 0 is exactly 0.5


def test_remove_predictions_only_touches_the_named_split(tmp_path):
    store = RunStore(str(tmp_path))
    schema = evaluate.predictions_schema(NAMES, np.full(5, 0.5), "train")
    for split in ("train", "test"):
        store.write_predictions(split, schema, iter(()))
    assert store.remove_predictions("train") and not store.remove_predictions("val")
    assert sorted(p.name for p in (tmp_path / "predictions").iterdir()) == ["test.parquet"]


@pytest.mark.parametrize("fmt", shards.FORMATS)
def test_ids_travel_with_their_examples_past_the_pixel_limit(tmp_path, fmt):
    # 7 examples over 2 shards; example 2 is 40 x 40 = 1600 px, above a limit of 400 px. The
    # labels spell each example's index in bits, so an id that drifted from its example shows.
    def image(i: int, side: int) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(np.full((side, side, 3), 20 * i, np.uint8)).save(buf, format="PNG")
        return buf.getvalue()

    examples = [
        shards.Example(
            id=f"ex-{i}", image=image(i, 40 if i == 2 else 20), labels=np.array([(i >> b) & 1 for b in range(3)])
        )
        for i in range(7)
    ]
    root = str(tmp_path / "ds")
    written = shards.write_split(root, "test", iter(examples), 7, 2, fmt, 3)
    manifest = shards.Manifest(format=fmt, class_names=["c0", "c1", "c2"], splits={"test": written})
    cfg = DataConfig(image_size=8, max_pixels=400, prefetch_batches=0)
    ds = pipeline.make_pipeline(
        pipeline.examples_from_shards(root, manifest, "test", with_ids=True), cfg, training=False, batch_size=4
    )
    ids, labels, pixels = [], [], []
    for x, (y, batch_ids) in ds.as_numpy_iterator():
        ids += [i.decode() for i in batch_ids]
        labels.append(y)
        pixels += [float(img[0, 0, 0]) for img in x]
    assert ids == ["ex-0", "ex-1", "ex-3", "ex-4", "ex-5", "ex-6"]
    index = [int(i.split("-")[1]) for i in ids]
    assert np.concatenate(labels).tolist() == [[(i >> b) & 1 for b in range(3)] for i in index]
    assert pixels == pytest.approx([20.0 * i for i in index], abs=0.01)  # each image is its own example's
