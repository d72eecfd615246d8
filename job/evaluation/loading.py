"""Loading what a run left behind: its best model, its thresholds, and predictions over a split.

Used by evaluation, export, predict and the experiments. TensorFlow is imported at the top:
import this module only where a model is built.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from job.config import Config
from job.data import shards
from job.data.pipeline import examples_from_shards, make_pipeline
from job.errors import UserError
from job.storage.run_store import THRESHOLDS_FILE, RunStore
from job.training import checkpoints
from job.training.model import build_model

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SplitPredictions:
    """Labels and logits of one split, in data set order."""

    split: str
    y_true: np.ndarray  # (n, k) 0/1
    logits: np.ndarray  # (n, k) float32
    images: np.ndarray | None = None  # first few decoded images (m, S, S, 3) uint8, for the grid


def load_best_model(run_uri: str, cfg: Config, num_classes: int):
    """Build the run's model and load its best intact checkpoint's weights."""
    restored = (
        checkpoints.restore_best(run_uri) if cfg.training.restore_best_weights else checkpoints.restore_latest(run_uri)
    )
    if restored is None:
        raise UserError(
            f"The run at {run_uri} has no intact checkpoint to evaluate. Train it first "
            f"(`python -m job train ... --output {run_uri}`)."
        )
    model = build_model(
        cfg.model.backbone,
        num_classes,
        cfg.data.image_size,
        weights="none",
        width=cfg.model.width,
        dropout_rate=cfg.model.dropout_rate,
        precision="float32",
    )
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
    store = RunStore(run_uri)
    uri = store.path(THRESHOLDS_FILE)
    fix = f"Re-create it with `python -m job evaluate --run {run_uri}`."
    try:
        saved = store.read_thresholds()
        if saved is None:
            return None
        values = np.asarray(saved["thresholds"], dtype=np.float64)
    except (ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{uri} is not a valid thresholds file ({type(exc).__name__}: {exc}). {fix}") from None
    if values.ndim != 1 or len(values) != len(class_names):
        raise UserError(
            f"{uri} has {values.size} threshold(s), but the run has {len(class_names)} labels "
            f"({', '.join(class_names)}). {fix}"
        )
    names = saved.get("class_names")
    if names is not None and list(names) != list(class_names):
        raise UserError(f"{uri} is for labels {names}, but the run was trained on {class_names}. {fix}")
    if not np.all((values >= 0.0) & (values <= 1.0)):
        raise UserError(f"{uri} has thresholds outside [0, 1]: {values.tolist()}. {fix}")
    return values


def predict_split(
    model, data_uri: str, manifest: shards.Manifest, split: str, cfg: Config, keep_images: int = 0
) -> SplitPredictions:
    """Run the model over a whole split, in order; keep the first `keep_images` images."""
    ds = make_pipeline(
        examples_from_shards(data_uri, manifest, split),
        cfg.data,
        training=False,
        batch_size=max(cfg.data.batch_size_per_worker, 64),
    )
    ys, logits, kept = [], [], []
    for images, labels in ds:
        logits.append(model(images, training=False).numpy().astype(np.float32))
        ys.append(labels.numpy().astype(np.int64))
        if sum(len(k) for k in kept) < keep_images:
            kept.append(np.clip(np.round(images.numpy()), 0, 255).astype(np.uint8))
    k = len(manifest.class_names)
    return SplitPredictions(
        split,
        np.concatenate(ys) if ys else np.zeros((0, k), np.int64),
        np.concatenate(logits) if logits else np.zeros((0, k), np.float32),
        np.concatenate(kept)[:keep_images] if kept else None,
    )


def check_same_labels(run_classes: list[str], manifest: shards.Manifest, data_uri: str) -> None:
    if list(run_classes) != list(manifest.class_names):
        raise UserError(
            f"The data set at {data_uri} has labels {manifest.class_names}, but the run was trained on "
            f"{run_classes}. Evaluate with the data set the run was trained on, or one with the same class_names."
        )
