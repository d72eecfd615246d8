"""Augmentation policies: the named ops of `data.augment`, applied to one training image.

A policy is a tuple of canonical op strings from the config ("flip_left_right",
"brightness:0.08"); `job.config.AUGMENT_OPS` lists the ops, their default strengths and
ranges, and is the one place a new op is declared (a unit test keeps this module in step).

Every op is a stateless random op keyed by a per-example seed, so a run's augmentation is
reproducible and independent of thread timing. Which ops keep which labels is in
docs/data.md: flips break orientation (text, digits, left/right, arrows), a crop can cut an
object out of the picture, brightness and contrast break labels that are about light.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import tensorflow as tf

# Aspect ratios random_resized_crop may pick (Inception-style, as torchvision's default).
_CROP_ASPECT_RANGE = (3.0 / 4.0, 4.0 / 3.0)


def _flip_left_right(image: tf.Tensor, seed: tf.Tensor, _strength: float | None) -> tf.Tensor:
    return tf.image.stateless_random_flip_left_right(image, seed)


def _flip_up_down(image: tf.Tensor, seed: tf.Tensor, _strength: float | None) -> tf.Tensor:
    return tf.image.stateless_random_flip_up_down(image, seed)


def _brightness(image: tf.Tensor, seed: tf.Tensor, strength: float | None) -> tf.Tensor:
    # Pixels are in [0, 255]: the strength is a share of that range.
    return tf.image.stateless_random_brightness(image, 255.0 * strength, seed)


def _contrast(image: tf.Tensor, seed: tf.Tensor, strength: float | None) -> tf.Tensor:
    return tf.image.stateless_random_contrast(image, 1.0 - strength, 1.0 + strength, seed)


def _random_resized_crop(image: tf.Tensor, seed: tf.Tensor, strength: float | None) -> tf.Tensor:
    """A random box of at least `strength` of the area, resized back to the image size."""
    size = tf.shape(image)[:2]
    begin, box_size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(image),
        bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
        seed=seed,
        min_object_covered=0.0,
        aspect_ratio_range=_CROP_ASPECT_RANGE,
        area_range=(strength, 1.0),
        use_image_if_no_bounding_boxes=True,
    )
    crop = tf.slice(image, begin, box_size)
    return tf.image.resize(crop, size, antialias=True)


OPS: dict[str, Callable[[tf.Tensor, tf.Tensor, float | None], tf.Tensor]] = {
    "flip_left_right": _flip_left_right,
    "flip_up_down": _flip_up_down,
    "brightness": _brightness,
    "contrast": _contrast,
    "random_resized_crop": _random_resized_crop,
}


def parse_op(op: str) -> tuple[str, float | None]:
    """("brightness", 0.08) from "brightness:0.08"; (name, None) for an op without strength."""
    name, _, strength = op.partition(":")
    return name, float(strength) if strength else None


def augment_image(image: tf.Tensor, seed: tf.Tensor, policy: Sequence[str]) -> tf.Tensor:
    """Apply `policy`'s ops in order to one image.

    Args:
        image: float32 pixels in [0, 255], shape (size, size, 3).
        seed: int64 tensor of shape (2,), this example's seed.
        policy: canonical op strings (`DataConfig.augment`).
    Returns:
        the augmented image, same shape, clipped to [0, 255].
    """
    if not policy:
        return image
    seeds = tf.random.experimental.stateless_split(seed, num=len(policy))
    for index, op in enumerate(policy):
        name, strength = parse_op(op)
        image = OPS[name](image, seeds[index], strength)
    return tf.clip_by_value(image, 0.0, 255.0)
