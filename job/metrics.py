"""Multi-label metrics: Keras metrics for training, NumPy metrics for evaluation.

Conventions shared by both halves (so training logs and `metrics.json` agree):

- The model outputs **logits**. Probabilities are `sigmoid(logits)`; a label is predicted
  when its probability is strictly greater than its threshold (Keras' `y_pred > threshold`
  rule; at 0.5 this is the same as `logit > 0`).
- Precision, recall and F1 use sklearn's `zero_division=0`: an undefined ratio counts as 0.
  So a label with no positives and no predicted positives has F1 0, and `macro_f1`
  averages over **all** labels (as Keras' `F1Score(average="macro")` does).
- Average precision is sklearn's step AP (no interpolation). It is undefined (NaN, written
  as `None`) for a label with no positives; `mean_average_precision` averages only the
  labels with at least one positive.
- Cosine similarity is the positive similarity between `y_true` and `sigmoid(logits)`
  (1 = perfect). A sample whose `y_true` is all zeros contributes 0 and still counts in the
  mean, as Keras' `l2_normalize`-based cosine does.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import tensorflow as tf
import tf_keras

from job.errors import UserError

# Norm floor for cosine similarity; Keras' l2_normalize uses sqrt(1e-12) = 1e-6.
_NORM_EPSILON = 1e-6

TUNING_OBJECTIVES = ("f1",)


# --------------------------------------------------------------------------------------
# Keras metrics (training)
# --------------------------------------------------------------------------------------


@tf_keras.utils.register_keras_serializable(package="job")
def cosine_similarity_from_logits(y_true, y_pred):
    """Per-sample cosine similarity between labels and sigmoid(logits).

    Args:
        y_true: multi-hot labels, shape (batch, labels).
        y_pred: logits, shape (batch, labels).
    Returns:
        shape (batch,) positive similarity (the seed's `losses.cosine_similarity` is its
        negative).
    """
    y_true = tf.cast(y_true, tf.float32)
    probs = tf.nn.sigmoid(tf.cast(y_pred, tf.float32))
    # tf_keras has no functional metrics.cosine_similarity (only the class); l2_normalize
    # floors the norm at 1e-6, so an all-zero label row gives 0.
    return tf.reduce_sum(tf.nn.l2_normalize(y_true, axis=-1) * tf.nn.l2_normalize(probs, axis=-1), axis=-1)


@tf_keras.utils.register_keras_serializable(package="job")
class F1FromLogits(tf_keras.metrics.F1Score):
    """Keras `F1Score` on sigmoid(logits).

    Variables are built in the constructor (from `num_classes`) rather than on the first
    batch, so they are created under the strategy scope, not inside a replica step.
    """

    def __init__(self, num_classes: int, average="macro", threshold=0.5, name="macro_f1", dtype=None):
        super().__init__(average=average, threshold=threshold, name=name, dtype=dtype)
        self.num_classes = int(num_classes)
        shape = tf.TensorShape([None, self.num_classes])
        self.build(shape, shape)

    def update_state(self, y_true, y_pred, sample_weight=None):
        """Apply sigmoid to the logits, then count as F1Score does."""
        probs = tf.nn.sigmoid(tf.cast(y_pred, tf.float32))
        return super().update_state(y_true, probs, sample_weight)

    def get_config(self):
        """Config with `num_classes` (needed to rebuild)."""
        return {**super().get_config(), "num_classes": self.num_classes}

    @classmethod
    def from_config(cls, config):
        """Drop `beta` (always 1 for F1) before calling the constructor."""
        config = dict(config)
        config.pop("beta", None)
        return cls(**config)


def training_metrics(num_classes: int) -> list:
    """Fresh Keras metrics for `model.compile`; create them under the strategy scope.

    Args:
        num_classes: number of labels (width of the logits).
    Returns:
        [binary_accuracy, cosine_similarity, macro_f1, mean_average_precision], all
        computed on logits.
    """
    return [
        # Threshold 0 on logits == threshold 0.5 on probabilities.
        tf_keras.metrics.BinaryAccuracy(name="binary_accuracy", threshold=0.0),
        tf_keras.metrics.MeanMetricWrapper(cosine_similarity_from_logits, name="cosine_similarity"),
        F1FromLogits(num_classes, average="macro", threshold=0.5, name="macro_f1"),
        # Interpolated area under the PR curve, averaged over labels: close to mAP.
        # (A label with no positives scores 0 here, whereas the NumPy mAP skips it.)
        tf_keras.metrics.AUC(
            curve="PR", multi_label=True, num_labels=num_classes, from_logits=True,
            name="mean_average_precision",
        ),
    ]


# --------------------------------------------------------------------------------------
# NumPy metrics (evaluation over a whole split)
# --------------------------------------------------------------------------------------


def sigmoid(logits) -> np.ndarray:
    """Numerically stable logistic function.

    Args:
        logits: array-like of any shape.
    Returns:
        float64 array of probabilities, same shape; no overflow for large |logits|.
    """
    x = np.asarray(logits, dtype=np.float64)
    e = np.exp(-np.abs(x))  # in (0, 1]: never overflows
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def bce_from_logits(y_true, logits) -> float:
    """Binary cross-entropy on logits, averaged over every label of every sample.

    Uses `max(x, 0) - x*y + log1p(exp(-|x|))`, the form of
    `tf.nn.sigmoid_cross_entropy_with_logits`, so it matches the Keras training loss.

    Args:
        y_true: multi-hot labels (n, k).
        logits: model outputs (n, k).
    Returns:
        mean loss as a Python float.
    """
    y = np.asarray(y_true, dtype=np.float64)
    x = np.asarray(logits, dtype=np.float64)
    return float(np.mean(np.maximum(x, 0) - x * y + np.log1p(np.exp(-np.abs(x)))))


def average_precision(y_true_col, scores_col) -> float:
    """sklearn-style average precision for one label: sum_n (R_n - R_{n-1}) * P_n.

    Thresholds are the distinct scores in decreasing order; tied scores form one step.

    Args:
        y_true_col: 0/1 labels (n,).
        scores_col: scores (n,), any monotone scale (probabilities or logits).
    Returns:
        AP in [0, 1], or NaN when the label has no positives.
    """
    y = np.asarray(y_true_col, dtype=np.float64).ravel()
    s = np.asarray(scores_col, dtype=np.float64).ravel()
    if y.sum() <= 0:
        return float("nan")
    order = np.argsort(-s, kind="mergesort")
    y, s = y[order], s[order]
    # Last index of each run of equal scores: one threshold per distinct score.
    last = np.r_[np.flatnonzero(np.diff(s) != 0), s.size - 1]
    tps = np.cumsum(y)[last]
    predicted = last + 1.0
    precision = tps / predicted
    recall = tps / tps[-1]
    return float(np.sum(np.diff(recall, prepend=0.0) * precision))


def _per_sample_cosine(y_true: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Cosine per row; a zero row gives 0 (norms are floored at 1e-6, as in Keras)."""
    dot = np.sum(y_true * probs, axis=1)
    norm_t = np.maximum(np.linalg.norm(y_true, axis=1), _NORM_EPSILON)
    norm_p = np.maximum(np.linalg.norm(probs, axis=1), _NORM_EPSILON)
    return dot / (norm_t * norm_p)


