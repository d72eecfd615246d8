"""Synthetic multi-label data sets, in two families: landscape scenes (desert, mountains, sea,
sunset, trees; `scenes.py`) and shapes on clutter (`objects.py`).

Why: the demo, the tests and the benchmarks need a data set that anyone can make offline in
seconds, that a small CNN learns at 64 px on a CPU, and whose label correlations we control
(`SceneSpec.pairs`), so the "sea and sunset always together" question from the user's story
can be reproduced on purpose.

In the scenes each label has its own visible signature spread over the picture; in the
objects family a label is a small shape anywhere in the image, as in real photos.

Positions, sizes and colours are jittered and a little noise is added, so the task is not
trivial. numpy and PIL only: no TensorFlow here.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from job.data.labels import DEFAULT_CLASS_NAMES
from job.data.objects import OBJECT_CLASS_NAMES, draw_objects
from job.data.scenes import draw_scene
from job.errors import UserError

MIN_IMAGE_SIZE = 16
MAX_IMAGE_SIZE = 1024


@dataclass(frozen=True)
class Family:
    """A kind of synthetic image: its labels, their default probability, and its painter."""

    class_names: tuple[str, ...]
    label_probability: float
    max_labels: int  # 0: no cap
    draw: Callable[..., np.ndarray]


FAMILIES = {
    "scenes": Family(DEFAULT_CLASS_NAMES, 0.35, 0, draw_scene),
    # 10 shapes at 0.15 each: 1.5 per image on average, 1 to 3 after min/max.
    "objects": Family(OBJECT_CLASS_NAMES, 0.15, 3, draw_objects),
}


# --------------------------------------------------------------------------- spec


@dataclass(frozen=True)
class SceneSpec:
    """What to generate: which family, which labels, how often, and which pairs are tied together."""

    kind: str = "scenes"
    """The family: "scenes" (landscapes; label evidence spans the picture) or "objects" (shapes
    at random places on clutter; label evidence is local, as in photos)."""
    class_names: tuple[str, ...] | None = None
    """Labels, in multi-hot column order; any non-empty subset of the family's drawable ones
    (default: all of them)."""
    image_size: int = 64
    """Height and width of each square image, in pixels (16..1024)."""
    label_probability: tuple[float, ...] | None = None
    """Per class, the probability it is drawn (independently, before min_labels/pairs add);
    default: the family's (0.35 each for scenes, 0.15 each for objects)."""
    pairs: tuple[tuple[str, str, float], ...] = ()
    """(a, b, p): when one of a/b is present the other is forced present with probability p;
    p=1.0 means the two labels always co-occur (never apart)."""
    min_labels: int = 1
    """Images with fewer labels get extra ones, drawn in proportion to label_probability."""
    max_labels: int | None = None
    """Images with more labels lose random ones (never a tied pair's); default: no cap for
    scenes, 3 for objects."""

    def __post_init__(self) -> None:
        if self.kind not in FAMILIES:
            raise UserError(f"kind must be one of {', '.join(FAMILIES)}, got {self.kind!r}.")
        family = FAMILIES[self.kind]
        names = tuple(self.class_names) if self.class_names is not None else family.class_names
        object.__setattr__(self, "class_names", names)
        if self.label_probability is None:
            object.__setattr__(self, "label_probability", (family.label_probability,) * len(names))
        if self.max_labels is None:
            object.__setattr__(self, "max_labels", family.max_labels)
        self.validate()

    def validate(self) -> None:
        """Raise UserError naming the first bad field and saying what is allowed."""
        _validate_class_names(self.class_names, self.kind)
        if not isinstance(self.image_size, (int, np.integer)) or not (
            MIN_IMAGE_SIZE <= self.image_size <= MAX_IMAGE_SIZE
        ):
            raise UserError(
                f"image_size must be an integer in {MIN_IMAGE_SIZE}..{MAX_IMAGE_SIZE}, got {self.image_size!r}."
            )
        _validate_probabilities(self.label_probability, self.class_names)
        for pair in self.pairs:
            _validate_pair(pair, self.class_names)
        drawable = sum(p > 0 for p in self.label_probability)
        if not 0 <= self.min_labels <= drawable:
            raise UserError(
                f"min_labels must be in 0..{drawable} (the number of labels with "
                f"label_probability > 0), got {self.min_labels}."
            )
        if self.max_labels and self.max_labels < self.min_labels:
            raise UserError(f"max_labels ({self.max_labels}) must be at least min_labels ({self.min_labels}).")


