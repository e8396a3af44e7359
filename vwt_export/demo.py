"""The embedded default input: synthetic scenes drawn on the fly, so the demo runs offline with no data set.

What they are: procedural pictures (numpy and PIL only, deterministic from a seed) built to give VWT the
spread of work real photos give it. Each scene has a busyness b in [0, 1]: about that fraction of the frame
is textured (foliage-like noise at several scales, lines of text, gravel, bricks, striped cloth), the rest
is smooth (sky, walls, ground under a lighting gradient, with slight sensor noise); mixed scenes also hold a
few shaded objects with hard edges. Successive scenes take b from a golden-ratio sequence, so any run of
scenes covers [0, 1] evenly. With deit_s, inter mode, threshold 0.1 and a vocabulary learned on the scenes,
32 of them keep from about a tenth of the tokens (a wall, a clear sky) to nearly all (a page of text,
foliage), about 57% on average: close to the spread measured on a folder of real photos (20 to 197 of 197,
mean 116), which is what makes batching and the benchmarks honest. The scenes used before kept 22 to 76.

What they are not: photographs, nor a substitute for a calibration set. Their textures are noise and strokes,
not objects, and match real images only in what VWT's token counts depend on (how much of the frame is flat,
where the edges are); a real vocabulary, learned on other images, matches real photos differently. They
carry no labels; with random weights the demo shows the pipeline working, not accuracy.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from .atomic import atomic_path
from .errors import VWTError

GOLDEN = 0.6180339887498949  # successive multiples mod 1 fill [0, 1) evenly for any prefix length


def scene_busyness(seed: int, index: int) -> float:
    """The textured fraction of scene `index`: a golden-ratio sequence from a seed-dependent start."""
    start = np.random.default_rng([seed, 0x5EED]).random()
    return float((start + index * GOLDEN) % 1.0)


# -- building blocks ------------------------------------------------------------------------------------------


def _field(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Smooth noise [size, size] with unit std and features about size/cells pixels wide."""
    small = rng.standard_normal((cells + 1, cells + 1)).astype(np.float32)
    a = np.asarray(Image.fromarray(small).resize((size, size), Image.BICUBIC))
    return (a - a.mean()) / (a.std() + 1e-6)


def _fractal(rng: np.random.Generator, size: int, cells: tuple[int, ...], weights: tuple[float, ...]) -> np.ndarray:
    out = sum(w * _field(rng, size, c) for c, w in zip(cells, weights))
    return (out - out.mean()) / (out.std() + 1e-6)


def _colour(rng: np.random.Generator, lo: float = 0, hi: float = 255) -> np.ndarray:
    return rng.uniform(lo, hi, 3).astype(np.float32)


def _ramp(size: int, angle: float) -> np.ndarray:
    """A linear ramp in [-1, 1] across the frame along `angle`."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / (size - 1) * 2 - 1
    r = np.cos(angle) * x + np.sin(angle) * y
    return r / (np.abs(r).max() + 1e-6)


def _mix(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Blend colours a and b by t[size, size] in [0, 1]."""
    return a + (b - a) * t[..., None]


# -- smooth backgrounds: what visual words match --------------------------------------------------------------


GROUNDS = np.array([[95, 130, 60], [120, 100, 70], [150, 145, 135], [70, 100, 130], [190, 170, 130], [60, 60, 65]],
                   np.float32)  # grass, earth, concrete, water, sand, asphalt
WALLS = np.array([[225, 220, 205], [200, 190, 170], [170, 185, 195], [235, 235, 235], [150, 120, 95], [120, 135, 110]],
                 np.float32)  # cream, beige, pale blue, white, wood, sage