def _ratio(num: float, den: float) -> float:
    """num / den with sklearn's zero_division=0."""
    return float(num / den) if den > 0 else 0.0


def _thresholds_array(thresholds, k: int) -> np.ndarray:
    """Broadcast a scalar or per-label thresholds to shape (k,), checking the length."""
    t = np.asarray(thresholds, dtype=np.float64)
    if t.ndim == 0:
        return np.full(k, float(t))
    if t.shape != (k,):
        raise ValueError(f"thresholds has shape {t.shape}; expected a scalar or ({k},)")
    return t


def _check_inputs(y_true, logits, class_names) -> tuple[np.ndarray, np.ndarray]:
    """Validate shapes and return float64 (n, k) arrays."""
    y = np.asarray(y_true, dtype=np.float64)
    x = np.asarray(logits, dtype=np.float64)
    if y.ndim != 2 or y.shape != x.shape:
        raise ValueError(f"y_true {y.shape} and logits {x.shape} must both be (n, k)")
    if y.shape[0] == 0:
        raise ValueError("cannot evaluate an empty split (0 examples)")
    if len(class_names) != y.shape[1]:
        raise ValueError(f"{len(class_names)} class names for {y.shape[1]} labels")
    return y, x


def _label_report(y: np.ndarray, p: np.ndarray, pred: np.ndarray, threshold: float) -> dict:
    """Support, precision, recall, F1, AP, binary accuracy for one label column."""
    tp = float(np.sum(pred * y))
    fp = float(np.sum(pred * (1 - y)))
    fn = float(np.sum((1 - pred) * y))
    ap = average_precision(y, p)
    return {
        "support": int(y.sum()),
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "average_precision": None if math.isnan(ap) else ap,
        "binary_accuracy": float(np.mean(pred == y)),
        "threshold": float(threshold),
    }