def _validate_class_names(class_names: Sequence[str], kind: str) -> None:
    """Only the labels the family can draw are allowed, each once."""
    drawable = FAMILIES[kind].class_names
    unknown = [c for c in class_names if c not in drawable]
    if not class_names or unknown or len(set(class_names)) != len(class_names):
        raise UserError(
            f"class_names must be distinct names from {', '.join(drawable)} "
            f"(the labels the {kind} generator can draw), got {list(class_names)}."
        )


def _validate_probabilities(probabilities: Sequence[float], class_names: Sequence[str]) -> None:
    """One probability in [0, 1] per class."""
    if len(probabilities) != len(class_names):
        raise UserError(
            f"label_probability has {len(probabilities)} values but there are "
            f"{len(class_names)} class_names ({', '.join(class_names)}); give one per class."
        )
    for name, p in zip(class_names, probabilities):
        if not 0.0 <= p <= 1.0:
            raise UserError(f"label_probability for {name} must be in [0, 1], got {p}.")


def _validate_pair(pair: tuple[str, str, float], class_names: Sequence[str]) -> None:
    """A pair names two different known labels and a probability in [0, 1]."""
    a, b, p = pair
    for name in (a, b):
        if name not in class_names:
            raise UserError(f"pairs: unknown label {name!r} in {a}:{b}:{p}; known labels are {', '.join(class_names)}.")
    if a == b:
        raise UserError(f"pairs: {a}:{b}:{p} ties a label to itself; name two different labels.")
    if not 0.0 <= p <= 1.0:
        raise UserError(f"pairs: probability in {a}:{b}:{p} must be in [0, 1].")


def parse_pair(text: str) -> tuple[str, str, float]:
    """Parse a command-line pair "a:b:p", e.g. "sea:sunset:1.0".

    Args:
        text: two label names and a probability, colon-separated.

    Returns:
        (a, b, p).

    Raises:
        UserError: bad syntax, an unknown label, or p outside [0, 1].
    """
    parts = text.split(":")
    hint = "write it as LABEL:LABEL:PROBABILITY, e.g. sea:sunset:1.0"
    if len(parts) != 3:
        raise UserError(f"bad pair {text!r}: {hint}.")
    a, b, p_text = (part.strip() for part in parts)
    try:
        p = float(p_text)
    except ValueError:
        raise UserError(f"bad pair {text!r}: {p_text!r} is not a number; {hint}.") from None
    pair = (a, b, p)
    _validate_pair(pair, [name for family in FAMILIES.values() for name in family.class_names])
    return pair


# --------------------------------------------------------------------------- labels


def sample_labels(num_images: int, spec: SceneSpec, rng: np.random.Generator) -> np.ndarray:
    """Sample multi-hot labels for `num_images` scenes.

    Each label is drawn independently with its probability; images with fewer than
    `min_labels` get extra labels (weighted by probability); then each pair ties its two
    labels together in a share p of the images (p=1.0: always together).

    Args:
        num_images: how many rows.
        spec: the label probabilities, pairs and min_labels.
        rng: the random source.

    Returns:
        (num_images, k) uint8 multi-hot array in `spec.class_names` order.
    """
    probs = np.asarray(spec.label_probability, dtype=np.float64)
    y = rng.random((num_images, len(probs))) < probs
    y = _fill_min_labels(y, probs, spec.min_labels, rng)
    y = _tie_pairs(y, spec, rng)
    y = _cap_labels(y, spec, rng)
    return y.astype(np.uint8)


