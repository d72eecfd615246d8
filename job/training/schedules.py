"""Learning-rate schedules and the optimizer.

- `plateau` (the seed's, the default): a constant LR that ReduceLROnPlateau cuts when
  val_loss stalls (callbacks.ResumableReduceLR keeps its state across resume).
- `constant`: the LR never changes (except the transfer recipe's step at the unfreeze).
- `cosine`: linear warm-up, then cosine decay to `min_learning_rate` at the last step.

`cosine` is a pure function of the optimizer's step counter, `optimizer.iterations`, which
is the same on every rank (each applies the same all-reduced update) and is saved in every
checkpoint, so a resumed run continues the curve exactly where it stopped.
"""

from __future__ import annotations

import math

import tensorflow as tf
import tf_keras

from job.config import TrainingConfig


@tf_keras.utils.register_keras_serializable(package="job")
class WarmupCosine(tf_keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up to `peak` over `warmup_steps`, then cosine decay to `final` at `total_steps`.

    From `step_factor_from` on, the LR is multiplied by `step_factor` (the transfer recipe's
    smaller LR once the backbone is unfrozen). Steps count from 0; step s is the s-th update.
    """

    def __init__(
        self,
        peak: float,
        total_steps: int,
        warmup_steps: int = 0,
        final: float = 0.0,
        step_factor_from: int = -1,
        step_factor: float = 1.0,
    ):
        super().__init__()
        self.peak, self.final = float(peak), float(final)
        self.total_steps, self.warmup_steps = int(total_steps), int(warmup_steps)
        self.step_factor_from, self.step_factor = int(step_factor_from), float(step_factor)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        # Warm-up reaches `peak` at its last step (step warmup_steps - 1), never 0 at step 0.
        warm = self.peak * (step + 1.0) / max(self.warmup_steps, 1)
        decay_steps = max(self.total_steps - self.warmup_steps - 1, 1)
        progress = tf.clip_by_value((step - self.warmup_steps) / decay_steps, 0.0, 1.0)
        cosine = self.final + 0.5 * (self.peak - self.final) * (1.0 + tf.cos(math.pi * progress))
        lr = tf.where(step < self.warmup_steps, warm, cosine)
        if self.step_factor_from >= 0:
            lr = tf.where(step >= self.step_factor_from, lr * self.step_factor, lr)
        return lr

    def get_config(self) -> dict:
        return {
            "peak": self.peak,
            "total_steps": self.total_steps,
            "warmup_steps": self.warmup_steps,
            "final": self.final,
            "step_factor_from": self.step_factor_from,
            "step_factor": self.step_factor,
        }


def learning_rate_for(
    tcfg: TrainingConfig, steps_per_epoch: int, unfreeze_epoch: int | None = None, unfreeze_factor: float = 1.0
) -> float | WarmupCosine:
    """What the optimizer gets as its learning rate: a float, or a schedule for `cosine`.

    Args:
        tcfg: the training section.
        steps_per_epoch: optimizer steps per epoch (the same on every rank).
        unfreeze_epoch: the transfer recipe's unfreeze epoch (0-based), or None; a cosine
            schedule multiplies the LR by `unfreeze_factor` from its first step on. (For
            constant and plateau, the unfreeze callback scales the LR variable instead.)
    """
    if tcfg.schedule != "cosine":
        return tcfg.learning_rate
    factor_from = -1 if unfreeze_epoch is None else unfreeze_epoch * steps_per_epoch
    return WarmupCosine(
        peak=tcfg.learning_rate,
        total_steps=tcfg.epochs * steps_per_epoch,
        warmup_steps=round(tcfg.warmup_epochs * steps_per_epoch),
        final=min(tcfg.min_learning_rate, tcfg.learning_rate),
        step_factor_from=factor_from,
        step_factor=unfreeze_factor,
    )


def make_optimizer(learning_rate: float | WarmupCosine, weight_decay: float = 0.0) -> tf_keras.optimizers.Optimizer:
    """Adam, or AdamW (decoupled weight decay, Loshchilov & Hutter) when `weight_decay` > 0."""
    if weight_decay > 0:
        optimizer = tf_keras.optimizers.AdamW(learning_rate=learning_rate, weight_decay=weight_decay)
        # Decay the kernels only: BatchNorm scales/offsets and biases are not weights to shrink.
        optimizer.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])
        return optimizer
    return tf_keras.optimizers.Adam(learning_rate=learning_rate)


def has_schedule(optimizer: tf_keras.optimizers.Optimizer) -> bool:
    """True when the LR is a schedule of the step (nothing may assign it)."""
    return isinstance(optimizer._learning_rate, tf_keras.optimizers.schedules.LearningRateSchedule)


def current_learning_rate(optimizer: tf_keras.optimizers.Optimizer) -> float:
    """The LR the next update will use (for logs, history and checkpoints)."""
    if has_schedule(optimizer):
        return float(optimizer._learning_rate(optimizer.iterations))
    return float(tf_keras.backend.get_value(optimizer.learning_rate))


def scale_learning_rate(optimizer: tf_keras.optimizers.Optimizer, factor: float) -> None:
    """Multiply a variable LR by `factor` (a schedule carries its own factor)."""
    if not has_schedule(optimizer):
        optimizer.learning_rate.assign(current_learning_rate(optimizer) * factor)
