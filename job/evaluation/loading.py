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
    """Labels and logits of one split, in data set order (examples over the pixel limit left out)."""

    split: str
    y_true: np.ndarray  # (n, k) 0/1
    logits: np.ndarray  # (n, k) float32
    images: np.ndarray | None = None  # first few decoded images (m, S, S, 3) uint8, for the grid
    ids: np.ndarray | None = None  # (n,) the examples' ids (str), row for row with y_true and logits


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
    """Run the model over a whole split, in order; keep the first `keep_images` images.

    The examples' ids travel through the input pipeline beside their labels, so an example
    the pixel-limit filter drops is missing from ids, labels and logits alike.
    """
    ds = make_pipeline(
        examples_from_shards(data_uri, manifest, split, with_ids=True),
        cfg.data,
        training=False,
        batch_size=max(cfg.data.batch_size_per_worker, 64),
    )
    ys, logits, ids, kept = [], [], [], []
    for images, (labels, batch_ids) in ds:
        logits.append(model(images, training=False).numpy().astype(np.float32))
        ys.append(labels.numpy().astype(np.int64))
        ids.extend(i.decode("utf-8", "replace") for i in batch_ids.numpy())
        if sum(len(k) for k in kept) < keep_images:
            kept.append(np.clip(np.round(images.numpy()), 0, 255).astype(np.uint8))
    k = len(manifest.class_names)
    return SplitPredictions(
        split,
        np.concatenate(ys) if ys else np.zeros((0, k), np.int64),
        np.concatenate(logits) if logits else np.zeros((0, k), np.float32),
        np.concatenate(kept)[:keep_images] if kept else None,
        np.array(ids, dtype=object),
    )


def load_split_images(data_uri: str, manifest: shards.Manifest, split: str, cfg: Config, ids) -> np.ndarray:
    """The decoded images of the examples named `ids` in a split, in the order of `ids`.

    A second pass over the split's shards that decodes only those examples (the shards are
    read again; every other image is dropped as encoded bytes). Used for the "worst errors"
    prediction grid, whose examples are known only once the whole split is scored.

    Returns:
        (len(ids), S, S, 3) uint8. An id that is not found raises KeyError; for an id that
        several examples share, the first one's image is given.
    """
    wanted = [str(i) for i in ids]
    size = cfg.data.image_size
    if not wanted:
        return np.zeros((0, size, size, 3), np.uint8)
    table = tf.constant([w.encode() for w in wanted], tf.string)
    examples = examples_from_shards(data_uri, manifest, split, with_ids=True).filter(
        lambda _image, y: tf.reduce_any(tf.equal(y[1], table))
    )
    found: dict[str, np.ndarray] = {}
    for images, (_labels, batch_ids) in make_pipeline(
        examples, cfg.data, training=False, batch_size=min(len(wanted), 64)
    ):
        for image, example_id in zip(images.numpy(), batch_ids.numpy()):
            found.setdefault(example_id.decode("utf-8", "replace"), np.clip(np.round(image), 0, 255).astype(np.uint8))
    return np.stack([found[w] for w in wanted])


def check_same_labels(run_classes: list[str], manifest: shards.Manifest, data_uri: str) -> None:
    if list(run_classes) != list(manifest.class_names):
        raise UserError(
            f"The data set at {data_uri} has labels {manifest.class_names}, but the run was trained on "
            f"{run_classes}. Evaluate with the data set the run was trained on, or one with the same class_names."
        )
