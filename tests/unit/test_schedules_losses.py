"""Learning-rate schedules and the losses on logits."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from job.config import load_config
from job.training import schedules
from job.training.losses import AsymmetricLoss, loss_for

# ---------------------------------------------------------------------------- schedules


def _lrs(schedule, steps) -> np.ndarray:
    return np.array([float(schedule(step)) for step in steps])


def test_cosine_warms_up_linearly_then_decays_to_the_final_rate():
    s = schedules.WarmupCosine(peak=0.01, total_steps=100, warmup_steps=10, final=1e-4)
    warm = _lrs(s, range(10))
    np.testing.assert_allclose(warm, 0.01 * np.arange(1, 11) / 10, rtol=1e-6)
    decay = _lrs(s, range(10, 100))
    assert decay[0] == pytest.approx(0.01) and decay[-1] == pytest.approx(1e-4)
    assert np.all(np.diff(decay) <= 1e-12), "the cosine part never rises"
    assert float(s(500)) == pytest.approx(1e-4)  # past the end it stays at the floor


def test_the_unfreeze_factor_applies_from_its_step():
    s = schedules.WarmupCosine(peak=0.01, total_steps=100, step_factor_from=40, step_factor=0.1)
    plain = schedules.WarmupCosine(peak=0.01, total_steps=100)
    np.testing.assert_allclose(_lrs(s, range(40)), _lrs(plain, range(40)))
    np.testing.assert_allclose(_lrs(s, range(40, 100)), 0.1 * _lrs(plain, range(40, 100)), rtol=1e-6)


def test_learning_rate_for_each_schedule():
    plateau = load_config(None, ["training.learning_rate=0.003"]).training
    assert schedules.learning_rate_for(plateau, 50) == 0.003
    cosine = load_config(None, ["training.schedule=cosine", "training.epochs=4", "training.warmup_epochs=0.5"]).training
    s = schedules.learning_rate_for(cosine, 50, unfreeze_epoch=2, unfreeze_factor=0.5)
    assert (s.total_steps, s.warmup_steps, s.step_factor_from, s.step_factor) == (200, 25, 100, 0.5)


def test_a_schedule_round_trips_through_keras_serialisation():
    s = schedules.WarmupCosine(peak=0.01, total_steps=100, warmup_steps=5, final=1e-5, step_factor_from=50)
    again = tf_keras.optimizers.schedules.deserialize(tf_keras.optimizers.schedules.serialize(s))
    np.testing.assert_allclose(_lrs(again, range(0, 100, 7)), _lrs(s, range(0, 100, 7)))


def test_the_learning_rate_comes_back_with_the_step_counter():
    """A restored optimizer continues the schedule where it stopped (resume is exact)."""

    def fresh():
        model = tf_keras.Sequential([tf_keras.Input((3,)), tf_keras.layers.Dense(1)])
        opt = schedules.make_optimizer(schedules.WarmupCosine(peak=0.01, total_steps=30, warmup_steps=3))
        model.compile(opt, "mse")
        return model

    x, y = np.ones((8, 3), "float32"), np.zeros((8, 1), "float32")
    model = fresh()
    model.fit(x, y, batch_size=4, epochs=5, verbose=0)  # 10 steps
    before = schedules.current_learning_rate(model.optimizer)
    ckpt = tf.train.Checkpoint(model=model, optimizer=model.optimizer)
    path = ckpt.write(f"{tf.compat.v1.test.get_temp_dir()}/sched")
    again = fresh()
    again.optimizer.build(again.trainable_variables)
    tf.train.Checkpoint(model=again, optimizer=again.optimizer).read(path).expect_partial()
    assert int(again.optimizer.iterations) == 10
    assert schedules.current_learning_rate(again.optimizer) == pytest.approx(before)
    assert before == pytest.approx(float(again.optimizer._learning_rate(10)))


def test_weight_decay_makes_adamw_and_spares_biases_and_batchnorm():
    opt = schedules.make_optimizer(0.001, weight_decay=0.01)
    assert isinstance(opt, tf_keras.optimizers.AdamW)
    bias, kernel = tf.Variable(1.0, name="dense/bias"), tf.Variable(1.0, name="dense/kernel")
    opt.build([bias, kernel])
    assert not opt._use_weight_decay(bias) and opt._use_weight_decay(kernel)
    assert isinstance(schedules.make_optimizer(0.001), tf_keras.optimizers.Adam)


# ---------------------------------------------------------------------------- losses


def _bce(y, logits):
    return tf_keras.losses.BinaryCrossentropy(from_logits=True, reduction="none")(y, logits).numpy()


def _asl(y, logits, **kw):
    return AsymmetricLoss(reduction="none", **kw)(y, logits).numpy()


Y = np.array([[1, 0, 0, 1], [0, 0, 1, 0]], "float32")
LOGITS = np.array([[2.0, -1.0, 0.5, -3.0], [-0.2, 4.0, 1.0, -6.0]], "float32")


def test_asl_without_focusing_or_clip_is_bce():
    np.testing.assert_allclose(_asl(Y, LOGITS, gamma_neg=0, gamma_pos=0, clip=0), _bce(Y, LOGITS), rtol=1e-5)


def test_asl_matches_the_paper_formula():
    p = 1 / (1 + np.exp(-LOGITS.astype("float64")))
    p_m = np.maximum(p - 0.05, 0)
    expected = -(Y * np.log(p) + (1 - Y) * p_m**4 * np.log(1 - p_m)).mean(axis=-1)
    np.testing.assert_allclose(_asl(Y, LOGITS), expected, rtol=1e-4)


def test_asl_spends_less_on_easy_negatives_than_bce():
    y = np.zeros((1, 4), "float32")
    easy = np.full((1, 4), -2.0, "float32")  # p = 0.12: the model already says no
    assert _asl(y, easy)[0] < 0.01 * _bce(y, easy)[0]


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_asl_is_finite_with_gradients_at_extreme_logits(dtype):
    logits = tf.constant([[100.0, -100.0, 30.0, -30.0, 0.0]], dtype)
    y = tf.constant([[0.0, 1.0, 1.0, 0.0, 1.0]])
    with tf.GradientTape() as tape:
        tape.watch(logits)
        loss = AsymmetricLoss()(y, logits)
    grad = tape.gradient(loss, logits)
    assert loss.dtype == tf.float32 and np.isfinite(float(loss))
    assert np.all(np.isfinite(tf.cast(grad, tf.float32).numpy()))
    assert float(loss) > 1.0  # the confident wrong answers cost a lot


def test_loss_for_each_config():
    assert isinstance(loss_for(load_config(None).training), tf_keras.losses.BinaryCrossentropy)
    asl = loss_for(load_config(None, ["training.loss=asymmetric", "training.asl_gamma_neg=2"]).training)
    assert isinstance(asl, AsymmetricLoss) and (asl.gamma_neg, asl.gamma_pos, asl.clip) == (2.0, 0.0, 0.05)
