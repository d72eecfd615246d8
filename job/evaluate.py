"""Evaluation of a run's best checkpoint: predictions, metrics, thresholds, report and plots.

`evaluate_run` is what `train` calls at the end and what `python -m job evaluate` runs. It
writes to the run (or `--output`), always through `job.storage` so s3:// works:

    metrics.json     one object per split (the contract), each with a "tuned" sub-object
    thresholds.json  per-label thresholds tuned on val (F1), with the class names
    report.md        the seed's split table, test at 0.5 vs tuned, per-label table,
                     correlated-pair note
    per_label.csv    per split and label: support, P/R/F1/binary accuracy at 0.5 and tuned, AP
    predictions.png  test images titled "y: ..." / "p: ...", wrong labels in colour
    per_label.png    per-label bars, 0.5 vs tuned
    cooccurrence.png P(j | i) heatmap with counts
    history.png      loss, macro-F1 and learning rate per epoch (from history.json)

This module imports neither Ray, boto3 nor prometheus_client.
"""

from __future__ import annotations

import csv
import io
import logging
from dataclasses import dataclass

import numpy as np

from job import checkpoints, records, storage
from job.config import Config, config_from_dict
from job.errors import UserError

log = logging.getLogger("job.evaluate")

TABLE_COLUMNS = ("loss", "binary_accuracy", "cosine_similarity", "micro_f1", "macro_f1", "mean_average_precision",
                 "hamming_loss", "subset_accuracy")
# Metrics that change with the decision threshold (loss, cosine and mAP do not).
THRESHOLD_COLUMNS = ("binary_accuracy", "micro_f1", "macro_f1", "hamming_loss", "subset_accuracy")
PER_LABEL_CSV_COLUMNS = (
    "split", "label", "support", "threshold",
    "precision_at_0.5", "recall_at_0.5", "f1_at_0.5", "binary_accuracy_at_0.5",
    "precision_tuned", "recall_tuned", "f1_tuned", "binary_accuracy_tuned",
    "average_precision",
)
THRESHOLDS_FILE = "thresholds.json"
PLOT_FILES = ("predictions.png", "per_label.png", "cooccurrence.png", "history.png")


@dataclass(frozen=True)
class SplitPredictions:
    """Labels and logits of one split, in data set order."""

    split: str
    y_true: np.ndarray  # (n, k) 0/1
    logits: np.ndarray  # (n, k) float32
    images: np.ndarray | None = None  # first few decoded images (m, S, S, 3) uint8, for the grid


# ---------------------------------------------------------------------------- loading


def load_run_config(run_uri: str) -> tuple[Config, list[str], str]:
    """(config, class names, data URI) saved with a run."""
    uri = storage.join(run_uri, "config.json")
    if not storage.exists(uri):
        raise UserError(f"{run_uri} is not a run folder (no config.json). Pass the --output of a `train` run.")
    saved = storage.read_json(uri)
    return config_from_dict(saved["config"]), list(saved["class_names"]), saved.get("data", "")


def load_best_model(run_uri: str, cfg: Config, num_classes: int):
    """Build the run's model and load its best intact checkpoint's weights."""
    import tensorflow as tf

    from job.model import build_model

    restored = (checkpoints.restore_best(run_uri) if cfg.training.restore_best_weights
                else checkpoints.restore_latest(run_uri))
    if restored is None:
        raise UserError(f"The run at {run_uri} has no intact checkpoint to evaluate. Train it first "
                        f"(`python -m job train ... --output {run_uri}`).")
    model = build_model(cfg.model.backbone, num_classes, cfg.data.image_size, weights="none",
                        width=cfg.model.width, dropout_rate=cfg.model.dropout_rate, precision="float32")
    tf.train.Checkpoint(model=model).read(restored.weights_prefix).expect_partial()
    log.info("evaluating %s (epoch %d, val_loss %s)", restored.uri, restored.epoch, restored.state.get("val_loss"))
    checkpoints.remove_local(restored.local_dir)
    return model, restored


