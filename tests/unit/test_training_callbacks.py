"""job.training.callbacks: counters survive a restart; the callback order holds its invariants."""

from __future__ import annotations

import json

import numpy as np
import tf_keras

from job.cluster.failures import describe_failure
from job.training.callbacks import ResumableEarlyStopping, ResumableReduceLR


def _model(lr: float = 0.1) -> tf_keras.Model:
    model = tf_keras.Sequential([tf_keras.layers.Input((1,)), tf_keras.layers.Dense(1)])
    model.compile(optimizer=tf_keras.optimizers.SGD(lr), loss="mse")
    return model


def _resumed(cls, state, **kwargs):
    """A callback restored from a JSON round trip of `state`, as after a restart."""
    callback = cls(json.loads(json.dumps(state)), **kwargs)
    callback.set_model(_model())
    callback.on_train_begin()
    return callback


def test_reduce_lr_counters_survive_a_restart_and_the_cut_comes_on_time():
    first = ResumableReduceLR(None, monitor="val_loss", patience=2, factor=0.5, verbose=0)
    first.set_model(_model())
    first.on_train_begin()
    first.on_epoch_end(0, {"val_loss": 1.0})
    first.on_epoch_end(1, {"val_loss": 1.5})  # one epoch without improvement
    state = first.snapshot()
    assert state == {"wait": 1, "cooldown_counter": 0, "best": 1.0}

    resumed = _resumed(ResumableReduceLR, state, monitor="val_loss", patience=2, factor=0.5, verbose=0)
    resumed.on_epoch_end(2, {"val_loss": 1.6})  # the second: an uninterrupted run cuts here
    assert np.isclose(float(resumed.model.optimizer.learning_rate.numpy()), 0.05)


def test_a_fresh_reduce_lr_would_not_have_cut_yet():
    fresh = ResumableReduceLR(None, monitor="val_loss", patience=2, factor=0.5, verbose=0)
    fresh.set_model(_model())
    fresh.on_train_begin()
    fresh.on_epoch_end(2, {"val_loss": 1.6})
    assert np.isclose(float(fresh.model.optimizer.learning_rate.numpy()), 0.1)


def test_early_stopping_counters_survive_a_restart_and_stop_on_time():
    first = ResumableEarlyStopping(None, monitor="val_loss", patience=2, verbose=0)
    first.set_model(_model())
    first.on_train_begin()
    first.on_epoch_end(0, {"val_loss": 1.0})
    first.on_epoch_end(1, {"val_loss": 1.2})
    state = first.snapshot()
    assert state == {"wait": 1, "best": 1.0, "best_epoch": 0}

    resumed = _resumed(ResumableEarlyStopping, state, monitor="val_loss", patience=2, verbose=0)
    assert not resumed.model.stop_training
    resumed.on_epoch_end(2, {"val_loss": 1.3})
    assert resumed.model.stop_training


# ---------------------------------------------------------------------------- failure description


def test_failure_description_names_the_rank_the_cause_and_the_fix():
    error = RuntimeError(
        "Training failed due to worker errors:\n"
        "[Rank 1 Error Snippet]:\n"
        "(RayTrainWorker pid=123) world_rank=1 local_rank=1\n"
        "ray.exceptions.ActorDiedError: The actor died unexpectedly before finishing this task. Some common causes "
        "include: (1) the process was killed by the OOM killer"
    )
    text = describe_failure(error, max_failures=1)
    assert "worker rank 1 failed" in text
    assert "ActorDiedError: The actor died unexpectedly before finishing this task." in text
    assert "Some common causes" not in text
    assert "allowed 1 restart(s)" in text and "scaling.max_failures" in text and "Re-run the same command" in text


def test_failure_without_a_rank_says_a_training_worker():
    text = describe_failure(ValueError("ValueError: bad shard"), max_failures=0)
    assert text.startswith("Training failed: a training worker failed (ValueError: bad shard)")
