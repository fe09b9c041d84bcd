"""Images of generated classes: each class is a shape (disc, star, ...) filled with a texture
(stripes, checker, ...) in a class-specific colour distribution, seen at a random pose on a
cluttered background among distractor shapes, so that only the combination names the class."""

import colorsys
import itertools
import math
from dataclasses import dataclass
from functools import lru_cache
from typing import NamedTuple

import numpy as np
from PIL import Image

# Shapes as approximate signed distances in the object's frame (radius 1): negative inside, so
# one clip turns them into antialiased coverage at any size.
_H = math.sqrt(3) / 2


def _polygon(u, v, normals: list[tuple[float, float]], apothem: float):
    return np.maximum.reduce([u * nx + v * ny for nx, ny in normals]) - apothem


def _five_lobes(u, v):
    # ((1 + cos 5θ) / 2)^2 with cos 5θ from cos θ by Chebyshev: no arctan2 on every pixel.
    c = u / (np.hypot(u, v) + 1e-6)
    return ((1 + c * (16 * c**4 - 20 * c**2 + 5)) / 2) ** 2


SHAPES = {
    "disc": lambda u, v: np.hypot(u, v) - 1,
    "ring": lambda u, v: np.abs(np.hypot(u, v) - 0.72) - 0.28,
    "square": lambda u, v: np.maximum(np.abs(u), np.abs(v)) - 0.8,
    "triangle": lambda u, v: _polygon(u, v, [(0, -1), (_H, 0.5), (-_H, 0.5)], 0.5),
    "star": lambda u, v: np.hypot(u, v) - 0.45 - 0.55 * _five_lobes(u, v),
    "cross": lambda u, v: np.minimum(
        np.maximum(np.abs(u) - 0.3, np.abs(v) - 1), np.maximum(np.abs(u) - 1, np.abs(v) - 0.3)
    ),
    "ellipse": lambda u, v: np.hypot(u, v / 0.55) - 1,
    "bar": lambda u, v: np.maximum(np.abs(u) - 1, np.abs(v) - 0.32),
    "diamond": lambda u, v: (np.abs(u) + np.abs(v) - 1) * 0.71,
    "hexagon": lambda u, v: _polygon(np.abs(u), np.abs(v), [(1, 0), (0.5, _H), (-0.5, _H)], 0.87),
    "crescent": lambda u, v: np.maximum(np.hypot(u, v) - 1, 0.8 - np.hypot(u - 0.5, v)),
    "semicircle": lambda u, v: np.maximum(np.hypot(u, v) - 1, -v - 0.3),
}


def _stripes(periods, rng: np.random.Generator):
    # A sharpened sine at a random phase: crisp bands whose edges stay antialiased.
    return np.clip(0.5 + 1.5 * np.sin(2 * np.pi * periods + rng.uniform(0, 2 * np.pi)), 0, 1)


def _dots(a, b, cycles, rng):
    # Distance to the nearest point of a square lattice, softly thresholded.
    fa, fb = ((cycles * c + rng.random()) % 1 - 0.5 for c in (a, b))
    return np.clip((0.3 - np.hypot(fa, fb)) * 10, 0, 1)


def _mosaic(a, b, cycles, rng):
    # A random value per cell of a 6 x 6 grid, tiled (% wraps negative cells too).
    cells = rng.random((6, 6), dtype=np.float32)
    row, column = (np.floor(cycles * c).astype(int) % 6 for c in (b, a))
    return cells[row, column]


# Textures in a frame of radius units: values in [0, 1] blend the two colours of the object.
TEXTURES = {
    "solid": lambda a, b, cycles, rng: np.zeros_like(a),
    "stripes": lambda a, b, cycles, rng: _stripes(cycles * a, rng),
    "checker": lambda a, b, cycles, rng: np.abs(
        _stripes(cycles * a, rng) - _stripes(cycles * b, rng)
    ),
    "dots": _dots,
    "mosaic": _mosaic,
    "gradient": lambda a, b, cycles, rng: np.clip(0.5 + 0.5 * a, 0, 1),
    "rings": lambda a, b, cycles, rng: _stripes(cycles * np.hypot(a, b), rng),
    "waves": lambda a, b, cycles, rng: _stripes(cycles * a + 0.3 * np.sin(np.pi * cycles * b), rng),
}
HUE_BINS = 12
MAX_CLASSES = len(SHAPES) * len(TEXTURES) * HUE_BINS  # 1152: one class per combination at most


