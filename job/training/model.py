"""Backbones with a float32 logits head, and compilation with loss and metrics.

The model takes a float32 batch of pixels in [0, 255], shape (None, S, S, 3), input name
"image", and applies its backbone's preprocessing itself (with layers, so it serialises and
exports without Python-side preprocessing). It outputs **logits** (no activation) from a
float32 `Dense` named "logits", so the loss and metrics stay float32 under mixed precision.

Only `tf_keras` (Keras 2) is used: Keras 3 fails under MultiWorkerMirroredStrategy in Ray.
"""

from __future__ import annotations

import logging
import math
import os
import re

import tensorflow as tf
import tf_keras
from tf_keras import layers

from job.config import BACKBONES, PRECISIONS
from job.errors import UserError
from job.training import metrics as job_metrics
from job.training.schedules import make_optimizer

log = logging.getLogger(__name__)

WEIGHT_CHOICES = ("none", "imagenet")

# Smallest input side each backbone accepts (the Keras applications' own limits).
MIN_IMAGE_SIZE = {
    "small_vgg": 16,
    "small_cnn": 16,
    "xception": 71,
    "inception_v3": 75,
    "resnet50": 32,
    "efficientnet_b0": 32,
    "mobilenet_v3_small": 32,
}

# ImageNet channel means in BGR order, as `applications.resnet50.preprocess_input` uses.
_IMAGENET_BGR_MEAN = (103.939, 116.779, 123.68)
_SMALL_CNN_BLOCKS = 3
# small_vgg pools until its last feature map is about this side, then stops widening.
_SMALL_VGG_FINAL_SIDE = 8
_SMALL_VGG_MAX_WIDTH_FACTOR = 8
_SCRATCH_BN_MOMENTUM = 0.9
# Backbones defined here (no ImageNet weights); the rest are Keras applications.
OWN_BACKBONES = ("small_vgg", "small_cnn")


@tf_keras.utils.register_keras_serializable(package="job")
class CaffePreprocess(layers.Layer):
    """`preprocess_input` in "caffe" mode: RGB [0, 255] -> BGR minus the ImageNet mean."""

    def call(self, inputs):
        """Args: pixels (..., 3) RGB in [0, 255]. Returns: BGR, mean-centred, same dtype."""
        bgr = tf.reverse(inputs, axis=[-1])
        return bgr - tf.constant(_IMAGENET_BGR_MEAN, dtype=bgr.dtype)


# --------------------------------------------------------------------------------------
# Option checks (raise UserError before anything is built)
# --------------------------------------------------------------------------------------


def _is_remote(uri: str) -> bool:
    """True for URIs such as s3://...; the caller fetches those to a local file first."""
    return "://" in uri


def _weights_file_exists(path: str) -> bool:
    """A weights file, or a TF checkpoint prefix (which exists as PREFIX.index)."""
    return os.path.isfile(path) or os.path.isfile(path + ".index")


def check_model_options(backbone: str, weights: str, image_size: int) -> None:
    """Reject model options that cannot work, with a message saying what to do.

    Args:
        backbone: one of BACKBONES.
        weights: "none", "imagenet" (downloaded by Keras: needs internet or a cached
            file), or a path to a weights file. Remote URIs (s3://) are not checked here;
            the caller fetches them to a local file before `build_model`.
        image_size: input side in pixels.
    Raises:
        UserError: unknown backbone, missing weights file, "imagenet" for small_cnn, or an
            image size below the backbone's minimum.
    """
    if backbone not in BACKBONES:
        raise UserError(f"unknown backbone {backbone!r}; choose one of: {', '.join(BACKBONES)}")
    if not isinstance(weights, str) or not weights:
        raise UserError(f"model weights must be 'none', 'imagenet' or a path to a weights file; got {weights!r}")
    if weights == "imagenet" and backbone in OWN_BACKBONES:
        pretrained = [b for b in BACKBONES if b not in OWN_BACKBONES]
        raise UserError(
            f"{backbone} has no ImageNet weights; use weights=none, a weights file, "
            f"or a pretrained backbone ({', '.join(pretrained)})"
        )
    if weights not in WEIGHT_CHOICES and not _is_remote(weights) and not _weights_file_exists(weights):
        raise UserError(
            f"weights file {weights!r} does not exist; give an existing .weights.h5/.h5 file "
            "saved from the same model or a backbone-only *_notop.h5, or use weights=none / weights=imagenet"
        )
    minimum = MIN_IMAGE_SIZE[backbone]
    if not isinstance(image_size, int) or image_size < minimum:
        raise UserError(
            f"image_size {image_size!r} is too small for backbone {backbone!r}: it needs at "
            f"least {minimum} px; raise image_size or choose another backbone"
        )