def _cap_labels(y: np.ndarray, spec: SceneSpec, rng: np.random.Generator) -> np.ndarray:
    """Drop random labels from rows above `max_labels`, keeping tied pairs' labels."""
    if not spec.max_labels:
        return y
    tied = {name for a, b, _ in spec.pairs for name in (a, b)}
    protected = np.array([name in tied for name in spec.class_names])
    y = y.copy()
    for row in np.nonzero(y.sum(axis=1) > spec.max_labels)[0]:
        droppable = np.flatnonzero(y[row] & ~protected)
        excess = int(y[row].sum()) - spec.max_labels
        y[row, rng.permutation(droppable)[:excess]] = False
    return y


def _fill_min_labels(y: np.ndarray, probs: np.ndarray, min_labels: int, rng: np.random.Generator) -> np.ndarray:
    """Add labels to rows with fewer than `min_labels`, weighted by `probs`."""
    if min_labels == 0:
        return y
    # Gumbel-top-k draws labels without replacement in proportion to probs, for all rows
    # at once; present labels score +inf so they are always among the top `min_labels`.
    with np.errstate(divide="ignore"):
        scores = np.log(probs) + rng.gumbel(size=y.shape)
    scores[y] = np.inf
    top = np.argsort(-scores, axis=1)[:, :min_labels]
    filled = y.copy()
    short = y.sum(axis=1) < min_labels
    rows = np.nonzero(short)[0]
    filled[rows[:, None], top[short]] = True
    return filled


def _tie_pairs(y: np.ndarray, spec: SceneSpec, rng: np.random.Generator) -> np.ndarray:
    """Force pair partners present; each (image, pair) tie is decided once, with prob p."""
    if not spec.pairs:
        return y
    index = {name: i for i, name in enumerate(spec.class_names)}
    tied = rng.random((y.shape[0], len(spec.pairs))) < np.array([p for _, _, p in spec.pairs])
    y = y.copy()
    # Chains (a~b, b~c) need repeated passes; ties only add labels, so k passes suffice.
    for _ in range(len(spec.class_names)):
        before = y.copy()
        for q, (a, b, _) in enumerate(spec.pairs):
            either = (y[:, index[a]] | y[:, index[b]]) & tied[:, q]
            y[either, index[a]] = True
            y[either, index[b]] = True
        if np.array_equal(before, y):
            break
    return y


# --------------------------------------------------------------------------- output


def encode_jpeg(image: np.ndarray, quality: int = 90) -> bytes:
    """Encode an (H, W, 3) uint8 image as JPEG.

    Args:
        image: RGB pixels.
        quality: 1..95 (PIL's useful range).

    Returns:
        The JPEG file bytes (deterministic for the same pixels and quality).
    """
    if not 1 <= quality <= 95:
        raise UserError(f"JPEG quality must be in 1..95, got {quality}.")
    buffer = io.BytesIO()
    pixels = Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8))
    pixels.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def generate(num_images: int, spec: SceneSpec, seed: int, *, start: int = 0) -> Iterator[tuple[str, bytes, np.ndarray]]:
    """Yield synthetic images with their labels.

    Image i depends only on (seed, i): it gets its own child RNG for both labels and
    pixels, so a data set can be generated in chunks (`start`) or in parallel and still be
    identical to one made in a single pass.

    Args:
        num_images: how many images to yield.
        spec: what to draw.
        seed: the data set seed; the same seed gives the same bytes.
        start: index of the first image (ids continue from it).

    Yields:
        (id like "synth-000042", JPEG bytes, (k,) uint8 multi-hot labels).
    """
    if num_images < 0 or start < 0:
        raise UserError(f"num_images and start must be >= 0, got {num_images} and {start}.")
    for i in range(start, start + num_images):
        rng = np.random.default_rng([seed, i])
        labels = sample_labels(1, spec, rng)[0]
        image = FAMILIES[spec.kind].draw(labels, spec.image_size, rng, spec.class_names)
        yield f"synth-{i:06d}", encode_jpeg(image), labels
