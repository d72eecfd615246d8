"""Drawing one landscape scene that shows exactly its labels (see `synthetic` for the why).

- sky: a blue gradient by default; `sunset` makes it purple -> red -> orange with a low sun;
- `mountains`: grey/brown jagged peaks on the horizon, sometimes snow-capped;
- `sea`: a blue band below the horizon with light wave strokes;
- `desert`: sandy yellow ground with dune curves (with `sea` the ground splits: a beach);
- `trees`: green canopies on brown trunks, standing on land;
- otherwise the ground is a dull olive steppe that carries no label.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

from job.data.labels import DEFAULT_CLASS_NAMES

# Scenes are drawn at this size or more, then box-downsampled: small images get smooth,
# antialiased edges that survive JPEG, at little cost because they are small.
_MIN_DRAW_SIZE = 128


def draw_scene(
    labels: np.ndarray,
    image_size: int,
    rng: np.random.Generator,
    class_names: Sequence[str] = DEFAULT_CLASS_NAMES,
) -> np.ndarray:
    """Draw one scene showing exactly the given labels.

    Args:
        labels: (k,) multi-hot vector in `class_names` order.
        image_size: output height and width in pixels.
        rng: the random source for all jitter and noise.
        class_names: the label order of `labels` (a subset of the five drawable labels).

    Returns:
        (image_size, image_size, 3) uint8 RGB image.
    """
    has = {name: bool(v) for name, v in zip(class_names, np.asarray(labels).ravel())}
    draw_size = max(image_size, _MIN_DRAW_SIZE)
    scene = _Scene(draw_size, rng, sunset=has.get("sunset", False))
    scene.paint_sky()
    if has.get("mountains", False):
        scene.paint_mountains()
    scene.paint_ground(sea=has.get("sea", False), desert=has.get("desert", False), trees=has.get("trees", False))
    if has.get("trees", False):
        scene.paint_trees()
    image = scene.image
    if draw_size != image_size:
        image = image.resize((image_size, image_size), Image.Resampling.BOX)
    return _add_noise(np.asarray(image), rng)


def _jitter(base: Sequence[float], spread: float, rng: np.random.Generator) -> tuple[int, ...]:
    """A colour near `base`: each channel moved by up to +-spread, clipped to 0..255."""
    values = np.asarray(base, dtype=np.float64) + rng.uniform(-spread, spread, size=3)
    return tuple(int(v) for v in np.clip(values, 0, 255))


def _scale(colour: Sequence[int], factors: Sequence[float]) -> tuple[int, ...]:
    """Multiply a colour channel-wise (e.g. the warm, dim light of a sunset)."""
    return tuple(int(min(255, c * f)) for c, f in zip(colour, factors))


# Sunset light: warmer and dimmer; applied to everything under the sky.
_SUNSET_LIGHT = (1.0, 0.82, 0.78)
_DAY_LIGHT = (1.0, 1.0, 1.0)


class _Scene:
    """One canvas being painted back to front: sky, sun, mountains, ground, trees."""

    def __init__(self, size: int, rng: np.random.Generator, sunset: bool) -> None:
        self.size = size
        self.rng = rng
        self.sunset = sunset
        self.light = _SUNSET_LIGHT if sunset else _DAY_LIGHT
        # The horizon never rises above mid-height, so "top half" is always sky.
        self.horizon = int(size * rng.uniform(0.5, 0.62))
        self.image = Image.new("RGB", (size, size))
        self.draw = ImageDraw.Draw(self.image)
        self.shore = None  # (x at horizon, x at bottom, land on the left?) when ground splits

    # -- sky ---------------------------------------------------------------------------

    def paint_sky(self) -> None:
        """Blue gradient by day; purple -> red -> orange at sunset, with a low sun."""
        rng, h = self.rng, self.horizon
        if self.sunset:
            stops = [_jitter((75, 40, 120), 20, rng), _jitter((215, 80, 75), 20, rng), _jitter((250, 165, 70), 12, rng)]
        else:
            stops = [
                _jitter((45, 95, 195), 20, rng),
                _jitter((105, 155, 225), 15, rng),
                _jitter((165, 205, 240), 12, rng),
            ]
        t = np.linspace(0.0, 1.0, h)[:, None]
        stops_arr = np.asarray(stops, dtype=np.float64)
        rows = np.where(
            t < 0.5,
            stops_arr[0] + (stops_arr[1] - stops_arr[0]) * (t / 0.5),
            stops_arr[1] + (stops_arr[2] - stops_arr[1]) * ((t - 0.5) / 0.5),
        )
        sky = np.broadcast_to(rows[:, None, :], (h, self.size, 3)).astype(np.uint8)
        self.image.paste(Image.fromarray(np.ascontiguousarray(sky)), (0, 0))
        self._paint_clouds()
        self._paint_sun()

    def _paint_clouds(self) -> None:
        """A few soft clouds high up; they appear with and without sunset (not a cue)."""
        rng, s = self.rng, self.size
        colour = (240, 175, 170) if self.sunset else (245, 245, 250)
        for _ in range(rng.integers(0, 3)):
            cx, cy = rng.uniform(0, s), rng.uniform(0.06, 0.22) * s
            w, hh = rng.uniform(0.08, 0.16) * s, rng.uniform(0.025, 0.045) * s
            for dx in (-w * 0.5, 0.0, w * 0.5):
                self.draw.ellipse(
                    (cx + dx - w * 0.5, cy - hh, cx + dx + w * 0.5, cy + hh), fill=_jitter(colour, 8, rng)
                )

    def _paint_sun(self) -> None:
        """Sunset: a big orange-yellow disc with a glow near the horizon; day: sometimes a
        small pale sun high up, so 'a sun' alone is not the sunset cue."""
        rng, s = self.rng, self.size
        if self.sunset:
            r = rng.uniform(0.06, 0.1) * s
            cx, cy = rng.uniform(0.2, 0.8) * s, self.horizon - r * rng.uniform(-0.3, 1.2)
            self.sun_x = cx
            glow = r * 1.6
            self.draw.ellipse((cx - glow, cy - glow, cx + glow, cy + glow), fill=_jitter((250, 150, 80), 10, rng))
            disc = _jitter((255, 225, 130), 12, rng)
            self.draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=disc)
        elif rng.random() < 0.3:
            r = rng.uniform(0.03, 0.05) * s
            cx, cy = rng.uniform(0.1, 0.9) * s, rng.uniform(0.08, 0.2) * s
            self.draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=(255, 250, 225))

    # -- mountains ---------------------------------------------------------------------

    def paint_mountains(self) -> None:
        """2-4 jagged grey/brown peaks on the horizon, taller ones behind, some snow-capped."""
        rng, s, h = self.rng, self.size, self.horizon
        base = (128, 122, 118) if rng.random() < 0.5 else (122, 106, 92)
        peaks = [  # (apex x, height, half base width)
            (rng.uniform(0.0, 1.0) * s, rng.uniform(0.15, 0.33) * s, rng.uniform(0.16, 0.3) * s)
            for _ in range(rng.integers(2, 5))
        ]
        for x, height, half in sorted(peaks, key=lambda p: -p[1]):
            top = (x, h - height)
            # A kink halfway down each flank makes the ridge jagged instead of a clean triangle.
            left = (x - half * rng.uniform(0.35, 0.65), h - height * rng.uniform(0.35, 0.65))
            right = (x + half * rng.uniform(0.35, 0.65), h - height * rng.uniform(0.35, 0.65))
            # Sunset peaks are darker and purplish, like silhouettes against the glow.
            light = (0.8, 0.72, 0.78) if self.sunset else _DAY_LIGHT
            colour = _scale(_jitter(base, 14, rng), light)
            self.draw.polygon([(x - half, h + 1), left, top, right, (x + half, h + 1)], fill=colour)
            if rng.random() < 0.5:
                self._paint_snow_cap(top, left, right)

    def _paint_snow_cap(self, top, left, right) -> None:
        """White (pink at sunset) cap over the upper third of a peak."""
        f = self.rng.uniform(0.3, 0.45)
        cap = [top, _lerp(top, right, f), _lerp(top, (top[0], right[1]), f * 0.8), _lerp(top, left, f)]
        self.draw.polygon(cap, fill=(245, 205, 205) if self.sunset else (242, 244, 248))

    # -- ground ------------------------------------------------------------------------

    def paint_ground(self, sea: bool, desert: bool, trees: bool) -> None:
        """Sea, sand, or neutral steppe below the horizon; sea plus land splits at a shore."""
        rng, s, h = self.rng, self.size, self.horizon
        # The steppe is khaki-grey, never green, so green stays the trees' signature.
        land_colour = (222, 192, 122) if desert else (126, 122, 98)
        self.draw.rectangle((0, h, s, s), fill=_scale(_jitter(land_colour, 8, rng), self.light))
        if desert:
            self._paint_dunes()
        else:
            self._paint_steppe_texture()
        if not sea:
            return
        if desert or trees:
            # Land is needed (a beach, or ground for trees): a diagonal shoreline.
            land_left = rng.random() < 0.5
            land_share = rng.uniform(0.25, 0.5)
            x_top = rng.uniform(0.15, 0.45) * s
            x_bottom = x_top + land_share * s
            if not land_left:
                x_top, x_bottom = s - x_top, s - x_bottom
            self.shore = (x_top, x_bottom, land_left)
            sea_polygon = (
                [(x_top, h), (s, h), (s, s), (x_bottom, s)]
                if land_left
                else [(0, h), (x_top, h), (x_bottom, s), (0, s)]
            )
        else:
            sea_polygon = [(0, h), (s, h), (s, s), (0, s)]
        self.draw.polygon(sea_polygon, fill=_scale(_jitter((35, 85, 165), 14, rng), self.light))
        self._paint_waves()

    def _paint_dunes(self) -> None:
        """2-3 overlapping dune crests: sine-shaped, alternately lighter and darker sand."""
        rng, s, h = self.rng, self.size, self.horizon
        xs = np.linspace(0, s, 24)
        for i in range(rng.integers(2, 4)):
            crest = h + (s - h) * rng.uniform(0.15, 0.7)
            ys = crest + (s - h) * 0.12 * np.sin(xs / s * rng.uniform(3, 7) + rng.uniform(0, 6))
            shade = (232, 204, 138) if i % 2 == 0 else (205, 170, 102)
            fill = _scale(_jitter(shade, 10, rng), self.light)
            points = list(zip(xs, ys)) + [(s, s), (0, s)]
            self.draw.polygon(points, fill=fill)
            ridge = _scale((180, 140, 80), self.light)
            self.draw.line(list(zip(xs, ys)), fill=ridge, width=max(1, s // 64))

    def _paint_steppe_texture(self) -> None:
        """A few darker horizontal smudges so the neutral ground is not a flat block."""
        rng, s, h = self.rng, self.size, self.horizon
        for _ in range(rng.integers(3, 7)):
            y = rng.uniform(h, s)
            x, w = rng.uniform(0, s), rng.uniform(0.1, 0.3) * s
            colour = _scale(_jitter((104, 102, 80), 6, rng), self.light)
            self.draw.line((x, y, x + w, y), fill=colour, width=max(1, s // 48))

    def _paint_waves(self) -> None:
        """Light short strokes over the sea, plus the sun's reflection at sunset."""
        rng, s, h = self.rng, self.size, self.horizon
        width = max(1, s // 64)
        for _ in range(rng.integers(8, 14)):
            y = rng.uniform(h + 2, s - 1)
            lo, hi = self._sea_span(y)
            if hi - lo < 4:
                continue
            length = rng.uniform(0.06, 0.14) * s * (0.5 + (y - h) / (s - h))
            x = rng.uniform(lo, max(lo, hi - length))
            colour = _scale(_jitter((150, 195, 235), 15, rng), self.light)
            self.draw.line((x, y, x + length, y), fill=colour, width=width)
        if self.sunset:
            for i in range(4):
                y = h + (i + 1) * (s - h) * 0.12
                lo, hi = self._sea_span(y)
                half = s * 0.05 * (1 - i * 0.2)
                x0, x1 = max(lo, self.sun_x - half), min(hi, self.sun_x + half)
                if x1 > x0:
                    self.draw.line((x0, y, x1, y), fill=(250, 180, 100), width=width)

    def _sea_span(self, y: float) -> tuple[float, float]:
        """The x range covered by sea at height y (all of it unless there is a shore)."""
        if self.shore is None:
            return 0.0, float(self.size)
        x = self._shore_x(y)
        return (x, float(self.size)) if self.shore[2] else (0.0, x)

    def _shore_x(self, y: float) -> float:
        """Where the shoreline crosses height y."""
        x_top, x_bottom, _ = self.shore
        return x_top + (x_bottom - x_top) * (y - self.horizon) / (self.size - self.horizon)

    # -- trees -------------------------------------------------------------------------

    def paint_trees(self) -> None:
        """2-5 trees on land, nearer ones lower, bigger and drawn last; round or conifer."""
        rng, s, h = self.rng, self.size, self.horizon
        bases = np.sort(rng.uniform(h + 0.1 * (s - h), s - 0.02 * s, size=rng.integers(2, 6)))
        for base_y in bases:
            depth = (base_y - h) / (s - h)
            height = s * (0.17 + 0.22 * depth) * rng.uniform(0.85, 1.15)
            x = self._land_x(base_y)
            trunk_w = max(1.5, height * 0.09)
            trunk = _scale(_jitter((105, 68, 38), 10, rng), self.light)
            canopy = _scale(_jitter((45, 128, 45), 18, rng), self.light)
            self.draw.rectangle((x - trunk_w / 2, base_y - height * 0.55, x + trunk_w / 2, base_y), fill=trunk)
            if rng.random() < 0.6:
                r = height * rng.uniform(0.27, 0.33)
                cy = base_y - height + r
                self.draw.ellipse((x - r * 1.1, cy - r, x + r * 1.1, cy + r), fill=canopy)
            else:
                half = height * 0.26
                self.draw.polygon(
                    [(x, base_y - height), (x + half, base_y - height * 0.3), (x - half, base_y - height * 0.3)],
                    fill=canopy,
                )

    def _land_x(self, y: float) -> float:
        """A random x on land at height y (away from the sea when there is a shore)."""
        if self.shore is None:
            return self.rng.uniform(0.05, 0.95) * self.size
        x = self._shore_x(y)
        lo, hi = (0.0, x) if self.shore[2] else (x, float(self.size))
        margin = min(0.04 * self.size, (hi - lo) / 3)
        return self.rng.uniform(lo + margin, hi - margin)


def _lerp(p, q, f: float) -> tuple[float, float]:
    """The point a fraction f of the way from p to q."""
    return (p[0] + (q[0] - p[0]) * f, p[1] + (q[1] - p[1]) * f)


def _add_noise(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Global brightness jitter plus Gaussian pixel noise, so no two skies are identical."""
    brightness = rng.uniform(0.9, 1.1)
    sigma = rng.uniform(3.0, 7.0)
    noise = rng.standard_normal(image.shape, dtype=np.float32) * sigma
    noisy = image.astype(np.float32) * brightness + noise
    return np.clip(noisy, 0, 255).astype(np.uint8)
