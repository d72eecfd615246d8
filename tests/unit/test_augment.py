"""Augmentation policies: the config's op names, their parsing, and what each op does."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from job.config import AUGMENT_OPS, DEFAULT_AUGMENT, ConfigError, load_config
from job.data import augment

SIZE = 32


def _image(seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, (SIZE, SIZE, 3)).astype(np.float32)


def _apply(image: np.ndarray, policy, seed=(1, 2)) -> np.ndarray:
    return augment.augment_image(tf.constant(image), tf.constant(seed, tf.int64), tuple(policy)).numpy()


def test_every_declared_op_is_implemented_and_nothing_else():
    assert set(augment.OPS) == set(AUGMENT_OPS)


# ---------------------------------------------------------------------------- the config


@pytest.mark.parametrize(
    "value, expected",
    [
        ("[flip_left_right, brightness]", ("flip_left_right", "brightness:0.08")),
        ("[brightness:0.3, random_resized_crop:0.6]", ("brightness:0.3", "random_resized_crop:0.6")),
        ("flip_up_down,contrast:0.5", ("flip_up_down", "contrast:0.5")),
        ("[{brightness: 0.2}]", ("brightness:0.2",)),
        ("none", ()),
        ("[]", ()),
        # The old boolean: true was flips + brightness + contrast, which is the default policy.
        ("true", DEFAULT_AUGMENT),
        ("false", ()),
    ],
)
def test_policy_spellings(value, expected):
    assert load_config(None, [f"data.augment={value}"]).data.augment == expected


def test_the_default_policy_is_label_preserving_for_most_photos():
    assert load_config(None).data.augment == ("flip_left_right", "brightness:0.08", "contrast:0.15")


@pytest.mark.parametrize(
    "value, message",
    [
        ("[flip_left_rigth]", "Did you mean flip_left_right?"),
        ("[brightness:2]", "the strength of brightness must be in (0, 1]"),
        ("[brightness:lots]", "must be a number"),
        ("[flip_up_down:0.5]", "flip_up_down takes no strength"),
        ("[contrast, contrast:0.2]", "names contrast more than once"),
        ("7", "must be a list of augmentation ops"),
    ],
)
def test_bad_policies_are_refused_with_the_key(value, message):
    with pytest.raises(ConfigError) as info:
        load_config(None, [f"data.augment={value}"])
    assert "data.augment" in str(info.value) and message in str(info.value)


# ---------------------------------------------------------------------------- the ops


def test_a_policy_is_deterministic_per_seed_in_eager_and_in_tf_data():
    image, policy = _image(), DEFAULT_AUGMENT + ("random_resized_crop:0.5",)
    eager = _apply(image, policy)
    np.testing.assert_array_equal(eager, _apply(image, policy))
    ds = tf.data.Dataset.from_tensors((image, tf.constant([1, 2], tf.int64)))
    mapped = next(iter(ds.map(lambda im, s: augment.augment_image(im, s, policy)))).numpy()
    np.testing.assert_allclose(eager, mapped, atol=1e-3)
    assert eager.shape == image.shape and eager.dtype == np.float32
    assert eager.min() >= 0.0 and eager.max() <= 255.0
    outs = {_apply(image, policy, (s, 0)).tobytes() for s in range(6)}
    assert len(outs) == 6, "six seeds should give six different images"


def test_an_empty_policy_leaves_the_image_alone():
    image = _image()
    np.testing.assert_array_equal(_apply(image, ()), image)


def _seen(image: np.ndarray, op: str, seeds: int = 16) -> list[np.ndarray]:
    return [_apply(image, (op,), (s, 7)) for s in range(seeds)]


def test_flips_mirror_the_image_or_leave_it():
    image = _image()
    for op, mirrored in (("flip_left_right", image[:, ::-1]), ("flip_up_down", image[::-1])):
        outs = _seen(image, op)
        assert all(np.array_equal(o, image) or np.array_equal(o, mirrored) for o in outs)
        assert any(np.array_equal(o, mirrored) for o in outs) and any(np.array_equal(o, image) for o in outs)


def test_brightness_shifts_every_pixel_by_at_most_its_strength():
    image = np.full((SIZE, SIZE, 3), 128.0, np.float32)
    shifts = [float(o.mean() - 128.0) for o in _seen(image, "brightness:0.2")]
    assert max(abs(s) for s in shifts) <= 0.2 * 255 + 1e-3
    assert max(abs(s) for s in shifts) > 0.1 * 255  # it does use its range


def test_random_resized_crop_zooms_in_and_keeps_the_size():
    # A white square in the middle of black: a crop shows it larger or off-centre, never
    # smaller than it is.
    image = np.zeros((SIZE, SIZE, 3), np.float32)
    image[12:20, 12:20] = 255.0
    outs = _seen(image, "random_resized_crop:0.3")
    assert all(o.shape == image.shape for o in outs)
    assert len({o.tobytes() for o in outs}) > 8
    white = [float((o > 128).mean()) for o in outs]
    assert min(white) >= 0.0 and max(white) > (8 * 8) / (SIZE * SIZE) * 1.5
