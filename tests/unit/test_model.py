"""Model building, preprocessing, precision, option checks, freezing, learning, weights I/O."""

from __future__ import annotations

import gc

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from job.errors import UserError
from job.training import model as M

NUM_CLASSES = 5


@pytest.fixture(autouse=True)
def _float32_policy():
    """build_model sets the global dtype policy; leave it at float32 for other tests."""
    yield
    tf_keras.mixed_precision.set_global_policy("float32")


def _pixels(n: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, (n, size, size, 3)).astype("float32")


def _size(backbone: str) -> int:
    return 32 if backbone == "small_cnn" else M.MIN_IMAGE_SIZE[backbone]


# --- every backbone ---------------------------------------------------------------------------


@pytest.mark.parametrize("backbone", M.BACKBONES)
def test_backbone_builds_at_minimum_size_and_outputs_float32_logits(backbone):
    size = _size(backbone)
    model = M.build_model(backbone, NUM_CLASSES, size, seed=0)
    assert model.input_names == ["image"]
    assert model.input_shape == (None, size, size, 3)
    head = model.get_layer("logits")
    assert head.activation is tf_keras.activations.linear  # logits, no sigmoid
    assert head.dtype_policy.compute_dtype == "float32"
    # A large head bias pushes outputs outside [0, 1]: only possible without activation.
    kernel, bias = head.get_weights()
    head.set_weights([kernel, np.array([-5.0, 5.0, 0.0, 0.0, 0.0], dtype="float32")])
    out = model(_pixels(2, size), training=False)
    assert out.dtype == tf.float32 and out.shape == (2, NUM_CLASSES)
    assert np.all(np.isfinite(out.numpy()))
    assert out.numpy().min() < 0.0 and out.numpy().max() > 1.0
    del model
    tf_keras.backend.clear_session()
    gc.collect()


@pytest.mark.parametrize("size, stages", [(32, 4), (64, 4), (128, 5), (256, 6)])
def test_small_vgg_pools_down_to_about_8_px_at_any_size(size, stages):
    assert M.small_vgg_stages(size) == stages
    backbone = M.build_model("small_vgg", NUM_CLASSES, size, width=16).get_layer("small_vgg")
    side = backbone.output_shape[1]
    assert side == size // 2 ** (stages - 1) and side <= 8
    # Widths double per stage and stop at 8x: the model stays CPU-sized.
    assert backbone.output_shape[-1] == 16 * min(2 ** (stages - 1), 8)
    assert backbone.count_params() < 1_500_000


def test_small_cnn_is_small():
    assert M.build_model("small_cnn", NUM_CLASSES, 64, width=32).count_params() < 150_000
    assert M.build_model("small_cnn", NUM_CLASSES, 64, width=16).count_params() < 40_000


# --- preprocessing layers match keras.applications preprocess_input ----------------------------


def test_caffe_preprocess_matches_resnet50_preprocess_input():
    x = _pixels(2, 8)
    want = tf_keras.applications.resnet50.preprocess_input(x.copy())
    got = M.CaffePreprocess()(tf.constant(x)).numpy()
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_tf_mode_preprocess_matches_xception_preprocess_input():
    x = _pixels(2, 8)
    want = tf_keras.applications.xception.preprocess_input(x.copy())
    got = M._preprocessing("xception")(tf.constant(x)).numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_caffe_preprocess_serialises():
    layer = tf_keras.layers.deserialize(tf_keras.layers.serialize(M.CaffePreprocess(name="p")))
    assert isinstance(layer, M.CaffePreprocess) and layer.name == "p"


# --- precision --------------------------------------------------------------------------------


@pytest.mark.parametrize("precision, compute", [("mixed_float16", "float16"), ("mixed_bfloat16", "bfloat16")])
def test_mixed_precision_keeps_head_and_loss_float32(precision, compute):
    model = M.build_model("small_cnn", NUM_CLASSES, 32, precision=precision, seed=0)
    conv = model.get_layer("small_cnn").get_layer("block0_conv")
    assert conv.dtype_policy.compute_dtype == compute
    assert model.get_layer("logits").dtype_policy.compute_dtype == "float32"
    assert model.output.dtype == tf.float32
    M.compile_model(model, learning_rate=1e-3)
    y = np.eye(NUM_CLASSES, dtype="float32")[[0, 1, 2, 3]]
    history = model.fit(_pixels(4, 32), y, epochs=1, verbose=0).history
    assert np.isfinite(history["loss"][0])