def _check_head_options(num_classes: int, width: int, dropout_rate: float) -> None:
    """Raise UserError for a head that cannot be built."""
    if not isinstance(num_classes, int) or num_classes < 1:
        raise UserError(f"num_classes must be a positive integer; got {num_classes!r}")
    if not isinstance(width, int) or width < 1:
        raise UserError(f"model width must be a positive integer; got {width!r}")
    if not 0.0 <= dropout_rate < 1.0:
        raise UserError(f"dropout_rate must be in [0, 1); got {dropout_rate!r}")


def set_precision_policy(precision: str) -> None:
    """Set the global tf_keras dtype policy; models built afterwards use it.

    Args:
        precision: "float32", "mixed_float16" (GPU) or "mixed_bfloat16" (TPU/recent CPUs).
    Raises:
        UserError: unknown precision.
    """
    if precision not in PRECISIONS:
        raise UserError(f"unknown precision {precision!r}; choose one of: {', '.join(PRECISIONS)}")
    tf_keras.mixed_precision.set_global_policy(precision)


# --------------------------------------------------------------------------------------
# Building
# --------------------------------------------------------------------------------------


def _conv_bn_relu(x, filters: int, name: str):
    # No conv bias: the BatchNorm that follows has its own offset. momentum 0.9 (Keras
    # default 0.99): short CPU runs have few steps, and the moving statistics used at
    # evaluation must catch up within them.
    x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = layers.BatchNormalization(momentum=0.9, name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def small_vgg_stages(image_size: int) -> int:
    """Stages of small_vgg for an input side: enough 2x poolings to bring the feature map
    down to about 8 px, and at least 4 stages (a receptive field of ~68 px)."""
    poolings = max(3, math.ceil(math.log2(max(image_size, 1) / _SMALL_VGG_FINAL_SIDE)))
    return poolings + 1


def _small_vgg(image_size: int, width: int) -> tf_keras.Model:
    """VGG-style stages of two 3x3 Conv-BN-ReLU, 2x max-pool between stages.

    Why this shape: a label's evidence in a photo is an object somewhere in it. Two convs per
    stage and a pool per stage grow the receptive field fast (68 px after 4 stages), so the
    last feature map sees whole objects before global average pooling; the 3-block small_cnn
    (18 px) sees only texture and colour. Width doubles per stage up to 8x `width`.
    """
    inputs = layers.Input((image_size, image_size, 3), name="backbone_input")
    x = inputs
    stages = small_vgg_stages(image_size)
    for stage in range(stages):
        filters = width * 2 ** min(stage, int(math.log2(_SMALL_VGG_MAX_WIDTH_FACTOR)))
        x = _conv_bn_relu(x, filters, f"stage{stage}a")
        x = _conv_bn_relu(x, filters, f"stage{stage}b")
        if stage < stages - 1:
            x = layers.MaxPooling2D(2, name=f"stage{stage}_pool")(x)
    return tf_keras.Model(inputs, x, name="small_vgg")


def _small_cnn(image_size: int, width: int) -> tf_keras.Model:
    """Conv-BN-ReLU-MaxPool blocks with doubling width; outputs a feature map."""
    inputs = layers.Input((image_size, image_size, 3), name="backbone_input")
    x = inputs
    for block in range(_SMALL_CNN_BLOCKS):
        filters = width * 2**block
        # No conv bias: the BatchNorm that follows has its own offset.
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"block{block}_conv")(x)
        # momentum 0.9 (Keras default 0.99): short CPU runs have few steps, and the moving
        # statistics used at evaluation must catch up within them.
        x = layers.BatchNormalization(momentum=0.9, name=f"block{block}_bn")(x)
        x = layers.ReLU(name=f"block{block}_relu")(x)
        x = layers.MaxPooling2D(2, name=f"block{block}_pool")(x)
    return tf_keras.Model(inputs, x, name="small_cnn")


