"""Multi-label metrics for evaluation, in NumPy.

Conventions (shared with the Keras metrics in job/training/metrics.py, so training logs and
`metrics.json` agree):

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
from collections.abc import Sequence

import numpy as np

from job.errors import UserError

_NORM_EPSILON = 1e-6
TUNING_OBJECTIVES = ("f1",)

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

    per_label = {str(name): _label_report(y[:, j], probs[:, j], pred[:, j], t[j]) for j, name in enumerate(class_names)}
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


def _best_threshold(y: np.ndarray, p: np.ndarray, default: float) -> float:
    """Threshold maximising F1 for one label, by one sort and cumulative sums (O(n log n)).

    With the `p > t` rule every threshold between two consecutive distinct probabilities
    predicts the same set, so the candidates are the midpoints of [0, u_1, ..., u_m] (the
    distinct probabilities); a midpoint keeps a margin on both sides. Ties go to the
    candidate closest to `default`.
    """
    order = np.argsort(-p, kind="stable")
    ranked, positive = p[order], y[order] > 0
    # Last index of each run of equal probabilities, highest first: predicting down to
    # there predicts exactly the items with p >= ranked[end].
    ends = np.r_[np.flatnonzero(ranked[:-1] != ranked[1:]), ranked.size - 1]
    below = np.r_[ranked[ends[1:]], 0.0]  # the next lower distinct probability (0 after the last)
    usable = ranked[ends] > 0  # a probability of 0 is never above any threshold >= 0
    if not usable.any():
        return float(default)
    ends, candidates = ends[usable], ((ranked[ends] + below) / 2.0)[usable]
    # F1 = 2TP / (2TP + FP + FN) = 2TP / (#predicted + #positive)
    true_positives = np.cumsum(positive)[ends]
    scores = 2.0 * true_positives / (ends + 1 + positive.sum())
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
        raise UserError(f"unknown threshold objective {objective!r}; use one of {', '.join(TUNING_OBJECTIVES)}")
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
                f"{names[j]!r} has no positive examples in the tuning split: its threshold stays at {default}"
            )
            continue
        thresholds[j] = _best_threshold(y[:, j], p[:, j], default)
    return thresholds, warnings
