"""Synthetic scenes: spec validation, label sampling, determinism, and visible signatures."""

import io

import numpy as np
import pytest
from PIL import Image

from job.data.labels import (
    DEFAULT_CLASS_NAMES,
    find_correlated_pairs,
    format_label_analysis,
)
from job.data.objects import OBJECT_CLASS_NAMES, draw_objects
from job.data.scenes import draw_scene
from job.data.synthetic import (
    SceneSpec,
    encode_jpeg,
    generate,
    parse_pair,
    sample_labels,
)
from job.errors import UserError

SEA, SUNSET, TREES = 2, 3, 4


def _decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


# --------------------------------------------------------------------------- spec


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"image_size": 8}, "image_size"),
        ({"image_size": 2048}, "image_size"),
        ({"label_probability": (0.3, 0.3, 1.5, 0.3, 0.3)}, "label_probability for sea"),
        ({"label_probability": (0.3, 0.3)}, "label_probability has 2 values"),
        ({"pairs": (("sea", "beach", 1.0),)}, "'beach'"),
        ({"pairs": (("sea", "sunset", 1.2),)}, "pairs"),
        ({"class_names": ("sea", "cars"), "label_probability": (0.5, 0.5)}, "class_names"),
        ({"min_labels": 6}, "min_labels"),
        ({"label_probability": (0.0, 0.0, 0.0, 0.0, 0.5), "min_labels": 2}, "min_labels"),
    ],
)
def test_bad_spec_names_the_field(kwargs, field):
    with pytest.raises(UserError, match=field):
        SceneSpec(**kwargs)


def test_parse_pair():
    assert parse_pair("sea:sunset:1.0") == ("sea", "sunset", 1.0)
    assert parse_pair(" trees : mountains : 0.5 ") == ("trees", "mountains", 0.5)


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("sea:sunset", "LABEL:LABEL:PROBABILITY"),
        ("sea:sunset:often", "'often' is not a number"),
        ("sea:beach:1", "unknown label 'beach'"),
        ("sea:sunset:1.5", "must be in [0, 1]"),
        ("sea:sea:1", "itself"),
    ],
)
def test_parse_pair_errors(text, fragment):
    with pytest.raises(UserError) as info:
        parse_pair(text)
    assert fragment in str(info.value)


# --------------------------------------------------------------------------- labels


def test_label_frequencies_match_requested():
    requested = (0.1, 0.3, 0.5, 0.7, 0.9)
    spec = SceneSpec(label_probability=requested, min_labels=0)
    y = sample_labels(4000, spec, np.random.default_rng(0))
    assert y.shape == (4000, 5) and y.dtype == np.uint8
    # Binomial std at n=4000 is <= 0.008; 0.03 is ~4 sigma.
    np.testing.assert_allclose(y.mean(axis=0), requested, atol=0.03)


def test_min_labels_fills_empty_images_and_skips_impossible_labels():
    spec = SceneSpec(label_probability=(0.1, 0.0, 0.1, 0.1, 0.1), min_labels=2)
    y = sample_labels(2000, spec, np.random.default_rng(0))
    assert y.sum(axis=1).min() >= 2
    assert y[:, 1].sum() == 0  # probability 0 means never, even when filling
    # The default (min_labels=1) leaves no image unlabelled.
    y = sample_labels(2000, SceneSpec(), np.random.default_rng(0))
    assert y.sum(axis=1).min() >= 1


def test_pair_with_p1_always_cooccurs_and_analysis_flags_it():
    spec = SceneSpec(pairs=(("sea", "sunset", 1.0),))
    y = sample_labels(2000, spec, np.random.default_rng(0))
    assert y[:, SEA].sum() > 500
    np.testing.assert_array_equal(y[:, SEA], y[:, SUNSET])
    [pair] = find_correlated_pairs(y, DEFAULT_CLASS_NAMES)
    assert (pair.first, pair.second, pair.first_only, pair.second_only) == ("sea", "sunset", 0, 0)
    assert "FLAG sea + sunset" in format_label_analysis(y, DEFAULT_CLASS_NAMES)


