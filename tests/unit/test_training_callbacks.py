"""job.training.callbacks: counters survive a restart; the callback order holds its invariants."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tf_keras

from job.cluster.failures import describe_failure
from job.training.callbacks import PreemptionGuard, ResumableEarlyStopping, ResumableReduceLR, TrainingPosition
from job.training.loop import WorkerPlan, plan_for_group


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


# ---------------------------------------------------------------------------- preemption


class _Clock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


class _Notices:
    """A preemption notice that appears at `at` (clock time) with `deadline`."""

    def __init__(self, clock: _Clock, at: float, deadline: float):
        self.clock, self.at, self.deadline = clock, at, deadline
        self.polls = 0

    def poll(self):
        self.polls += 1
        return self.deadline if self.clock() >= self.at else None

    def agree(self, decision: bool) -> bool:
        return decision


class _Checkpoint:
    def __init__(self, position: TrainingPosition, slowest: float = 0.0):
        self.position, self.slowest_save_seconds, self.saves = position, slowest, []

    def save_mid_epoch(self, sync: bool):
        self.saves.append((self.position.epoch, self.position.step, sync))
        return self.position.epoch, self.position.step


def _guard(clock, notices, steps=100, check_steps=1, margin=10.0, slowest=0.0, seen=None):
    position = TrainingPosition()
    checkpoint = _Checkpoint(position, slowest)
    guard = PreemptionGuard(
        notices,
        checkpoint,
        position,
        steps,
        check_steps,
        margin,
        on_notice=(lambda deadline, at: seen.append((deadline, at))) if seen is not None else None,
        sleep=clock.sleep,
        clock=clock,
    )
    position.on_epoch_begin(0)
    return guard, position, checkpoint


def _step(guard, position, clock, seconds=1.0):
    batch = position.step
    position.on_train_batch_end(batch)
    guard.on_train_batch_end(batch)
    clock.now += seconds


def test_a_notice_trains_on_until_the_margin_then_saves_once_and_waits_for_the_restart():
    clock = _Clock()
    notices = _Notices(clock, at=1005.0, deadline=1030.0)
    seen = []
    guard, position, checkpoint = _guard(clock, notices, margin=10.0, seen=seen)
    for _ in range(20):
        _step(guard, position, clock)
    # Step k ends at clock 999 + k. Noticed at step 6 (clock 1005); trains on while the
    # deadline is more than the margin + one check interval (11 s) away: saves at step 20.
    assert seen == [(1030.0, (0, 6))]
    assert checkpoint.saves == [(0, 20, True)]
    # It then waited until the deadline + HOLD_SECONDS without training: no restart came, so
    # the notice counts as withdrawn, and the same notice causes no second save.
    assert clock.now == pytest.approx(1030.0 + PreemptionGuard.HOLD_SECONDS + 1.0)
    for _ in range(5):
        _step(guard, position, clock)
    assert len(checkpoint.saves) == 1


def test_a_slow_save_moves_the_just_in_time_checkpoint_earlier():
    clock = _Clock()
    guard, position, checkpoint = _guard(clock, _Notices(clock, at=1000.0, deadline=1030.0), margin=5.0, slowest=6.0)
    for _ in range(4):
        _step(guard, position, clock)
    # 3 x the slowest save (18 s) + one check interval (1 s) before the deadline: at 1011.
    assert checkpoint.saves == []
    for _ in range(10):
        _step(guard, position, clock)
    assert [s[1] for s in checkpoint.saves] == [12]


def test_a_notice_without_a_deadline_saves_at_once():
    clock = _Clock()
    guard, position, checkpoint = _guard(clock, _Notices(clock, at=1002.0, deadline=float("inf")))
    for _ in range(4):
        _step(guard, position, clock)
    assert [s[1] for s in checkpoint.saves] == [3]


def test_every_rank_asks_on_the_same_steps_and_never_at_an_epoch_end():
    clock = _Clock()
    notices = _Notices(clock, at=float("inf"), deadline=0.0)
    guard, position, _ = _guard(clock, notices, steps=10, check_steps=3)
    for _ in range(10):
        _step(guard, position, clock)
    # Steps 1..9 are checked every third step; step 10 ends the epoch and is skipped.
    assert notices.polls == 3


def test_an_elastic_group_keeps_the_global_batch():
    plan = WorkerPlan("r", "r", ("a",), 21, 10, 32, global_batch_size=64, val_examples=300)
    assert plan_for_group(plan, 2) == plan
    one = plan_for_group(plan, 1)
    assert (one.batch_size_per_worker, one.validation_steps, one.steps_per_epoch) == (64, 5, 21)
    three = plan_for_group(plan, 3)
    assert three.batch_size_per_worker == 22  # rounded up: 66 per step, not fewer than 64
