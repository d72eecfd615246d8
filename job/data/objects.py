"""Drawing one "objects" image: small shapes at random places and sizes on a cluttered background.

Why a second family: in the landscape scenes a label's evidence (a purple sky, a blue band)
spans the whole picture, so a network that only sees colour and texture already wins. Real
photos are not like that: an object covers a part of the image, anywhere, at any size, among
clutter. Here each label is a shape (circle, square, ...), drawn 1 to 3 times per image at
about a quarter of the image side, in a random colour (colour says nothing about the label),
slightly rotated, over a background of gradients, lines and specks that belong to no label.
A model must see a shape's outline to name it, which takes depth and receptive field.

Orientation matters for one label: `arrow` always points right, so a left-right flip turns it
into something the data set never calls an arrow (docs/data.md says which augmentations keep
which labels).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

OBJECT_CLASS_NAMES: tuple[str, ...] = (
    "circle",
    "square",
    "triangle",
    "cross",
    "star",
    "ring",
    "diamond",
    "hexagon",
    "arrow",
    "crescent",
)
# Drawn at this size or larger, then box-filtered down: smooth edges at small sizes.
_MIN_DRAW_SIZE = 128
# Object side as a share of the image side.
_SIZE_RANGE = (0.22, 0.34)
# Rotation in degrees: small, so a square never turns into the diamond.
_MAX_ROTATION = 12.0


def draw_objects(
    labels: np.ndarray,
    image_size: int,
    rng: np.random.Generator,
    class_names: Sequence[str] = OBJECT_CLASS_NAMES,
) -> np.ndarray:
    """Draw one image showing exactly the shapes named by `labels`.

    Args:
        labels: (k,) multi-hot vector in `class_names` order.
        image_size: output height and width in pixels.
        rng: the random source for placement, colour, clutter and noise.
        class_names: the label order of `labels` (a subset of OBJECT_CLASS_NAMES).
    Returns:
        (image_size, image_size, 3) uint8 RGB image.
    """
    size = max(image_size, _MIN_DRAW_SIZE)
    image = _background(size, rng)
    draw = ImageDraw.Draw(image)
    shapes = [name for name, present in zip(class_names, np.asarray(labels).ravel()) if present]
    for name, (cx, cy, side) in zip(shapes, _places(len(shapes), size, rng)):
        colour = _vivid_colour(rng)
        angle = math.radians(rng.uniform(-_MAX_ROTATION, _MAX_ROTATION))
        _SHAPES[name](draw, cx, cy, side / 2.0, angle, colour)
    if size != image_size:
        image = image.resize((image_size, image_size), Image.Resampling.BOX)
    pixels = np.asarray(image).astype(np.int16) + rng.integers(-6, 7, size=(image_size, image_size, 3))
    return np.clip(pixels, 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- layout


def _places(count: int, size: int, rng: np.random.Generator) -> list[tuple[float, float, float]]:
    """(centre x, centre y, side) for each object, kept inside the image and mostly apart."""
    placed: list[tuple[float, float, float]] = []
    for _ in range(count):
        best = None
        for _attempt in range(30):  # the first candidate that overlaps no earlier object wins
            side = size * rng.uniform(*_SIZE_RANGE)
            half = side / 2.0
            cx, cy = rng.uniform(half, size - half, size=2)
            gap = min((math.hypot(cx - x, cy - y) - (half + s / 2.0) for x, y, s in placed), default=size)
            if best is None or gap > best[0]:
                best = (gap, (cx, cy, side))
            if gap > 0:
                break
        placed.append(best[1])
    return placed


def _background(size: int, rng: np.random.Generator) -> Image.Image:
    """A two-colour gradient with lines and specks: clutter that belongs to no label."""
    top, bottom = rng.integers(40, 216, size=(2, 3))
    ramp = np.linspace(0.0, 1.0, size)[:, None, None]
    pixels = (top * (1 - ramp) + bottom * ramp) * np.ones((1, size, 1))
    image = Image.fromarray(pixels.astype(np.uint8))
    draw = ImageDraw.Draw(image)
    muted = lambda: tuple(int(v) for v in rng.integers(60, 200, size=3))  # noqa: E731
    for _ in range(int(rng.integers(3, 7))):
        x0, y0, x1, y1 = rng.uniform(0, size, size=4)
        draw.line([(x0, y0), (x1, y1)], fill=muted(), width=int(rng.integers(1, max(2, size // 64) + 1)))
    for _ in range(int(rng.integers(10, 25))):
        x, y = rng.uniform(0, size, size=2)
        r = rng.uniform(1, size / 48)
        draw.ellipse([x - r, y - r, x + r, y + r], fill=muted())
    return image


def _vivid_colour(rng: np.random.Generator) -> tuple[int, int, int]:
    """A saturated colour of random hue, so colour carries no label information."""
    hue = rng.uniform(0, 6)
    k = np.array([5.0, 3.0, 1.0])
    channel = 1 - np.clip(np.minimum(np.mod(k + hue, 6), 4 - np.mod(k + hue, 6)), 0, 1)
    value = rng.uniform(0.75, 1.0)
    return tuple(int(255 * value * (1 - 0.85 * c)) for c in channel)


# --------------------------------------------------------------------------- shapes


def _rotate(points, cx: float, cy: float, angle: float) -> list[tuple[float, float]]:
    cos, sin = math.cos(angle), math.sin(angle)
    return [(cx + x * cos - y * sin, cy + x * sin + y * cos) for x, y in points]


def _regular(n: int, r: float, phase: float = 0.0) -> list[tuple[float, float]]:
    return [(r * math.cos(phase + 2 * math.pi * i / n), r * math.sin(phase + 2 * math.pi * i / n)) for i in range(n)]


def _star(r: float) -> list[tuple[float, float]]:
    """Five points and five inner corners, alternating."""
    outer, inner = _regular(5, r, -math.pi / 2), _regular(5, r * 0.42, -math.pi / 2 + math.pi / 5)
    return [corner for pair in zip(outer, inner) for corner in pair]


def _polygon(points):
    def paint(draw, cx, cy, r, angle, colour):
        draw.polygon(_rotate(points(r), cx, cy, angle), fill=colour)

    return paint


def _circle(draw, cx, cy, r, angle, colour):
    draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)


def _ring(draw, cx, cy, r, angle, colour):
    draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=colour, width=max(2, int(r * 0.35)))


def _crescent(draw, cx, cy, r, angle, colour):
    # A disc with a disc of the background cut out of one side, drawn as a polygon so the
    # clutter under the cut stays visible.
    outer = [(r * math.cos(t), r * math.sin(t)) for t in np.linspace(-math.pi / 2, math.pi / 2, 24)]
    inner = [(0.35 * r * math.cos(t), r * math.sin(t)) for t in np.linspace(math.pi / 2, -math.pi / 2, 24)]
    draw.polygon(_rotate(outer + inner, cx, cy, angle), fill=colour)


_SHAPES = {
    "circle": _circle,
    "ring": _ring,
    "crescent": _crescent,
    "square": _polygon(lambda r: [(-r * 0.8, -r * 0.8), (r * 0.8, -r * 0.8), (r * 0.8, r * 0.8), (-r * 0.8, r * 0.8)]),
    "diamond": _polygon(lambda r: [(0, -r), (r * 0.7, 0), (0, r), (-r * 0.7, 0)]),
    "triangle": _polygon(lambda r: _regular(3, r, -math.pi / 2)),
    "hexagon": _polygon(lambda r: _regular(6, r)),
    "star": _polygon(lambda r: _star(r)),
    "cross": _polygon(
        lambda r: [
            (-0.3 * r, -r),
            (0.3 * r, -r),
            (0.3 * r, -0.3 * r),
            (r, -0.3 * r),
            (r, 0.3 * r),
            (0.3 * r, 0.3 * r),
            (0.3 * r, r),
            (-0.3 * r, r),
            (-0.3 * r, 0.3 * r),
            (-r, 0.3 * r),
            (-r, -0.3 * r),
            (-0.3 * r, -0.3 * r),
        ]
    ),
    "arrow": _polygon(
        lambda r: [
            (-r, -0.22 * r),
            (0.15 * r, -0.22 * r),
            (0.15 * r, -0.6 * r),
            (r, 0),
            (0.15 * r, 0.6 * r),
            (0.15 * r, 0.22 * r),
            (-r, 0.22 * r),
        ]
    ),
}