def _sky_and_ground(rng: np.random.Generator, size: int) -> np.ndarray:
    y = np.linspace(0.0, 1.0, size, dtype=np.float32)[:, None].repeat(size, 1)
    palette = rng.integers(3)
    if palette == 0:  # clear sky
        top = np.array([60, 110, 200]) + rng.uniform(-30, 30, 3)
        low = np.array([170, 200, 235]) + rng.uniform(-20, 20, 3)
    elif palette == 1:  # overcast
        g = rng.uniform(150, 235)
        top, low = np.full(3, g) + rng.uniform(-10, 10, 3), np.full(3, g + rng.uniform(-25, 15)) + rng.uniform(-8, 8, 3)
    else:  # dusk
        top, low = np.array([50, 60, 120]) + rng.uniform(-25, 25, 3), np.array([240, 160, 90]) + rng.uniform(-25, 15, 3)
    horizon = rng.uniform(0.35, 0.75)
    sky = _mix(top.astype(np.float32), low.astype(np.float32), np.clip(y / horizon, 0, 1) ** rng.uniform(0.6, 1.6))
    sky += 6 * _field(rng, size, 2)[..., None]  # haze
    ground_colour = GROUNDS[rng.integers(len(GROUNDS))] * rng.uniform(0.7, 1.25) + rng.uniform(-12, 12, 3)
    ground = ground_colour * (1 + 0.25 * _ramp(size, rng.uniform(0, np.pi))[..., None])
    return np.where((y < horizon)[..., None], sky, ground)


def _wall(rng: np.random.Generator, size: int) -> np.ndarray:
    """An indoor wall or floor: one colour under a broad light falloff."""
    base = WALLS[rng.integers(len(WALLS))] * rng.uniform(0.6, 1.05) + rng.uniform(-15, 15, 3)
    light = 1 + rng.uniform(0.05, 0.3) * _ramp(size, rng.uniform(0, 2 * np.pi)) + 0.05 * _field(rng, size, 2)
    return base * light[..., None]


# -- textures: what visual words do not match -----------------------------------------------------------------