def evaluate_predictions(
    y_true: np.ndarray,
    logits: np.ndarray,
    class_names: Sequence[str],
    thresholds: float | np.ndarray = 0.5,
) -> dict:
    """All split-level metrics of the `metrics.json` contract.

    Args:
        y_true: multi-hot labels (n, k), n >= 1.
        logits: model logits (n, k).
        class_names: k label names (keys of `per_label`).
        thresholds: probability threshold, a scalar or one per label.
    Returns:
        {"loss", "binary_accuracy", "cosine_similarity", "micro_f1", "macro_f1",
        "mean_average_precision", "hamming_loss", "subset_accuracy", "per_label"}, plain
        Python numbers; `mean_average_precision` and per-label `average_precision` are None
        where undefined (no positives).
    Raises:
        ValueError: shapes disagree or the split is empty.
    """
    y, x = _check_inputs(y_true, logits, class_names)
    k = y.shape[1]
    t = _thresholds_array(thresholds, k)
    probs = sigmoid(x)
    pred = (probs > t[None, :]).astype(np.float64)

    per_label = {
        str(name): _label_report(y[:, j], probs[:, j], pred[:, j], t[j])
        for j, name in enumerate(class_names)
    }
    tp = float(np.sum(pred * y))
    fp = float(np.sum(pred * (1 - y)))
    fn = float(np.sum((1 - pred) * y))
    aps = [r["average_precision"] for r in per_label.values() if r["average_precision"] is not None]
    errors = pred != y
    return {
        "loss": bce_from_logits(y, x),
        "binary_accuracy": float(1.0 - np.mean(errors)),
        "cosine_similarity": float(np.mean(_per_sample_cosine(y, probs))),
        "micro_f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "macro_f1": float(np.mean([r["f1"] for r in per_label.values()])),
        "mean_average_precision": float(np.mean(aps)) if aps else None,
        "hamming_loss": float(np.mean(errors)),
        "subset_accuracy": float(np.mean(~errors.any(axis=1))),
        "per_label": per_label,
    }


def _f1_at(y: np.ndarray, p: np.ndarray, threshold: float) -> float:
    """F1 of one label when predicting `p > threshold` (zero_division=0)."""
    pred = p > threshold
    positive = y > 0
    tp = float(np.sum(pred & positive))
    # 2TP / (2TP + FP + FN) == 2TP / (#predicted + #positive)
    return _ratio(2 * tp, float(np.sum(pred)) + float(np.sum(positive)))


def _best_threshold(y: np.ndarray, p: np.ndarray, default: float) -> float:
    """Threshold maximising F1 for one label.

    With the `p > t` rule every threshold between two consecutive distinct probabilities
    predicts the same set, so the candidates (the unique probabilities and their
    midpoints) reduce to the midpoints of [0, u_1, ..., u_m]; a midpoint keeps a margin on
    both sides. Ties go to the candidate closest to `default`.
    """
    edges = np.unique(np.r_[0.0, p])
    candidates = (edges[:-1] + edges[1:]) / 2.0 if edges.size > 1 else np.array([default])
    scores = np.array([_f1_at(y, p, c) for c in candidates])
    best = np.flatnonzero(scores >= scores.max() - 1e-12)
    return float(candidates[best[np.argmin(np.abs(candidates[best] - default))]])


def tune_thresholds(
    y_true,
    probs,
    objective: str = "f1",
    default: float = 0.5,
    *,
    class_names: Sequence[str] | None = None,
) -> tuple[np.ndarray, list[str]]:
    """Per-label probability thresholds that maximise F1 (tune on val, apply to test).

    Args:
        y_true: multi-hot labels (n, k).
        probs: probabilities (n, k), e.g. `sigmoid(logits)`.
        objective: only "f1".
        default: threshold kept for a label with no positives (F1 is 0 at every threshold).
        class_names: optional k names used in the warnings (else "label <index>").
    Returns:
        (thresholds of shape (k,), one warning per label that kept `default`).
    Raises:
        UserError: unknown objective.
    """
    if objective not in TUNING_OBJECTIVES:
        raise UserError(
            f"unknown threshold objective {objective!r}; use one of {', '.join(TUNING_OBJECTIVES)}"
        )
    y = np.asarray(y_true, dtype=np.float64)
    p = np.asarray(probs, dtype=np.float64)
    if y.ndim != 2 or y.shape != p.shape:
        raise ValueError(f"y_true {y.shape} and probs {p.shape} must both be (n, k)")
    names = list(class_names) if class_names is not None else [f"label {j}" for j in range(y.shape[1])]
    if len(names) != y.shape[1]:
        raise ValueError(f"{len(names)} class names for {y.shape[1]} labels")
    thresholds = np.full(y.shape[1], float(default))
    warnings: list[str] = []
    for j in range(y.shape[1]):
        if y[:, j].sum() <= 0:
            warnings.append(
                f"{names[j]!r} has no positive examples in the tuning split: "
                f"its threshold stays at {default}"
            )
            continue
        thresholds[j] = _best_threshold(y[:, j], p[:, j], default)
    return thresholds, warnings
