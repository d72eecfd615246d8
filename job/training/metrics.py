"""Keras metrics for training, computed on logits (see job/evaluation/scores.py for the
NumPy metrics of evaluation, which follow the same conventions so training logs and
`metrics.json` agree)."""

from __future__ import annotations

import tensorflow as tf
import tf_keras

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
            curve="PR",
            multi_label=True,
            num_labels=num_classes,
            from_logits=True,
            name="mean_average_precision",
        ),
    ]
