"""Training losses on logits: binary cross-entropy (the seed's) and asymmetric loss (ASL).

Both take float32 logits (the model's head is float32 even under mixed precision, and the
loss casts again to be sure) and average over labels, then over the batch, the way Keras'
BinaryCrossentropy does; so ASL with gamma_neg = gamma_pos = clip = 0 is exactly BCE, and the
learning rates tuned for one carry over to the other.

ASL (Ridnik et al., "Asymmetric Loss For Multi-Label Classification", ICCV 2021): with
p = sigmoid(z), a positive costs (1 - p)^gamma_pos * -log(p), a negative costs
p_m^gamma_neg * -log(1 - p_m) with p_m = max(p - clip, 0). The focusing term down-weights the
many easy negatives of a sparse label set, and the clip discards negatives the model already
scores below `clip`. The paper's settings: gamma_neg 4, gamma_pos 0, clip 0.05.
"""

from __future__ import annotations

import tensorflow as tf
import tf_keras

from job.config import TrainingConfig


@tf_keras.utils.register_keras_serializable(package="job")
class AsymmetricLoss(tf_keras.losses.Loss):
    """ASL on logits, stable for any float32 logit (no log of 0, no overflow)."""

    def __init__(self, gamma_neg: float = 4.0, gamma_pos: float = 0.0, clip: float = 0.05, name: str = "asl", **kw):
        super().__init__(name=name, **kw)
        self.gamma_neg, self.gamma_pos, self.clip = float(gamma_neg), float(gamma_pos), float(clip)

    def call(self, y_true, y_pred):
        logits = tf.cast(y_pred, tf.float32)
        y = tf.cast(y_true, tf.float32)
        p = tf.sigmoid(logits)
        # log p and log(1 - p) from the logits: exact where sigmoid rounds to 0 or 1.
        log_p = tf.math.log_sigmoid(logits)
        if self.clip > 0:
            p_neg = tf.maximum(p - self.clip, 0.0)
            # 1 - p_m = min(1 - p + clip, 1) >= clip, so its log is finite.
            log_not_p_neg = tf.math.log(tf.minimum(tf.sigmoid(-logits) + self.clip, 1.0))
        else:
            p_neg = p
            log_not_p_neg = tf.math.log_sigmoid(-logits)
        positive = -log_p
        negative = -log_not_p_neg
        if self.gamma_pos:
            positive *= tf.pow(tf.maximum(1.0 - p, 0.0), self.gamma_pos)
        if self.gamma_neg:
            negative *= tf.pow(p_neg, self.gamma_neg)
        return tf.reduce_mean(y * positive + (1.0 - y) * negative, axis=-1)

    def get_config(self) -> dict:
        return {**super().get_config(), "gamma_neg": self.gamma_neg, "gamma_pos": self.gamma_pos, "clip": self.clip}


def loss_for(tcfg: TrainingConfig) -> tf_keras.losses.Loss:
    """The loss `training.loss` names, on logits."""
    if tcfg.loss == "asymmetric":
        return AsymmetricLoss(gamma_neg=tcfg.asl_gamma_neg, gamma_pos=tcfg.asl_gamma_pos, clip=tcfg.asl_clip)
    return tf_keras.losses.BinaryCrossentropy(from_logits=True)
