"""The transfer-learning recipe (the seed's, as config): head warm-up, then fine-tuning.

1. For `transfer.frozen_epochs` epochs only the head trains; the pretrained backbone is
   frozen, so the randomly initialised head cannot wreck its features with large gradients.
2. At the start of epoch `frozen_epochs` + 1 the top of the backbone is unfrozen (from
   `unfreeze_from`, or the top `unfreeze_fraction` of its layers) and the LR is multiplied
   by `learning_rate_factor`.
3. Throughout, the backbone's BatchNorm layers run in inference mode (the model calls the
   backbone with training=False), as the Keras transfer-learning guide prescribes: their
   moving statistics come from ImageNet and a small batch would ruin them.

The unfreeze happens between epochs, at the same epoch on every rank, by re-tracing the
train step (Keras fixes the trainable variables when it traces). The optimizer's slots are
created up front for every variable that will ever train, so a checkpoint written before
the unfreeze and one written after it hold the same variables, and a run resumed past the
unfreeze is rebuilt unfrozen (`state.json` says whether the unfreeze happened).
"""

from __future__ import annotations

import difflib
import logging

import tensorflow as tf
import tf_keras

from job.config import Config, TransferConfig
from job.errors import UserError
from job.training.schedules import current_learning_rate, scale_learning_rate

log = logging.getLogger(__name__)


def check_transfer_options(cfg: Config, backbone_layers: list[str] | None = None) -> None:
    """Refuse recipe settings that cannot work, before any training.

    Args:
        backbone_layers: the backbone's layer names, to check `unfreeze_from` (skipped if None).
    """
    t = cfg.transfer
    if not t.frozen_epochs:
        return
    if cfg.model.freeze_backbone:
        raise UserError(
            "model.freeze_backbone=true keeps the backbone frozen for the whole run, but "
            f"transfer.frozen_epochs={t.frozen_epochs} unfreezes it; set one or the other."
        )
    if t.frozen_epochs >= cfg.training.epochs:
        raise UserError(
            f"transfer.frozen_epochs={t.frozen_epochs} is not below training.epochs={cfg.training.epochs}: "
            "the backbone would never be unfrozen. Raise training.epochs or lower transfer.frozen_epochs "
            "(or use model.freeze_backbone=true to train the head only)."
        )
    if t.unfreeze_from and backbone_layers is not None and t.unfreeze_from not in backbone_layers:
        close = difflib.get_close_matches(t.unfreeze_from, backbone_layers, n=3)
        hint = f" Close names: {', '.join(close)}." if close else ""
        raise UserError(
            f"transfer.unfreeze_from={t.unfreeze_from!r} is not a layer of {cfg.model.backbone}.{hint} "
            "Name a layer of the Keras application, or leave it empty and set transfer.unfreeze_fraction."
        )


def backbone_of(model: tf_keras.Model) -> tf_keras.Model:
    """The backbone: the one nested model inside a model from `build_model`."""
    return next(layer for layer in model.layers if isinstance(layer, tf_keras.Model))


def first_unfrozen_index(backbone: tf_keras.Model, t: TransferConfig) -> int:
    """Index in backbone.layers of the first layer that trains after the unfreeze."""
    names = [layer.name for layer in backbone.layers]
    if t.unfreeze_from:
        if t.unfreeze_from not in names:
            raise UserError(f"transfer.unfreeze_from={t.unfreeze_from!r} is not a layer of the backbone")
        return names.index(t.unfreeze_from)
    return round(len(names) * (1.0 - t.unfreeze_fraction))


def set_unfrozen(model: tf_keras.Model, t: TransferConfig) -> tuple[int, int]:
    """Make the backbone's top layers trainable, per the recipe. Returns (trainable, total) layers."""
    backbone = backbone_of(model)
    backbone.trainable = True  # Keras: a frozen parent freezes every child, whatever their flags
    start = first_unfrozen_index(backbone, t)
    for index, layer in enumerate(backbone.layers):
        layer.trainable = index >= start
    return len(backbone.layers) - start, len(backbone.layers)


def variables_that_will_train(model: tf_keras.Model, t: TransferConfig) -> list[tf.Variable]:
    """Every variable trainable at some point of the recipe (the optimizer builds slots for all)."""
    backbone = backbone_of(model)
    flags = (backbone.trainable, [layer.trainable for layer in backbone.layers])
    set_unfrozen(model, t)
    variables = list(model.trainable_variables)
    backbone.trainable = flags[0]
    for layer, flag in zip(backbone.layers, flags[1]):
        layer.trainable = flag
    return variables


class UnfreezeBackbone(tf_keras.callbacks.Callback):
    """At the start of epoch `frozen_epochs` (0-based): unfreeze, scale the LR, re-trace the step."""

    def __init__(self, t: TransferConfig, unfrozen: bool, rank: int):
        super().__init__()
        self.t, self.unfrozen, self.rank = t, unfrozen, rank

    def on_epoch_begin(self, epoch, logs=None):
        if self.unfrozen or epoch < self.t.frozen_epochs:
            return
        trainable, total = set_unfrozen(self.model, self.t)
        scale_learning_rate(self.model.optimizer, self.t.learning_rate_factor)
        # Keras fixed the trainable variables when it traced the step: trace it again.
        self.model.train_function = self.model.make_train_function(force=True)
        self.unfrozen = True
        if self.rank == 0:
            log.info(
                "epoch %d: backbone unfrozen (top %d of %d layers%s), learning rate x%g -> %.3g",
                epoch + 1,
                trainable,
                total,
                f", from {self.t.unfreeze_from}" if self.t.unfreeze_from else "",
                self.t.learning_rate_factor,
                current_learning_rate(self.model.optimizer),
            )