def test_without_pairs_nothing_is_flagged():
    y = sample_labels(2000, SceneSpec(), np.random.default_rng(0))
    assert find_correlated_pairs(y, DEFAULT_CLASS_NAMES) == []
    assert "FLAG " not in format_label_analysis(y, DEFAULT_CLASS_NAMES)


def test_partial_pair_raises_cooccurrence_without_forcing_it():
    spec = SceneSpec(pairs=(("sea", "sunset", 0.5),))
    y = sample_labels(4000, spec, np.random.default_rng(0))
    p_sunset_given_sea = y[y[:, SEA] == 1, SUNSET].mean()
    # Independent: 0.35-ish. Tied in half the images: about 0.35 + 0.5 * 0.65.
    assert 0.6 < p_sunset_given_sea < 0.8
    assert find_correlated_pairs(y, DEFAULT_CLASS_NAMES) == []


def test_chained_pairs_tie_all_three_labels():
    spec = SceneSpec(pairs=(("sea", "sunset", 1.0), ("sunset", "trees", 1.0)))
    y = sample_labels(1000, spec, np.random.default_rng(0))
    np.testing.assert_array_equal(y[:, SEA], y[:, SUNSET])
    np.testing.assert_array_equal(y[:, SUNSET], y[:, TREES])


# --------------------------------------------------------------------------- images


@pytest.mark.parametrize("size", [16, 64, 100, 224])
def test_draw_scene_shape_and_dtype(size):
    labels = np.array([1, 1, 1, 1, 1], dtype=np.uint8)
    image = draw_scene(labels, size, np.random.default_rng(0))
    assert image.shape == (size, size, 3) and image.dtype == np.uint8
    assert _decode(encode_jpeg(image)).shape == (size, size, 3)


def test_generate_is_deterministic_per_seed():
    spec = SceneSpec()
    first = list(generate(12, spec, seed=5))
    again = list(generate(12, spec, seed=5))
    other = list(generate(12, spec, seed=6))
    assert [i for i, _, _ in first] == [f"synth-{i:06d}" for i in range(12)]
    assert [b for _, b, _ in first] == [b for _, b, _ in again]
    assert all(np.array_equal(a[2], b[2]) for a, b in zip(first, again))
    assert all(a[1] != b[1] for a, b in zip(first, other))
    assert len({b for _, b, _ in first}) == 12  # every image is its own scene


def test_generate_in_chunks_equals_one_pass():
    spec = SceneSpec(image_size=32)
    whole = list(generate(10, spec, seed=3))
    chunks = list(generate(4, spec, seed=3)) + list(generate(6, spec, seed=3, start=4))
    assert [(i, b) for i, b, _ in whole] == [(i, b) for i, b, _ in chunks]


def test_generated_labels_match_drawn_pixels_with_custom_class_order():
    # Columns are (sunset, sea) here, not the default order: labels and pixels must agree.
    spec = SceneSpec(class_names=("sunset", "sea"), label_probability=(0.5, 0.5))
    for _, data, labels in generate(30, spec, seed=1):
        image = _decode(data).astype(np.float32)
        is_sunset_sky = (image[:32, :, 0] - image[:32, :, 2]).mean() > 0
        assert is_sunset_sky == bool(labels[0])
        sea_share = ((image[44:, :, 2] - image[44:, :, 0]) > 50).mean()
        assert (sea_share > 0.2) == bool(labels[1])


# Signature statistics on 64 px images: the fraction (or mean) of a colour in a region.
def _sunset_stat(img):  # red minus blue across the top half (always sky)
    return (img[:, :32, :, 0] - img[:, :32, :, 2]).mean(axis=(1, 2))


