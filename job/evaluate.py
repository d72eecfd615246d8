"""Evaluation of a run's best checkpoint: predictions, metrics, thresholds, metrics.json.

`evaluate_run` is what `train` calls at the end and what `python -m job evaluate` runs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from job import checkpoints, records, storage
from job.config import Config, config_from_dict
from job.errors import UserError

log = logging.getLogger("job.evaluate")

TABLE_COLUMNS = ("loss", "binary_accuracy", "cosine_similarity", "micro_f1", "macro_f1", "mean_average_precision",
                 "hamming_loss", "subset_accuracy")


@dataclass(frozen=True)
class SplitPredictions:
    """Labels and logits of one split, in data set order."""

    split: str
    y_true: np.ndarray  # (n, k) 0/1
    logits: np.ndarray  # (n, k) float32


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


def predict_split(model, data_uri: str, manifest: records.Manifest, split: str, cfg: Config) -> SplitPredictions:
    """Run the model over a whole split, in order."""
    from job.inputs import examples_from_shards, make_pipeline

    ds = make_pipeline(examples_from_shards(data_uri, manifest, split), cfg.data, training=False,
                       batch_size=max(cfg.data.batch_size_per_worker, 64))
    ys, logits = [], []
    for images, labels in ds:
        logits.append(model(images, training=False).numpy().astype(np.float32))
        ys.append(labels.numpy().astype(np.int64))
    k = len(manifest.class_names)
    return SplitPredictions(split, np.concatenate(ys) if ys else np.zeros((0, k), np.int64),
                            np.concatenate(logits) if logits else np.zeros((0, k), np.float32))


def check_same_labels(run_classes: list[str], manifest: records.Manifest, data_uri: str) -> None:
    if list(run_classes) != list(manifest.class_names):
        raise UserError(
            f"The data set at {data_uri} has labels {manifest.class_names}, but the run was trained on "
            f"{run_classes}. Evaluate with the data set the run was trained on, or one with the same class_names."
        )


def evaluate_run(run_uri: str, data_uri: str | None = None, cfg: Config | None = None,
                 splits: tuple[str, ...] = records.SPLITS, output_uri: str | None = None) -> dict:
    """Evaluate a run's best checkpoint on each split and write metrics.json.

    Thresholds are tuned per label on the validation split (when it is evaluated and
    `evaluation.threshold_objective` is "f1") and saved as thresholds.json. Each split's
    metrics are reported at 0.5; the same metrics at the tuned thresholds are under "tuned".
    """
    from job.metrics import evaluate_predictions, sigmoid, tune_thresholds

    saved_cfg, class_names, saved_data = load_run_config(run_uri)
    cfg = cfg or saved_cfg
    data_uri = data_uri or saved_data
    manifest = records.load_manifest(data_uri)
    check_same_labels(class_names, manifest, data_uri)
    model, restored = load_best_model(run_uri, cfg, len(class_names))
    preds = {s: predict_split(model, data_uri, manifest, s, cfg) for s in splits if manifest.num_examples(s) > 0}

    thresholds = np.full(len(class_names), 0.5)
    if "val" in preds and cfg.evaluation.threshold_objective == "f1":
        thresholds, warnings = tune_thresholds(preds["val"].y_true, sigmoid(preds["val"].logits))
        for w in warnings:
            log.warning("%s", w)
    out = output_uri or run_uri
    storage.write_json(storage.join(out, "thresholds.json"),
                       {"class_names": class_names, "thresholds": [float(t) for t in thresholds],
                        "objective": cfg.evaluation.threshold_objective, "checkpoint": restored.uri})
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
    return metrics


def format_table(metrics: dict) -> str:
    """The seed's per-split table (rows train/val/test) with F1, mAP, Hamming and subset accuracy."""
    header = f"{'':<6}" + "".join(f"{c:>{max(len(c), 8) + 2}}" for c in TABLE_COLUMNS)
    rows = [header]
    for split in records.SPLITS:
        if split in metrics:
            rows.append(f"{split:<6}" + "".join(
                f"{metrics[split][c]:>{max(len(c), 8) + 2}.4f}" for c in TABLE_COLUMNS))
    return "\n".join(rows)