@dataclass(frozen=True)
class ClassLook:
    shape: str  # a key of SHAPES
    texture: str  # a key of TEXTURES
    hue: float  # centre of the class's hue distribution, in [0, 1)
    hue_spread: float  # standard deviation of the hue from image to image
    saturation: float
    value: float
    accent_hue: float  # the texture's second colour: hue shift from the first ...
    accent_value: float  # ... and its value as a fraction of the first's
    texture_angle: float  # radians in the image frame, so stripes keep their class's direction
    texture_cycles: float  # texture periods per object radius


def class_looks(num_classes: int, seed: int) -> list[ClassLook]:
    """The looks of num_classes classes, the same for the same seed."""
    if not 2 <= num_classes <= MAX_CLASSES:
        raise ValueError(f"num_classes={num_classes}: the generator makes 2 to {MAX_CLASSES}")
    rng = np.random.default_rng(seed)
    # Distinct (shape, texture, hue bin) triples drawn at random: at many classes each shape,
    # texture and hue recurs in several classes, so only their combination tells classes apart.
    combos = list(itertools.product(SHAPES, TEXTURES, range(HUE_BINS)))
    chosen = rng.choice(len(combos), size=num_classes, replace=False)
    return [_look(*combos[i], rng) for i in chosen]


def _look(shape: str, texture: str, hue_bin: int, rng: np.random.Generator) -> ClassLook:
    return ClassLook(
        shape=shape,
        texture=texture,
        hue=(hue_bin + rng.uniform(-0.3, 0.3)) / HUE_BINS % 1.0,
        hue_spread=rng.uniform(0.01, 0.04),
        saturation=rng.uniform(0.45, 0.95),
        value=rng.uniform(0.55, 0.95),
        accent_hue=rng.uniform(-0.5, 0.5),
        accent_value=rng.uniform(0.2, 0.8),
        texture_angle=rng.uniform(0, np.pi),
        texture_cycles=rng.uniform(1.0, 2.2),
    )


class _Sprite(NamedTuple):
    shape: str
    texture: str
    colours: tuple[np.ndarray, np.ndarray]  # at texture 0 and 1
    centre: tuple[float, float]  # pixels (x, y)
    radius: float  # pixels
    rotation: float
    aspect: float
    texture_angle: float
    texture_cycles: float


def render(look: ClassLook, rng: np.random.Generator, size: int) -> Image.Image:
    """One RGB image (mode "RGB", size x size pixels) of the class with this look; every random
    choice is drawn from rng, so the same rng state gives the same image."""
    canvas = _background(rng, size)
    main = _class_sprite(look, rng, size)
    # Distractors behind the object may be large, as it partly hides them; those in front are
    # small, so they hide at most part of it.
    behind, in_front = [], []
    for _ in range(rng.integers(1, 4)):
        if rng.random() < 0.5:
            behind.append(_random_sprite(rng, size, main.radius * rng.uniform(0.5, 0.9)))
        else:
            in_front.append(_random_sprite(rng, size, main.radius * rng.uniform(0.25, 0.5)))
    for sprite in [*behind, main, *in_front]:
        _draw(canvas, sprite, rng)
    contrast, brightness = rng.uniform(0.7, 1.2), rng.uniform(-0.12, 0.12)
    canvas = (canvas - 0.5) * contrast + 0.5 + brightness
    canvas += rng.standard_normal(canvas.shape, dtype=np.float32) * rng.uniform(0.02, 0.08)
    return Image.fromarray((np.clip(canvas, 0, 1) * 255 + 0.5).astype(np.uint8))


def _hsv(hue: float, saturation: float, value: float) -> np.ndarray:
    rgb = colorsys.hsv_to_rgb(hue % 1.0, min(max(saturation, 0), 1), min(max(value, 0), 1))
    return np.array(rgb, dtype=np.float32)


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    return _hsv(rng.random(), rng.uniform(0, 1), rng.uniform(0.15, 1))


def _class_sprite(look: ClassLook, rng: np.random.Generator, size: int) -> _Sprite:
    hue = look.hue + rng.normal(0, look.hue_spread)
    saturation = look.saturation + rng.normal(0, 0.07)
    value = look.value + rng.normal(0, 0.07)
    radius = size * rng.uniform(0.2, 0.32)
    # The centre stays far enough in that at most a sliver of the object leaves the frame.
    low, high = 0.75 * radius, size - 0.75 * radius
    return _Sprite(
        shape=look.shape,
        texture=look.texture,
        colours=(
            _hsv(hue, saturation, value),
            _hsv(hue + look.accent_hue, saturation, value * look.accent_value),
        ),
        centre=(rng.uniform(low, high), rng.uniform(low, high)),
        radius=radius,
        rotation=rng.uniform(0, 2 * np.pi),
        aspect=math.exp(rng.uniform(-0.2, 0.2)),
        texture_angle=look.texture_angle + rng.normal(0, 0.15),
        texture_cycles=look.texture_cycles * math.exp(rng.normal(0, 0.1)),
    )