def test_unknown_precision_is_a_user_error():
    with pytest.raises(UserError, match="mixed_float16"):
        M.set_precision_policy("float8")


# --- option errors ----------------------------------------------------------------------------


def test_unknown_backbone_lists_known_ones():
    with pytest.raises(UserError) as err:
        M.build_model("vgg16", NUM_CLASSES, 64)
    assert "vgg16" in str(err.value)
    assert all(name in str(err.value) for name in M.BACKBONES)


def test_missing_weights_path(tmp_path):
    path = str(tmp_path / "nope.weights.h5")
    with pytest.raises(UserError, match="does not exist") as err:
        M.check_model_options("small_cnn", path, 64)
    assert path in str(err.value) and "weights=none" in str(err.value)


@pytest.mark.parametrize(
    "backbone, size, minimum", [("inception_v3", 74, 75), ("xception", 70, 71), ("resnet50", 31, 32)]
)
def test_too_small_image(backbone, size, minimum):
    with pytest.raises(UserError, match=f"at least {minimum} px"):
        M.check_model_options(backbone, "none", size)


def test_imagenet_for_small_cnn_is_refused():
    with pytest.raises(UserError, match="no ImageNet weights"):
        M.check_model_options("small_cnn", "imagenet", 64)


def test_remote_weights_are_checked_later_but_not_built():
    M.check_model_options("small_cnn", "s3://bucket/w.weights.h5", 64)  # caller fetches it
    with pytest.raises(UserError, match="fetch it"):
        M.build_model("small_cnn", NUM_CLASSES, 64, weights="s3://bucket/w.weights.h5")


def test_imagenet_download_failure_is_a_user_error(monkeypatch):
    from tf_keras.src.utils import data_utils

    def offline(*args, **kwargs):
        raise Exception(
            "URL fetch failure on https://storage.googleapis.com/keras-applications/"
            "weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5: None -- no network"
        )

    monkeypatch.setattr(data_utils, "get_file", offline)
    # The message names the file to fetch elsewhere and how to pass it.
    with pytest.raises(UserError, match=r"pass it as model.weights=PATH.*no_top_v2\.h5"):
        M.build_model("mobilenet_v3_small", NUM_CLASSES, 32, weights="imagenet")


@pytest.mark.parametrize("kwargs", [{"num_classes": 0}, {"width": 0}, {"dropout_rate": 1.0}])
def test_bad_head_options(kwargs):
    args = {"num_classes": NUM_CLASSES, **kwargs}
    with pytest.raises(UserError):
        M.build_model("small_cnn", args.pop("num_classes"), 32, **args)


def test_bad_learning_rate():
    model = M.build_model("small_cnn", NUM_CLASSES, 32)
    with pytest.raises(UserError, match="learning_rate"):
        M.compile_model(model, learning_rate=0.0)


# --- freezing, seeding, learning --------------------------------------------------------------


def test_freeze_backbone_trains_only_the_head():
    model = M.build_model("small_cnn", NUM_CLASSES, 32, freeze_backbone=True, seed=0)
    assert not model.get_layer("small_cnn").trainable
    assert sorted(w.name for w in model.trainable_weights) == ["logits/bias:0", "logits/kernel:0"]
    before = model.get_layer("small_cnn").get_weights()  # incl. BatchNorm moving stats
    M.compile_model(model, learning_rate=1e-2)
    y = np.eye(NUM_CLASSES, dtype="float32")[[0, 1, 2, 3]]
    model.fit(_pixels(4, 32), y, epochs=2, verbose=0)
    after = model.get_layer("small_cnn").get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(before, after))