def _sea_stat(img):  # share of strongly blue pixels in the bottom band (always ground)
    r, g, b = (img[:, 42:, :, c] for c in range(3))
    return ((b > r + 50) & (b > g + 30)).mean(axis=(1, 2))


def _desert_stat(img):  # share of sandy-yellow pixels in the bottom band
    r, g, b = (img[:, 42:, :, c] for c in range(3))
    return ((r > 170) & (g > 130) & (r > b + 60)).mean(axis=(1, 2))


def _trees_stat(img):  # share of clearly green pixels anywhere
    r, g, b = (img[..., c] for c in range(3))
    return ((g > r + 30) & (g > b + 30)).mean(axis=(1, 2))


def _mountains_stat(img):  # share of grey/brown (low-saturation) pixels above the horizon
    band = img[:, 23:32]
    high, low = band.max(axis=-1), band.min(axis=-1)
    return (((high - low) < 45) & (high > 50) & (high < 215)).mean(axis=(1, 2))


@pytest.fixture(scope="module")
def random_scenes():
    spec = SceneSpec(label_probability=(0.5,) * 5)
    rng = np.random.default_rng(7)
    y = sample_labels(300, spec, rng)
    images = np.stack([draw_scene(row, 64, rng) for row in y]).astype(np.float32)
    return y, images


@pytest.mark.parametrize(
    "label, statistic",
    [
        ("sunset", _sunset_stat),
        ("sea", _sea_stat),
        ("desert", _desert_stat),
        ("trees", _trees_stat),
        ("mountains", _mountains_stat),
    ],
)
def test_each_label_has_a_visible_signature(random_scenes, label, statistic):
    y, images = random_scenes
    values = statistic(images)
    present = y[:, DEFAULT_CLASS_NAMES.index(label)] == 1
    on, off = values[present], values[~present]
    assert len(on) > 50 and len(off) > 50
    # Nearly all images with the label score above nearly all images without it, whatever
    # other labels share the picture.
    assert np.quantile(on, 0.02) > np.quantile(off, 0.98), (label, on.min(), off.max())


# --------------------------------------------------------------------------- the objects family


def test_objects_family_has_one_to_three_shapes_per_image_and_is_deterministic():
    spec = SceneSpec(kind="objects", image_size=32)
    y = sample_labels(2000, spec, np.random.default_rng(1))
    assert y.shape == (2000, len(OBJECT_CLASS_NAMES))
    assert set(np.unique(y.sum(axis=1))) == {1, 2, 3}
    assert (y.mean(axis=0) > 0.1).all()  # every shape is common enough to learn
    first = list(generate(4, spec, seed=5))
    again = list(generate(4, spec, seed=5))
    assert [(i, b, tuple(y)) for i, b, y in first] == [(i, b, tuple(y)) for i, b, y in again]


def test_a_shape_is_local_evidence_and_each_shape_looks_different():
    def draw(name):
        labels = np.array([n == name for n in OBJECT_CLASS_NAMES])
        return draw_objects(labels, 64, np.random.default_rng(7)).astype(int)

    background = draw_objects(np.zeros(len(OBJECT_CLASS_NAMES)), 64, np.random.default_rng(7)).astype(int)
    drawn = {name: draw(name) for name in OBJECT_CLASS_NAMES}
    for name, image in drawn.items():
        changed = (np.abs(image - background).sum(axis=-1) > 60).mean()
        # The shape covers a part of the image (about a quarter of its side), not all of it.
        assert 0.005 < changed < 0.2, f"{name} changes {changed:.1%} of the pixels"
    names = list(drawn)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert np.abs(drawn[a] - drawn[b]).sum(axis=-1).max() > 100, f"{a} and {b} look the same"


def test_objects_family_refuses_scene_labels_and_unknown_kinds():
    with pytest.raises(UserError, match="labels the objects generator can draw"):
        SceneSpec(kind="objects", class_names=("sea", "circle"))
    with pytest.raises(UserError, match="kind must be one of scenes, objects"):
        SceneSpec(kind="faces")