def _random_sprite(rng: np.random.Generator, size: int, radius: float) -> _Sprite:
    return _Sprite(
        shape=rng.choice(list(SHAPES)),
        texture=rng.choice(list(TEXTURES)),
        colours=(_random_colour(rng), _random_colour(rng)),
        centre=(rng.uniform(0, size), rng.uniform(0, size)),
        radius=radius,
        rotation=rng.uniform(0, 2 * np.pi),
        aspect=math.exp(rng.uniform(-0.2, 0.2)),
        texture_angle=rng.uniform(0, np.pi),
        texture_cycles=rng.uniform(1.0, 2.2),
    )


def _draw(canvas: np.ndarray, sprite: _Sprite, rng: np.random.Generator) -> None:
    size = canvas.shape[0]
    (cx, cy), r = sprite.centre, sprite.radius
    reach = 1.5 * r * max(sprite.aspect, 1 / sprite.aspect) + 1  # every shape lies within
    x0, x1 = max(int(cx - reach), 0), min(int(cx + reach) + 1, size)
    y0, y1 = max(int(cy - reach), 0), min(int(cy + reach) + 1, size)
    if x0 >= x1 or y0 >= y1:
        return
    x, y = _offsets(x0, x1, cx), _offsets(y0, y1, cy)[:, None]
    cos, sin = math.cos(sprite.rotation), math.sin(sprite.rotation)
    u = (x * cos + y * sin) / (r * sprite.aspect)
    v = (y * cos - x * sin) * (sprite.aspect / r)
    # The distance is in radius units; times the radius it is in pixels: a one-pixel soft edge.
    alpha = np.clip(0.5 - SHAPES[sprite.shape](u, v) * r, 0, 1)[..., None]
    first, second = sprite.colours
    region = canvas[y0:y1, x0:x1]
    region += alpha * (first + _texture(sprite, x, y, rng) * (second - first) - region)


def _offsets(start: int, stop: int, centre: float) -> np.ndarray:
    # Pixel centres relative to a sprite's centre; float32 (with Python-float factors) is faster.
    return np.arange(start, stop, dtype=np.float32) + (0.5 - centre)


def _texture(sprite: _Sprite, x: np.ndarray, y: np.ndarray, rng: np.random.Generator):
    # In a frame turned by the texture's own angle, not the shape's, and scaled to the radius.
    cos, sin = math.cos(sprite.texture_angle), math.sin(sprite.texture_angle)
    a, b = (x * cos + y * sin) / sprite.radius, (y * cos - x * sin) / sprite.radius
    return TEXTURES[sprite.texture](a, b, sprite.texture_cycles, rng)[..., None]


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    # A smooth field of colours around a random base, overlaid at low contrast with a texture
    # of the objects' own vocabulary, so texture is no cue unless it is on the object.
    grid = int(rng.integers(2, 5))
    field = _random_colour(rng) + rng.normal(0, 0.2, (grid, grid, 3)).astype(np.float32)
    up = _upsampler(size, grid)
    canvas = np.einsum("yi,ijc,xj->yxc", up, field, up, optimize=True)
    pattern = _random_sprite(rng, size, size * rng.uniform(0.15, 0.4))
    (cx, cy), full = pattern.centre, (0, size)
    mix = _texture(pattern, _offsets(*full, cx), _offsets(*full, cy)[:, None], rng)
    canvas += rng.uniform(0.1, 0.5) * mix * (pattern.colours[0] - canvas)
    return canvas


@lru_cache(maxsize=64)
def _upsampler(size: int, grid: int) -> np.ndarray:
    # Bilinear interpolation from grid points spanning the frame to size pixels, as a matrix.
    position = np.linspace(0, grid - 1, size, dtype=np.float32)
    left = np.minimum(position.astype(int), grid - 2)
    weights = np.zeros((size, grid), dtype=np.float32)
    weights[np.arange(size), left] = 1 - (position - left)
    weights[np.arange(size), left + 1] = position - left
    return weights