def test_seed_makes_init_deterministic():
    x = _pixels(2, 32)
    a = M.build_model("small_cnn", NUM_CLASSES, 32, seed=7)(x, training=False).numpy()
    b = M.build_model("small_cnn", NUM_CLASSES, 32, seed=7)(x, training=False).numpy()
    c = M.build_model("small_cnn", NUM_CLASSES, 32, seed=8)(x, training=False).numpy()
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def _toy_problem(n: int = 32, size: int = 16):
    """Label j is on when colour channel j is bright: separable by channel means."""
    rng = np.random.default_rng(1)
    y = (rng.random((n, 3)) < 0.5).astype("float32")
    x = rng.uniform(0, 60, (n, size, size, 3)).astype("float32")
    x += (y * 180.0)[:, None, None, :]
    return x, y


def test_small_cnn_learns_a_separable_toy_problem():
    x, y = _toy_problem()
    model = M.build_model("small_cnn", 3, 16, width=8, dropout_rate=0.0, seed=0)
    M.compile_model(model, learning_rate=1e-2)
    first = model.evaluate(x, y, verbose=0, return_dict=True)
    model.fit(x, y, batch_size=16, epochs=8, verbose=0)
    last = model.evaluate(x, y, verbose=0, return_dict=True)
    assert last["loss"] < 0.7 * first["loss"]
    assert last["binary_accuracy"] > 0.9


def test_compiled_metric_names():
    model = M.build_model("small_cnn", 3, 16, seed=0)
    M.compile_model(model, learning_rate=1e-3)
    x, y = _toy_problem(8)
    result = model.evaluate(x, y, verbose=0, return_dict=True)
    assert set(result) == {"loss", "binary_accuracy", "cosine_similarity", "macro_f1", "mean_average_precision"}


# --- weights I/O and serialisation ------------------------------------------------------------


def test_weights_round_trip(tmp_path):
    x = _pixels(3, 32)
    source = M.build_model("small_cnn", NUM_CLASSES, 32, seed=1)
    path = str(tmp_path / "model.weights.h5")
    source.save_weights(path)
    loaded = M.build_model("small_cnn", NUM_CLASSES, 32, weights=path, seed=2)
    fresh = M.build_model("small_cnn", NUM_CLASSES, 32, seed=2)
    want = source(x, training=False).numpy()
    np.testing.assert_array_equal(loaded(x, training=False).numpy(), want)
    assert not np.allclose(fresh(x, training=False).numpy(), want)


def test_mismatched_weights_file_is_a_user_error(tmp_path):
    path = str(tmp_path / "three.weights.h5")
    M.build_model("small_cnn", 3, 32).save_weights(path)
    with pytest.raises(UserError, match="fits neither this model nor its backbone"):
        M.build_model("small_cnn", NUM_CLASSES, 32, weights=path)


def test_a_backbone_only_file_loads_into_the_backbone(tmp_path):
    """A pretrained download (like Keras' *_notop.h5) has the backbone's weights alone."""
    path = str(tmp_path / "notop.h5")
    source = M.build_model("mobilenet_v3_small", 3, 32, seed=1)
    source.get_layer("MobilenetV3small").save_weights(path)
    loaded = M.build_model("mobilenet_v3_small", NUM_CLASSES, 32, weights=path, seed=2)
    for a, b in zip(
        source.get_layer("MobilenetV3small").get_weights(), loaded.get_layer("MobilenetV3small").get_weights()
    ):
        np.testing.assert_array_equal(a, b)
    fresh_head = M.build_model("mobilenet_v3_small", NUM_CLASSES, 32, seed=2).get_layer("logits").get_weights()
    for a, b in zip(fresh_head, loaded.get_layer("logits").get_weights()):
        np.testing.assert_array_equal(a, b)


def test_compiled_model_saves_and_loads_as_keras_file(tmp_path):
    x = _pixels(2, 32)
    model = M.build_model("small_cnn", NUM_CLASSES, 32, seed=3)
    M.compile_model(model, learning_rate=1e-3)
    path = str(tmp_path / "model.keras")
    model.save(path)
    restored = tf_keras.models.load_model(path)
    np.testing.assert_allclose(restored(x, training=False).numpy(), model(x, training=False).numpy(), atol=1e-6)
    assert restored.get_layer("logits").dtype_policy.compute_dtype == "float32"