def load_thresholds(run_uri: str, class_names: list[str]) -> np.ndarray | None:
    """The run's tuned thresholds (thresholds.json), checked against its class names.

    Returns:
        (k,) float64 thresholds, or None when the run has no thresholds.json.
    Raises:
        UserError: the file is unreadable, names other labels, or has the wrong width.
    """
    uri = storage.join(run_uri, THRESHOLDS_FILE)
    if not storage.exists(uri):
        return None
    fix = f"Re-create it with `python -m job evaluate --run {run_uri}`."
    try:
        saved = storage.read_json(uri)
        values = np.asarray(saved["thresholds"], dtype=np.float64)
    except (ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{uri} is not a valid thresholds file ({type(exc).__name__}: {exc}). {fix}") from None
    if values.ndim != 1 or len(values) != len(class_names):
        raise UserError(f"{uri} has {values.size} threshold(s), but the run has {len(class_names)} labels "
                        f"({', '.join(class_names)}). {fix}")
    names = saved.get("class_names")
    if names is not None and list(names) != list(class_names):
        raise UserError(f"{uri} is for labels {names}, but the run was trained on {class_names}. {fix}")
    if not np.all((values >= 0.0) & (values <= 1.0)):
        raise UserError(f"{uri} has thresholds outside [0, 1]: {values.tolist()}. {fix}")
    return values


def predict_split(model, data_uri: str, manifest: records.Manifest, split: str, cfg: Config,
                  keep_images: int = 0) -> SplitPredictions:
    """Run the model over a whole split, in order; keep the first `keep_images` images."""
    from job.inputs import examples_from_shards, make_pipeline

    ds = make_pipeline(examples_from_shards(data_uri, manifest, split), cfg.data, training=False,
                       batch_size=max(cfg.data.batch_size_per_worker, 64))
    ys, logits, kept = [], [], []
    for images, labels in ds:
        logits.append(model(images, training=False).numpy().astype(np.float32))
        ys.append(labels.numpy().astype(np.int64))
        if sum(len(k) for k in kept) < keep_images:
            kept.append(np.clip(np.round(images.numpy()), 0, 255).astype(np.uint8))
    k = len(manifest.class_names)
    return SplitPredictions(split, np.concatenate(ys) if ys else np.zeros((0, k), np.int64),
                            np.concatenate(logits) if logits else np.zeros((0, k), np.float32),
                            np.concatenate(kept)[:keep_images] if kept else None)


def check_same_labels(run_classes: list[str], manifest: records.Manifest, data_uri: str) -> None:
    if list(run_classes) != list(manifest.class_names):
        raise UserError(
            f"The data set at {data_uri} has labels {manifest.class_names}, but the run was trained on "
            f"{run_classes}. Evaluate with the data set the run was trained on, or one with the same class_names."
        )


# ---------------------------------------------------------------------------- evaluation


def evaluate_run(run_uri: str, data_uri: str | None = None, cfg: Config | None = None,
                 splits: tuple[str, ...] = records.SPLITS, output_uri: str | None = None) -> dict:
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
    from job.metrics import evaluate_predictions, sigmoid, tune_thresholds

    saved_cfg, class_names, saved_data = load_run_config(run_uri)
    cfg = cfg or saved_cfg
    data_uri = data_uri or saved_data
    if not data_uri:
        raise UserError(f"The run at {run_uri} does not say which data set it was trained on; pass --data URI.")
    manifest = records.load_manifest(data_uri)
    check_same_labels(class_names, manifest, data_uri)
    unknown = [s for s in splits if s not in records.SPLITS]
    if unknown or not splits:
        raise UserError(f"Unknown split(s) {unknown or list(splits)}; choose from {', '.join(records.SPLITS)}.")
    if not any(manifest.num_examples(s) > 0 for s in splits):
        raise UserError(f"The data set at {data_uri} has no examples in split(s) {', '.join(splits)}.")
    model, restored = load_best_model(run_uri, cfg, len(class_names))
    grid_split = _grid_split(splits, manifest)
    preds = {s: predict_split(model, data_uri, manifest, s, cfg,
                              keep_images=cfg.evaluation.prediction_grid_images if s == grid_split else 0)
             for s in splits if manifest.num_examples(s) > 0}

    out = output_uri or run_uri
    thresholds, source = np.full(len(class_names), 0.5), "none"
    if cfg.evaluation.threshold_objective == "f1" and "val" in preds:
        thresholds, warnings = tune_thresholds(preds["val"].y_true, sigmoid(preds["val"].logits),
                                               class_names=class_names)
        source = "f1"
        for w in warnings:
            log.warning("%s", w)
    elif cfg.evaluation.threshold_objective == "f1":
        saved = load_thresholds(run_uri, class_names)
        if saved is not None:
            thresholds, source = saved, "saved"
            log.info("val is not evaluated: the run's saved thresholds.json is used as 'tuned'")
        else:
            log.warning("val is not evaluated and the run has no thresholds.json: 'tuned' uses 0.5")
    storage.write_json(storage.join(out, THRESHOLDS_FILE),
                       {"class_names": class_names, "thresholds": [float(t) for t in thresholds],
                        "objective": cfg.evaluation.threshold_objective, "source": source,
                        "checkpoint": restored.uri})
    metrics: dict = {}
    for split, p in preds.items():
        metrics[split] = evaluate_predictions(p.y_true, p.logits, class_names, 0.5)
        metrics[split]["num_examples"] = int(len(p.y_true))
        metrics[split]["tuned"] = evaluate_predictions(p.y_true, p.logits, class_names, thresholds)
    metrics["checkpoint"] = {"uri": restored.uri, "epoch": restored.epoch, "val_loss": restored.state.get("val_loss")}
    storage.write_json(storage.join(out, "metrics.json"), metrics)
    log.info("results (thresholds at 0.5):\n%s", format_table(metrics))
    if "test" in metrics:
        log.info("test macro-F1 %.4f at 0.5, %.4f at tuned thresholds",
                 metrics["test"]["macro_f1"], metrics["test"]["tuned"]["macro_f1"])

    label_split, y_labels = _label_source(preds)
    pairs = _correlated_pairs(y_labels, class_names, cfg.evaluation.correlated_pair_threshold)
    storage.write_text(storage.join(out, "report.md"),
                       format_report(metrics, class_names, run_uri=run_uri, data_uri=data_uri,
                                     pair_note=format_pair_note(pairs, y_labels, class_names, label_split, preds,
                                                                thresholds, cfg.evaluation.correlated_pair_threshold,
                                                                data_uri)))
    storage.write_text(storage.join(out, "per_label.csv"), format_per_label_csv(metrics, class_names))
    written = write_plots(out, run_uri, metrics, preds, thresholds, class_names, grid_split, label_split, y_labels,
                          restored.epoch)
    log.info("wrote metrics.json, thresholds.json, report.md, per_label.csv, %s to %s", ", ".join(written), out)
    return metrics


def _grid_split(splits: tuple[str, ...], manifest: records.Manifest) -> str | None:
    """The split shown in predictions.png: test, else val, else train."""
    for s in ("test", "val", "train"):
        if s in splits and manifest.num_examples(s) > 0:
            return s
    return None


def _label_source(preds: dict[str, SplitPredictions]) -> tuple[str, np.ndarray]:
    """Labels used for co-occurrence: the train split (what the model learnt from) when evaluated."""
    if "train" in preds:
        return "train", preds["train"].y_true
    names = [s for s in records.SPLITS if s in preds]
    return "+".join(names), np.concatenate([preds[s].y_true for s in names])


def _correlated_pairs(y: np.ndarray, class_names: list[str], threshold: float):
    from job.labels import find_correlated_pairs

    return find_correlated_pairs(y, class_names, threshold)


# ---------------------------------------------------------------------------- text outputs


def _fmt(value, digits: int = 4) -> str:
    """A metric for a table: fixed digits, '-' when undefined."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


def format_table(metrics: dict) -> str:
    """The seed's per-split table (rows train/val/test) with F1, mAP, Hamming and subset accuracy."""
    header = f"{'':<6}" + "".join(f"{c:>{max(len(c), 8) + 2}}" for c in TABLE_COLUMNS)
    rows = [header]
    for split in records.SPLITS:
        if split in metrics:
            rows.append(f"{split:<6}" + "".join(
                f"{_fmt(metrics[split][c]):>{max(len(c), 8) + 2}}" for c in TABLE_COLUMNS))
    return "\n".join(rows)


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" if i else "---" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def format_report(metrics: dict, class_names: list[str], *, run_uri: str, data_uri: str, pair_note: str) -> str:
    """report.md: split table, test at 0.5 vs tuned, per-label table, correlated-pair note.

    Args:
        metrics: metrics.json's content.
        class_names: label order.
        run_uri, data_uri: shown in the header.
        pair_note: markdown from `format_pair_note`.
    Returns:
        The markdown text.
    """
    splits = [s for s in records.SPLITS if s in metrics]
    ck = metrics.get("checkpoint", {})
    val_loss = ck.get("val_loss")
    parts = [
        "# Evaluation report",
        "",
        f"- run: `{run_uri}`",
        f"- data: `{data_uri}`",
        f"- checkpoint: `{ck.get('uri')}` (epoch {ck.get('epoch')}, val_loss {_fmt(val_loss)})",
        "- examples: " + ", ".join(f"{s} {metrics[s]['num_examples']}" for s in splits),
        "",
        "## Metrics per split (threshold 0.5)",
        "",
        "Cosine similarity is positive (1 = perfect); Hamming loss is the share of wrong label decisions; "
        "subset accuracy is the share of images with every label right.",
        "",
        _md_table(["split", *TABLE_COLUMNS], [[s, *(_fmt(metrics[s][c]) for c in TABLE_COLUMNS)] for s in splits]),
        "",
    ]
    focus = "test" if "test" in metrics else splits[-1]
    m = metrics[focus]
    parts += [
        f"## {focus}: threshold 0.5 vs tuned thresholds",
        "",
        "Thresholds are tuned per label to maximise F1 on the val split (thresholds.json); loss, cosine "
        "similarity and mAP do not depend on the threshold.",
        "",
        _md_table(["thresholds", *THRESHOLD_COLUMNS],
                  [["0.5", *(_fmt(m[c]) for c in THRESHOLD_COLUMNS)],
                   ["tuned", *(_fmt(m["tuned"][c]) for c in THRESHOLD_COLUMNS)]]),
        "",
        f"## Per label ({focus})",
        "",
    ]
    rows = []
    for name in class_names:
        a, t = m["per_label"][name], m["tuned"]["per_label"][name]
        rows.append([name, str(a["support"]), _fmt(t["threshold"], 3),
                     _fmt(a["precision"], 3), _fmt(a["recall"], 3), _fmt(a["f1"], 3), _fmt(a["binary_accuracy"], 3),
                     _fmt(t["precision"], 3), _fmt(t["recall"], 3), _fmt(t["f1"], 3), _fmt(t["binary_accuracy"], 3),
                     _fmt(a["average_precision"], 3)])
    parts += [
        _md_table(["label", "support", "tuned threshold", "precision@0.5", "recall@0.5", "F1@0.5", "accuracy@0.5",
                   "precision tuned", "recall tuned", "F1 tuned", "accuracy tuned", "AP"], rows),
        "",
        "## Correlated labels",
        "",
        pair_note,
        "",
        "## Figures",
        "",
        "- `predictions.png`: test images with true (y) and predicted (p) labels; red = false positive, "
        "orange = missed label.",
        "- `per_label.png`: precision, recall, F1 and binary accuracy per label at 0.5 and tuned.",
        "- `cooccurrence.png`: P(j | i) and counts of label pairs.",
        "- `history.png`: loss, macro-F1 and learning rate per epoch.",
        "",
    ]
    return "\n".join(parts)


def format_pair_note(pairs, y: np.ndarray, class_names: list[str], label_split: str,
                     preds: dict[str, SplitPredictions], thresholds: np.ndarray, threshold: float,
                     data_uri: str = "URI") -> str:
    """Markdown on label pairs the data (almost) never shows apart, and what that means for the scores.

    For each flagged pair, the test images with exactly one of the two labels (if any) show
    whether the model can tell them apart: per-label accuracy on the pair alone cannot.
    """
    from job.labels import conditional_probabilities

    n = len(y)
    lines = []
    if not pairs:
        p = conditional_probabilities(y)
        k = len(class_names)
        best = None
        for i in range(k):
            for j in range(i + 1, k):
                tie = min(p[i, j], p[j, i])
                if not np.isnan(tie) and (best is None or tie > best[0]):
                    best = (tie, i, j)
        lines.append(f"No pair of labels appears together in at least {threshold:.0%} of both labels' images "
                     f"({label_split} split, {n} images), so the data shows every pair apart often enough to learn.")
        if best is not None:
            _, i, j = best
            a, b = class_names[i], class_names[j]
            lines.append(f"The most tied pair is {a} + {b}: P({b} | {a}) = {p[i, j]:.2f}, "
                         f"P({a} | {b}) = {p[j, i]:.2f}.")
        return " ".join(lines)
    lines.append(f"These pairs appear together in at least {threshold:.0%} of both labels' images "
                 f"({label_split} split, {n} images). The data cannot teach the model to tell them apart, so "
                 "high per-label accuracy on them says nothing about whether it can: add images with only one "
                 f"of the two labels. See `python -m job analyze --data {data_uri}`.")
    lines.append("")
    test = preds.get("test")
    for pr in pairs:
        a, b = pr.first, pr.second
        line = (f"- **{a} + {b}**: P({b} | {a}) = {pr.p_second_given_first:.2f}, P({a} | {b}) = "
                f"{pr.p_first_given_second:.2f}; {pr.both} images with both, {pr.first_only} with only {a}, "
                f"{pr.second_only} with only {b}.")
        if test is not None:
            line += " " + _exactly_one_summary(test, class_names, a, b, thresholds)
        lines.append(line)
    return "\n".join(lines)


def _exactly_one_summary(test: SplitPredictions, class_names: list[str], a: str, b: str,
                         thresholds: np.ndarray) -> str:
    """How the model does on test images that carry exactly one of `a` and `b`."""
    from job.metrics import sigmoid

    i, j = class_names.index(a), class_names.index(b)
    one = (test.y_true[:, i] > 0) != (test.y_true[:, j] > 0)
    if not one.any():
        return "The test split has no image with only one of them, so it cannot show whether the model separates them."
    probs = sigmoid(test.logits[one][:, [i, j]])
    truth = test.y_true[one][:, [i, j]] > 0
    right_half = np.all((probs > 0.5) == truth, axis=1).mean()
    right_tuned = np.all((probs > thresholds[[i, j]]) == truth, axis=1).mean()
    return (f"On the {int(one.sum())} test images with only one of them, both decisions are right for "
            f"{right_half:.0%} at 0.5 ({right_tuned:.0%} at tuned thresholds).")


def format_per_label_csv(metrics: dict, class_names: list[str]) -> str:
    """per_label.csv: one row per (split, label) with metrics at 0.5 and at the tuned threshold."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(PER_LABEL_CSV_COLUMNS)
    for split in records.SPLITS:
        if split not in metrics:
            continue
        for name in class_names:
            a, t = metrics[split]["per_label"][name], metrics[split]["tuned"]["per_label"][name]
            ap = a["average_precision"]
            writer.writerow([split, name, a["support"], f"{t['threshold']:.6f}",
                             *(f"{a[c]:.6f}" for c in ("precision", "recall", "f1", "binary_accuracy")),
                             *(f"{t[c]:.6f}" for c in ("precision", "recall", "f1", "binary_accuracy")),
                             "" if ap is None else f"{ap:.6f}"])
    return buffer.getvalue()


# ---------------------------------------------------------------------------- plots


def write_plots(out: str, run_uri: str, metrics: dict, preds: dict[str, SplitPredictions], thresholds: np.ndarray,
                class_names: list[str], grid_split: str | None, label_split: str, y_labels: np.ndarray,
                best_epoch: int | None) -> list[str]:
    """Draw the figures and write them under `out`. A figure that fails is logged and skipped,
    so a plotting problem never loses the metrics a training run produced."""
    from job import plots
    from job.metrics import sigmoid

    jobs = {}
    if grid_split is not None and preds[grid_split].images is not None:
        p = preds[grid_split]
        m = len(p.images)
        jobs["predictions.png"] = lambda: plots.prediction_grid(
            p.images, p.y_true[:m], sigmoid(p.logits[:m]), thresholds, class_names,
            title=f"{grid_split.capitalize()} predictions at tuned thresholds")
    focus = "test" if "test" in metrics else next((s for s in reversed(records.SPLITS) if s in metrics), None)
    if focus is not None:
        jobs["per_label.png"] = lambda: plots.per_label_bars(
            metrics[focus]["per_label"], metrics[focus]["tuned"]["per_label"], class_names,
            title=f"Per-label metrics on {focus} ({metrics[focus]['num_examples']} images)")
    jobs["cooccurrence.png"] = lambda: plots.cooccurrence_heatmap(
        y_labels, class_names, title=f"Label co-occurrence ({label_split} split, {len(y_labels)} images)")
    history_uri = storage.join(run_uri, "history.json")
    if storage.exists(history_uri):
        history = storage.read_json(history_uri)
        jobs["history.png"] = lambda: plots.history_curves(history, title=f"Training history of {storage.basename(run_uri)}",
                                                           best_epoch=best_epoch)
    written = []
    for name, draw in jobs.items():
        try:
            data = draw()
        except Exception as exc:  # noqa: BLE001 - a figure must never lose the run's metrics
            log.warning("could not draw %s: %s: %s", name, type(exc).__name__, exc)
            continue
        storage.write_bytes(storage.join(out, name), data)
        written.append(name)
    return written
