"""Evaluation of a run's best checkpoint: predictions, metrics, thresholds, report and plots.

`evaluate_run` is what `train` calls at the end and what `python -m job evaluate` runs. It
computes first (`compute_evaluation`) and then writes, through the run store, to the run
(or `--output`), so s3:// works:

    metrics.json     one object per split (the contract), each with a "tuned" sub-object
    thresholds.json  per-label thresholds tuned on val (F1), with the class names
    predictions/SPLIT.parquet
                     one row per image of each evaluated split: id, true labels, score per
                     label, labels predicted at 0.5 and at the tuned thresholds (streamed in
                     row groups from the arrays the metrics use; docs/predictions.md)
    report.md        the seed's split table, test at 0.5 vs tuned, per-label table, links to
                     the predictions, worst errors per label, correlated-pair note
    per_label.csv    per split and label: support, P/R/F1/binary accuracy at 0.5 and tuned, AP
    predictions.png  test images titled "y: ..." / "p: ...", wrong labels in colour: the first
                     ones, or the worst errors (evaluation.prediction_grid)
    per_label.png    per-label bars, 0.5 vs tuned
    cooccurrence.png P(j | i) heatmap with counts
    history.png      loss, macro-F1 and learning rate per epoch (from history.json)
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from job import storage
from job.config import Config
from job.data import shards
from job.data.labels import CorrelatedPair, find_correlated_pairs
from job.errors import UserError
from job.evaluation import plots
from job.evaluation.loading import (
    SplitPredictions,
    check_same_labels,
    load_best_model,
    load_split_images,
    load_thresholds,
    predict_split,
)
from job.evaluation.report import (
    LabelErrors,
    format_pair_note,
    format_per_label_csv,
    format_report,
    format_table,
    format_worst_errors,
    worst_error_rows,
    worst_errors,
)
from job.evaluation.scores import evaluate_predictions, sigmoid, tune_thresholds
from job.storage.run_store import RunStore

log = logging.getLogger(__name__)

# Rows per row group of predictions/SPLIT.parquet: the most rows built at once while writing.
PREDICTION_ROWS_PER_GROUP = 8192


@dataclass(frozen=True)
class Evaluation:
    """Everything an evaluation computed, before anything is written."""

    run_uri: str
    data_uri: str
    class_names: list[str]
    metrics: dict  # metrics.json's content
    thresholds: np.ndarray  # (k,) the tuned thresholds
    thresholds_record: dict  # thresholds.json's content
    preds: dict[str, SplitPredictions]
    grid_split: str | None  # the split shown in predictions.png and the worst errors (test, else the last)
    grid_rows: np.ndarray  # rows of preds[grid_split] shown in predictions.png, in order
    grid_images: np.ndarray | None  # their decoded images (m, S, S, 3) uint8
    worst: list[LabelErrors]  # worst errors per label on grid_split, at the tuned thresholds
    prediction_grid: str  # "first" or "worst" (evaluation.prediction_grid)
    label_split: str  # the split(s) whose labels the co-occurrence is computed on
    y_labels: np.ndarray
    pairs: list[CorrelatedPair]
    pair_threshold: float
    best_epoch: int


def evaluate_run(
    run_uri: str,
    data_uri: str | None = None,
    cfg: Config | None = None,
    splits: tuple[str, ...] = shards.SPLITS,
    output_uri: str | None = None,
) -> dict:
    """Evaluate a run's best checkpoint on each split and write metrics, report and plots.

    Thresholds are tuned per label on the validation split (when it is evaluated and
    `evaluation.threshold_objective` is "f1") and saved as thresholds.json. Each split's
    metrics are reported at 0.5; the same metrics at the tuned thresholds are under "tuned".
    When val is not evaluated, the run's saved thresholds.json (if any) is used as "tuned".

    Returns:
        metrics.json's content.
    Raises:
        UserError: not a run, no intact checkpoint, a data set with other labels, an unknown
            or empty split, a bad thresholds.json.
    """
    result = compute_evaluation(run_uri, data_uri=data_uri, cfg=cfg, splits=splits)
    write_evaluation(result, RunStore(output_uri or run_uri))
    return result.metrics


def compute_evaluation(
    run_uri: str, data_uri: str | None = None, cfg: Config | None = None, splits: tuple[str, ...] = shards.SPLITS
) -> Evaluation:
    """Predict every requested split with the best checkpoint, tune thresholds, compute metrics."""
    saved = RunStore(run_uri).read_config()
    cfg = cfg or saved.config
    class_names = saved.class_names
    data_uri = data_uri or saved.data_uri
    if not data_uri:
        raise UserError(f"The run at {run_uri} does not say which data set it was trained on; pass --data URI.")
    manifest = shards.load_manifest(data_uri)
    check_same_labels(class_names, manifest, data_uri)
    unknown = [s for s in splits if s not in shards.SPLITS]
    if unknown or not splits:
        raise UserError(f"Unknown split(s) {unknown or list(splits)}; choose from {', '.join(shards.SPLITS)}.")
    if not any(manifest.num_examples(s) > 0 for s in splits):
        raise UserError(f"The data set at {data_uri} has no examples in split(s) {', '.join(splits)}.")

    model, restored = load_best_model(run_uri, cfg, len(class_names))
    grid_split = _grid_split(splits, manifest)
    grid_mode, grid_size = cfg.evaluation.prediction_grid, cfg.evaluation.prediction_grid_images
    preds = {
        s: predict_split(
            model,
            data_uri,
            manifest,
            s,
            cfg,
            # "worst" needs the scores of the whole split first; its images are read afterwards.
            keep_images=grid_size if s == grid_split and grid_mode == "first" else 0,
        )
        for s in splits
        if manifest.num_examples(s) > 0
    }
    thresholds, source = _choose_thresholds(run_uri, cfg, preds, class_names)
    worst: list[LabelErrors] = []
    grid_rows, grid_images = np.zeros(0, np.int64), None
    if grid_split is not None:
        focus = preds[grid_split]
        probs = sigmoid(focus.logits)
        worst = worst_errors(focus.y_true, probs, thresholds, class_names)
        if grid_mode == "worst" and grid_size > 0:
            rows = worst_error_rows(worst_errors(focus.y_true, probs, thresholds, class_names, grid_size), grid_size)
            grid_rows = np.asarray(rows, dtype=np.int64)
            grid_images = _worst_images(data_uri, manifest, grid_split, cfg, focus.ids, grid_rows)
        elif focus.images is not None:
            grid_rows, grid_images = np.arange(len(focus.images)), focus.images
    metrics: dict = {}
    for split, p in preds.items():
        metrics[split] = evaluate_predictions(p.y_true, p.logits, class_names, 0.5)
        metrics[split]["num_examples"] = int(len(p.y_true))
        metrics[split]["tuned"] = evaluate_predictions(p.y_true, p.logits, class_names, thresholds)
    metrics["checkpoint"] = {"uri": restored.uri, "epoch": restored.epoch, "val_loss": restored.state.get("val_loss")}
    label_split, y_labels = _label_source(preds)
    pair_threshold = cfg.evaluation.correlated_pair_threshold
    return Evaluation(
        run_uri=run_uri,
        data_uri=data_uri,
        class_names=class_names,
        metrics=metrics,
        thresholds=thresholds,
        thresholds_record={
            "class_names": class_names,
            "thresholds": [float(t) for t in thresholds],
            "objective": cfg.evaluation.threshold_objective,
            "source": source,
            "checkpoint": restored.uri,
        },
        preds=preds,
        grid_split=grid_split,
        grid_rows=grid_rows,
        grid_images=grid_images,
        worst=worst,
        prediction_grid=grid_mode,
        label_split=label_split,
        y_labels=y_labels,
        pairs=find_correlated_pairs(y_labels, class_names, pair_threshold),
        pair_threshold=pair_threshold,
        best_epoch=restored.epoch,
    )


def write_evaluation(result: Evaluation, out: RunStore) -> None:
    """Write thresholds.json, metrics.json, the per-image predictions, report.md, per_label.csv
    and the figures to `out`."""
    out.write_thresholds(result.thresholds_record)
    out.write_metrics(result.metrics)
    predictions = write_predictions(result, out)
    metrics = result.metrics
    log.info("results (thresholds at 0.5):\n%s", format_table(metrics))
    if "test" in metrics:
        log.info(
            "test macro-F1 %.4f at 0.5, %.4f at tuned thresholds",
            metrics["test"]["macro_f1"],
            metrics["test"]["tuned"]["macro_f1"],
        )
    pair_note = format_pair_note(
        result.pairs,
        result.y_labels,
        result.class_names,
        result.label_split,
        result.preds,
        result.thresholds,
        result.pair_threshold,
        result.data_uri,
    )
    worst_note = ""
    if result.grid_split is not None:
        worst_note = format_worst_errors(
            result.worst,
            result.preds[result.grid_split].ids,
            result.grid_split,
            out.predictions_name(result.grid_split),
        )
    out.write_report(
        format_report(
            metrics,
            result.class_names,
            run_uri=result.run_uri,
            data_uri=result.data_uri,
            pair_note=pair_note,
            predictions=predictions,
            worst_errors_note=worst_note,
            prediction_grid=result.prediction_grid,
        ),
        format_per_label_csv(metrics, result.class_names),
    )
    written = write_plots(result, out)
    log.info(
        "wrote metrics.json, thresholds.json, %s, report.md, per_label.csv, %s to %s",
        ", ".join(predictions.values()),
        ", ".join(written),
        out.uri,
    )


# ---------------------------------------------------------------------------- per-image predictions


def write_predictions(result: Evaluation, out: RunStore) -> dict[str, str]:
    """Write predictions/SPLIT.parquet for every evaluated split; remove those of other splits.

    A file left from an earlier evaluation of a split this one skipped would disagree with
    the metrics.json just written, so it goes.

    Returns:
        {split: the file's name relative to `out`}, in split order.
    """
    written = {}
    for split in shards.SPLITS:
        if split not in result.preds:
            if out.remove_predictions(split):
                log.info("removed %s: %s is not evaluated this time", out.predictions_name(split), split)
            continue
        p = result.preds[split]
        schema = predictions_schema(result.class_names, result.thresholds, split, result.thresholds_record)
        out.write_predictions(split, schema, prediction_batches(p, schema, result.class_names, result.thresholds))
        written[split] = out.predictions_name(split)
    return written


def predictions_schema(
    class_names: Sequence[str], thresholds: np.ndarray, split: str, thresholds_record: dict | None = None
) -> pa.Schema:
    """The schema of predictions/SPLIT.parquet, with class names and thresholds in its metadata.

    Columns: id (string), labels (list<string>), score_<label> (float32, one per label in
    class_names order), predicted (list<string>: score > 0.5), predicted_tuned (list<string>:
    score > the label's tuned threshold). Metadata (JSON values): class_names, thresholds,
    split, threshold_source, checkpoint.
    """
    names = pa.list_(pa.string())
    record = thresholds_record or {}
    metadata = {
        "class_names": json.dumps(list(class_names)),
        "thresholds": json.dumps([float(t) for t in thresholds]),
        "split": json.dumps(split),
        "threshold_source": json.dumps(record.get("source")),
        "checkpoint": json.dumps(record.get("checkpoint")),
    }
    return pa.schema(
        [
            pa.field("id", pa.string()),
            pa.field("labels", names),
            *(pa.field(f"score_{name}", pa.float32()) for name in class_names),
            pa.field("predicted", names),
            pa.field("predicted_tuned", names),
        ],
        metadata=metadata,
    )


def prediction_batches(
    p: SplitPredictions,
    schema: pa.Schema,
    class_names: Sequence[str],
    thresholds: np.ndarray,
    rows_per_group: int = PREDICTION_ROWS_PER_GROUP,
) -> Iterator[pa.RecordBatch]:
    """predictions/SPLIT.parquet's rows, `rows_per_group` at a time, built from the split's arrays.

    Only one group's columns exist at a time: the arrays the metrics were computed from are
    sliced, never copied whole. The decisions use the same float64 probabilities as
    metrics.json (`p > t`), so `predicted`/`predicted_tuned` match its figures exactly; the
    stored scores are those probabilities rounded to float32.
    """
    names = pa.array(list(class_names), pa.string())
    t = np.asarray(thresholds, dtype=np.float64)[None, :]
    ids = p.ids if p.ids is not None else np.full(len(p.y_true), "", dtype=object)
    for start in range(0, len(p.y_true), max(1, rows_per_group)):
        stop = start + rows_per_group
        probs = sigmoid(p.logits[start:stop])
        scores = probs.astype(np.float32)
        columns = [
            pa.array(ids[start:stop], pa.string()),
            _label_lists(p.y_true[start:stop] > 0, names),
            *(pa.array(scores[:, j]) for j in range(scores.shape[1])),
            _label_lists(probs > 0.5, names),
            _label_lists(probs > t, names),
        ]
        yield pa.RecordBatch.from_arrays(columns, schema=schema)


def _label_lists(mask: np.ndarray, names: pa.Array) -> pa.ListArray:
    """One list of label names per row of an (m, k) bool mask, in class order."""
    _, cols = np.nonzero(mask)  # row-major: each row's labels in class order
    offsets = np.zeros(len(mask) + 1, dtype=np.int32)
    np.cumsum(mask.sum(axis=1), out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), names.take(pa.array(cols, pa.int64())))


def _choose_thresholds(
    run_uri: str, cfg: Config, preds: dict[str, SplitPredictions], class_names: list[str]
) -> tuple[np.ndarray, str]:
    """(thresholds, source): tuned on val when it is evaluated, else the run's saved ones, else 0.5."""
    if cfg.evaluation.threshold_objective != "f1":
        return np.full(len(class_names), 0.5), "none"
    if "val" in preds:
        thresholds, warnings = tune_thresholds(
            preds["val"].y_true, sigmoid(preds["val"].logits), class_names=class_names
        )
        for w in warnings:
            log.warning("%s", w)
        return thresholds, "f1"
    saved = load_thresholds(run_uri, class_names)
    if saved is not None:
        log.info("val is not evaluated: the run's saved thresholds.json is used as 'tuned'")
        return saved, "saved"
    log.warning("val is not evaluated and the run has no thresholds.json: 'tuned' uses 0.5")
    return np.full(len(class_names), 0.5), "none"


def _grid_split(splits: tuple[str, ...], manifest: shards.Manifest) -> str | None:
    """The split shown in predictions.png: test, else val, else train."""
    for s in ("test", "val", "train"):
        if s in splits and manifest.num_examples(s) > 0:
            return s
    return None


def _worst_images(
    data_uri: str, manifest: shards.Manifest, split: str, cfg: Config, ids: np.ndarray, rows: np.ndarray
) -> np.ndarray | None:
    """The images of `rows` for the "worst" grid (a second read of the split, by id), or None.

    The images are found by id, so the split's ids must tell its examples apart. Like a figure
    that fails to draw, a grid that cannot be made is logged and skipped: never the metrics.
    """
    if len(set(ids)) != len(ids):
        log.warning(
            "predictions.png not drawn: evaluation.prediction_grid=worst finds images by id, and the %s split's "
            "ids are not unique (re-create the data set with `prepare`, which gives each image its path as id)",
            split,
        )
        return None
    try:
        return load_split_images(data_uri, manifest, split, cfg, ids[rows])
    except Exception as exc:  # noqa: BLE001 - a figure must never lose the run's metrics
        log.warning(
            "predictions.png not drawn: reading the worst errors' images failed: %s: %s", type(exc).__name__, exc
        )
        return None


def _label_source(preds: dict[str, SplitPredictions]) -> tuple[str, np.ndarray]:
    """Labels used for co-occurrence: the train split (what the model learnt from) when evaluated."""
    if "train" in preds:
        return "train", preds["train"].y_true
    names = [s for s in shards.SPLITS if s in preds]
    return "+".join(names), np.concatenate([preds[s].y_true for s in names])


# ---------------------------------------------------------------------------- plots


def write_plots(result: Evaluation, out: RunStore) -> list[str]:
    """Draw the figures and write them under `out`. A figure that fails is logged and skipped,
    so a plotting problem never loses the metrics a training run produced."""
    metrics, class_names, thresholds = result.metrics, result.class_names, result.thresholds
    jobs = {}
    grid = result.preds.get(result.grid_split) if result.grid_split else None
    if grid is not None and result.grid_images is not None:
        rows = result.grid_rows
        worst = result.prediction_grid == "worst"
        jobs["predictions.png"] = lambda: plots.prediction_grid(
            result.grid_images,
            grid.y_true[rows],
            sigmoid(grid.logits[rows]),
            thresholds,
            class_names,
            title=f"{result.grid_split.capitalize()}"
            + (": worst errors at tuned thresholds" if worst else " predictions at tuned thresholds"),
            ids=[str(i) for i in grid.ids[rows]] if grid.ids is not None else None,
        )
    focus = "test" if "test" in metrics else next((s for s in reversed(shards.SPLITS) if s in metrics), None)
    if focus is not None:
        jobs["per_label.png"] = lambda: plots.per_label_bars(
            metrics[focus]["per_label"],
            metrics[focus]["tuned"]["per_label"],
            class_names,
            title=f"Per-label metrics on {focus} ({metrics[focus]['num_examples']} images)",
        )
    jobs["cooccurrence.png"] = lambda: plots.cooccurrence_heatmap(
        result.y_labels,
        class_names,
        title=f"Label co-occurrence ({result.label_split} split, {len(result.y_labels)} images)",
    )
    history = RunStore(result.run_uri).read_history()
    if history is not None:
        jobs["history.png"] = lambda: plots.history_curves(
            history, title=f"Training history of {storage.basename(result.run_uri)}", best_epoch=result.best_epoch
        )
    written = []
    for name, draw in jobs.items():
        try:
            data = draw()
        except Exception as exc:  # noqa: BLE001 - a figure must never lose the run's metrics
            log.warning("could not draw %s: %s: %s", name, type(exc).__name__, exc)
            continue
        out.write_plot(name, data)
        written.append(name)
    return written