def _application(backbone: str, image_size: int, weights: str) -> tf_keras.Model:
    """A Keras application without its top; `weights` is "imagenet" or None."""
    apps = tf_keras.applications
    kwargs = dict(include_top=False, weights=weights, input_shape=(image_size, image_size, 3))
    if backbone == "xception":
        return apps.Xception(**kwargs)
    if backbone == "inception_v3":
        return apps.InceptionV3(**kwargs)
    if backbone == "resnet50":
        return apps.ResNet50(**kwargs)
    if backbone == "efficientnet_b0":
        return apps.EfficientNetB0(**kwargs)
    # MobileNetV3 rescales [0, 255] to [-1, 1] itself (include_preprocessing=True).
    return apps.MobileNetV3Small(include_preprocessing=True, **kwargs)


def _backbone(backbone: str, image_size: int, weights: str, width: int) -> tf_keras.Model:
    """The feature extractor, turning an ImageNet download failure into a UserError."""
    if backbone == "small_vgg":
        return _small_vgg(image_size, width)
    if backbone == "small_cnn":
        return _small_cnn(image_size, width)
    if weights != "imagenet":
        return _fast_batchnorm(_application(backbone, image_size, None))
    try:
        return _application(backbone, image_size, "imagenet")
    except Exception as exc:  # Keras raises a bare Exception on "URL fetch failure".
        found = re.search(r"https?://\S+/([^/\s:]+\.h5)", str(exc))
        file_name = found.group(1) if found else "the Keras *_notop.h5 file of this backbone"
        raise UserError(
            f"could not download ImageNet weights for {backbone!r} ({exc}); this machine may "
            f"have no internet access. Download {file_name} elsewhere and pass it as "
            f"model.weights=PATH or s3://BUCKET/.../{file_name} (or put it in ~/.keras/models/), "
            "or use weights=none"
        ) from exc


def _fast_batchnorm(backbone: tf_keras.Model) -> tf_keras.Model:
    """Set every BatchNorm's momentum to 0.9 in a backbone that starts from random weights.

    The applications use 0.99 (MobileNetV3: 0.999), tuned for ImageNet's hundreds of
    thousands of steps. Trained from scratch for a few hundred steps, their moving statistics
    are still mostly the initial (0, 1) at evaluation, far from the real activations, and the
    network outputs the same logits for every image: validation macro-F1 0 while the
    training loss falls. With 0.9 the statistics follow within ~20 steps. (The momentum is
    read when the layer is called, so changing it after construction takes effect.)
    """
    for layer in backbone.layers:
        if isinstance(layer, layers.BatchNormalization):
            layer.momentum = _SCRATCH_BN_MOMENTUM
    return backbone


def _preprocessing(backbone: str):
    """Layer mapping [0, 255] RGB to what the backbone expects, or None if it does it."""
    if backbone in OWN_BACKBONES:
        return layers.Rescaling(1.0 / 255.0, name="preprocess")
    if backbone in ("xception", "inception_v3"):
        # preprocess_input "tf" mode: [0, 255] -> [-1, 1].
        return layers.Rescaling(1.0 / 127.5, offset=-1.0, name="preprocess")
    if backbone == "resnet50":
        return CaffePreprocess(name="preprocess")
    # EfficientNet and MobileNetV3 include their own Rescaling/Normalization layers.
    return None


def backbone_layer_names(backbone: str, image_size: int, width: int = 32) -> list[str]:
    """The layer names of a backbone, built without weights (to check transfer.unfreeze_from)."""
    return [layer.name for layer in _backbone(backbone, image_size, "none", width).layers]


def _load_weights(model: tf_keras.Model, backbone: tf_keras.Model, path: str) -> None:
    """Load a weights file into the whole model, or else into the backbone alone.

    The whole model's weights come from an earlier run of this job; the backbone's alone are
    what a pretrained download is (e.g. Keras' efficientnetb0_notop.h5 for an offline
    machine), so the transfer recipe can start from a file instead of the internet.
    """
    try:
        model.load_weights(path)
        return
    except (ValueError, OSError, tf.errors.OpError) as whole_model_error:
        first_error = whole_model_error
    try:
        backbone.load_weights(path)
        log.info("loaded %s into the backbone (the head starts from scratch)", path)
    except (ValueError, OSError, tf.errors.OpError):
        raise UserError(
            f"weights file {path!r} fits neither this model nor its backbone ({first_error}); give a file "
            "saved from a model with the same backbone, width, image size and number of classes, or a "
            "backbone-only file such as Keras' *_notop.h5 for this backbone"
        ) from first_error