def _foliage(rng: np.random.Generator, size: int) -> np.ndarray:
    """Leaves: bright and shadowed blobs at several scales (2 to 32 pixels)."""
    t = _fractal(rng, size, (size // 32, size // 8, size // 4, size // 2), (0.4, 0.7, 0.8, 0.5))
    t = 0.5 + 0.5 * np.tanh(1.6 * t)
    hue = rng.integers(3)
    leaves = np.array([[110, 170, 60], [200, 150, 50], [150, 160, 90]])  # green, autumn, olive
    light = leaves[hue] + rng.uniform(-25, 25, 3)
    dark = light * rng.uniform(0.12, 0.3)
    return _mix(dark.astype(np.float32), light.astype(np.float32), t)


def _gravel(rng: np.random.Generator, size: int) -> np.ndarray:
    """Sand, gravel, asphalt: a gradient under fine noise of one to four pixels."""
    base = GROUNDS[rng.integers(len(GROUNDS))] * rng.uniform(0.8, 1.2) + rng.uniform(-20, 20, 3)
    base = base * (1 + 0.2 * _ramp(size, rng.uniform(0, np.pi)))[..., None]
    grain = _fractal(rng, size, (size // 4, size // 2, size), (0.5, 0.8, 0.6))
    return base * (1 + rng.uniform(0.3, 0.5) * grain[..., None])


def _text(rng: np.random.Generator, size: int) -> np.ndarray:
    """A page, poster or sign: dense lines of letters (high-frequency strokes), dark on light or light on dark."""
    light, dark = rng.uniform(170, 250, 3), rng.uniform(0, 70, 3)
    ground, ink = (light, dark) if rng.random() < 0.6 else (dark, light)
    im = Image.new("RGB", (size, size), tuple(int(c) for c in ground))
    draw = ImageDraw.Draw(im)
    px = int(rng.integers(11, 21))
    try:
        font = ImageFont.load_default(size=px)
    except (TypeError, OSError):  # Pillow without FreeType: its fixed bitmap font
        font = ImageFont.load_default()
    letters = np.array(list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789    .,"))
    bold = int(rng.random() < 0.4)
    y = int(rng.integers(-px // 2, 1))
    while y < size:
        line = "".join(rng.choice(letters, 2 * size // px))
        draw.text((int(rng.integers(-px, 1)), y), line, fill=tuple(int(c) for c in ink), font=font, stroke_width=bold)
        y += int(px * rng.uniform(1.0, 1.3))
    return np.asarray(im, dtype=np.float32)


def _bricks(rng: np.random.Generator, size: int) -> np.ndarray:
    """Bricks or tiles: rows of jittered colours with mortar lines."""
    h = int(rng.integers(7, 18))
    w = int(h * rng.uniform(1.8, 3.2))
    base, mortar = _colour(rng, 80, 200), _colour(rng, 60, 220)
    out = np.empty((size, size, 3), np.float32)
    for r, y0 in enumerate(range(0, size, h)):
        shift = (w // 2) * (r % 2)
        for x0 in range(-shift, size, w):
            out[y0 : y0 + h, max(x0, 0) : x0 + w] = base + rng.uniform(-35, 35, 3)
        out[y0 : y0 + 2] = mortar
        for x0 in range(-shift, size, w):
            out[y0 : y0 + h, max(x0, 0) : max(x0 + 2, 0)] = mortar
    return out * (1 + 0.12 * _fractal(rng, size, (size // 2, size), (1, 1))[..., None])


def _weave(rng: np.random.Generator, size: int) -> np.ndarray:
    """Cloth, blinds, corrugated metal: stripes at an angle and a period that do not line up with patches."""
    a, period = rng.uniform(0, np.pi), rng.uniform(3.5, 11)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    s = np.sin(2 * np.pi * (np.cos(a) * x + np.sin(a) * y) / period)
    t = 0.5 + 0.35 * s + 0.15 * _field(rng, size, size // 2)
    return _mix(_colour(rng, 20, 120), _colour(rng, 130, 250), np.clip(t, 0, 1))


TEXTURES = (_foliage, _foliage, _gravel, _text, _bricks, _weave)  # foliage twice: outdoor scenes dominate


# -- objects: hard edges ----------------------------------------------------------------------------------------


def _objects(rng: np.random.Generator, img: np.ndarray, count: int, max_radius: float) -> np.ndarray:
    """Shaded spheres and boxes with dark outlines, and thin poles or wires, over the scene."""
    size = img.shape[0]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    for _ in range(count):
        colour = _colour(rng, 30, 240)
        cx, cy, r = rng.uniform(0, size), rng.uniform(0, size), rng.uniform(8, max(max_radius, 9))
        kind = rng.integers(3)
        if kind == 0:  # sphere lit from the upper left
            d2 = ((xx - cx) ** 2 + (yy - cy) ** 2) / r**2
            inside = d2 <= 1
            nz = np.sqrt(np.clip(1 - d2, 0, 1))
            shade = np.clip(0.35 + 0.65 * (-(xx - cx) / r * 0.5 - (yy - cy) / r * 0.5 + nz * 0.7), 0.15, 1.1)
            img = np.where(inside[..., None], colour * shade[..., None], img)
            ring = inside & (d2 > (1 - 2.5 / r) ** 2)
            img[ring] *= 0.3
        elif kind == 1:  # box with a lit and a shaded face
            w, h = r * rng.uniform(0.8, 1.6), r * rng.uniform(0.8, 1.6)
            x0, y0 = int(cx - w), int(cy - h)
            x1, y1, xm = int(cx + w), int(cy + h), int(cx + w * rng.uniform(-0.3, 0.5))
            img[max(y0, 0) : max(y1, 0), max(x0, 0) : max(xm, 0)] = colour
            img[max(y0, 0) : max(y1, 0), max(xm, 0) : max(x1, 0)] = colour * 0.55
            im = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
            ImageDraw.Draw(im).rectangle([x0, y0, x1, y1], outline=(20, 20, 20), width=2)
            img = np.asarray(im, dtype=np.float32).copy()
        else:  # pole, wire or frame: a thin dark line across the scene
            im = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
            ends = [tuple(int(v) for v in rng.uniform(0, size, 2)) for _ in range(2)]
            ImageDraw.Draw(im).line(ends, fill=tuple(int(c * 0.3) for c in colour), width=int(rng.integers(1, 5)))
            img = np.asarray(im, dtype=np.float32).copy()
    return img


# -- scenes -----------------------------------------------------------------------------------------------------


def _texture_mask(rng: np.random.Generator, size: int, busy: float) -> np.ndarray:
    """A soft mask covering about `busy` of the frame, in organic blobs that favour the lower half
    (foliage and ground under a smooth sky, as outdoors)."""
    if busy <= 0.0:
        return np.zeros((size, size), np.float32)
    if busy >= 1.0:
        return np.ones((size, size), np.float32)
    r = _field(rng, size, int(rng.integers(2, 6))) + rng.uniform(0.5, 2.0) * _ramp(size, np.pi / 2)
    hard = Image.fromarray(((r > np.quantile(r, 1.0 - busy)) * 255).astype(np.uint8))
    return np.asarray(hard.filter(ImageFilter.GaussianBlur(1.0)), dtype=np.float32) / 255


def draw_scene(rng: np.random.Generator, size: int = 256, busy: float | None = None) -> Image.Image:
    """One synthetic scene; `busy` (the textured fraction of the frame, 0 to 1) is drawn from `rng` if None."""
    busy = float(rng.random()) if busy is None else float(np.clip(busy, 0.0, 1.0))
    img = _sky_and_ground(rng, size) if rng.random() < 0.6 else _wall(rng, size)
    mask = _texture_mask(rng, size, busy)
    if mask.any():
        kinds = rng.choice(len(TEXTURES), size=int(rng.integers(1, 4)), replace=False)
        part = _field(rng, size, int(rng.integers(2, 5)))  # which texture goes where inside the mask
        edges = np.quantile(part, np.linspace(0, 1, len(kinds) + 1)[1:-1])
        which = np.searchsorted(edges, part)
        for j, k in enumerate(kinds):
            m = mask * (which == j)
            if m.any():
                img = _mix(img, TEXTURES[k](rng, size), m)
    # mixed scenes hold the most objects; flat ones (sky, a wall) and busy ones (smooth objects would hide the
    # texture) only one or none, and busy ones smaller
    count = int(rng.integers(0, 2 + round(8 * busy * (1 - busy))))
    img = _objects(rng, img, count, max_radius=size / 4 * (1 - 0.6 * busy))
    img = img + rng.normal(0, 2.5, img.shape)  # sensor noise, as in any photo
    im = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    return im.filter(ImageFilter.GaussianBlur(0.5))  # lens softness


def write_demo_images(folder: str | Path, count: int = 32, size: int = 256, seed: int = 0) -> Path:
    """Write `count` synthetic PNG scenes to `folder` and return it.

    Scene i depends only on (seed, i, size), so a folder written with a smaller count is a prefix of a larger
    one. Files already there are kept; new ones appear atomically (written aside, then renamed). 32 scenes of
    256 pixels take about a second.
    """
    if size < 16 or count < 0:
        raise VWTError(f"demo scenes need size >= 16 and count >= 0, got size={size}, count={count}")
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            path = folder / f"scene_{i:03d}.png"
            if path.exists():
                continue
            scene = draw_scene(np.random.default_rng([seed, i]), size, scene_busyness(seed, i))
            with atomic_path(path) as tmp:  # a hidden .tmp name, so an interrupted run leaves no half image to list
                scene.save(tmp, format="PNG", compress_level=1)  # fast; noisy scenes barely compress anyway
    except OSError as e:
        raise VWTError(f"{folder}: cannot write the demo scenes there ({e.strerror or e}); pass a writable --out") from None
    return folder