def build_model(
    backbone: str,
    num_classes: int,
    image_size: int,
    *,
    weights: str = "none",
    freeze_backbone: bool = False,
    backbone_inference: bool = False,
    width: int = 32,
    dropout_rate: float = 0.2,
    precision: str = "float32",
    seed: int | None = None,
) -> tf_keras.Model:
    """Build image -> preprocessing -> backbone -> global average pool -> dropout -> logits.

    Build under the distribution strategy's scope. Sets the global precision policy and,
    when `seed` is given, the global Python/NumPy/TF seeds (deterministic init).

    Args:
        backbone: one of BACKBONES.
        num_classes: number of labels (logits width).
        image_size: input side in pixels.
        weights: "none", "imagenet", or a LOCAL path to full-model weights.
        freeze_backbone: make the backbone non-trainable (its BatchNorm runs in inference
            mode, as Keras recommends for fine-tuning).
        backbone_inference: call the backbone with training=False even while it trains (the
            transfer recipe's fine-tuning: BatchNorm keeps its pretrained statistics).
        width: filters of small_cnn's first block (ignored by other backbones).
        dropout_rate: dropout before the head.
        precision: one of PRECISIONS; the head stays float32.
        seed: seed for weight init, or None.
    Returns:
        an uncompiled tf_keras Model with input "image" and float32 logits (None, num_classes).
    Raises:
        UserError: invalid options, missing/mismatched weights file, ImageNet download failure.
    """
    check_model_options(backbone, weights, image_size)
    _check_head_options(num_classes, width, dropout_rate)
    if _is_remote(weights):
        raise UserError(f"weights {weights!r} is remote; fetch it to a local file before building the model")
    set_precision_policy(precision)
    if seed is not None:
        tf_keras.utils.set_random_seed(seed)

    inputs = layers.Input((image_size, image_size, 3), dtype="float32", name="image")
    preprocess = _preprocessing(backbone)
    x = preprocess(inputs) if preprocess is not None else inputs
    base = _backbone(backbone, image_size, weights, width)
    base.trainable = not freeze_backbone
    x = base(x, training=False) if freeze_backbone or backbone_inference else base(x)
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    x = layers.Dropout(dropout_rate, seed=seed, name="dropout")(x)
    # float32 head: logits, loss and metrics stay float32 under mixed precision.
    logits = layers.Dense(num_classes, dtype="float32", name="logits")(x)
    model = tf_keras.Model(inputs, logits, name=f"multilabel_{backbone}")

    if weights not in WEIGHT_CHOICES:
        _load_weights(model, base, weights)
    return model


def compile_model(
    model: tf_keras.Model,
    *,
    learning_rate: float | tf_keras.optimizers.schedules.LearningRateSchedule,
    loss: tf_keras.losses.Loss | None = None,
    weight_decay: float = 0.0,
    jit_compile: bool = False,
) -> None:
    """Compile with Adam (AdamW when `weight_decay` > 0), a loss on logits and the training metrics.

    Metrics are created under the model's distribution strategy scope. With a
    mixed_float16 model, tf_keras wraps the optimizer in a LossScaleOptimizer itself.

    Args:
        model: a model from `build_model`.
        learning_rate: a positive float, or a schedule of the step (schedules.learning_rate_for).
        loss: a loss on logits (losses.loss_for); None: binary cross-entropy.
        weight_decay: decoupled weight decay; 0 means plain Adam.
        jit_compile: compile the train step with XLA.
    Raises:
        UserError: learning_rate not positive.
    """
    if isinstance(learning_rate, (int, float)) and not learning_rate > 0:
        raise UserError(f"learning_rate must be positive; got {learning_rate!r}")
    num_classes = int(model.output_shape[-1])
    with model.distribute_strategy.scope():
        model.compile(
            optimizer=make_optimizer(learning_rate, weight_decay),
            loss=loss or tf_keras.losses.BinaryCrossentropy(from_logits=True),
            metrics=job_metrics.training_metrics(num_classes),
            jit_compile=jit_compile,
        )
