"""The embedded default input: synthetic scenes drawn on the fly, so the demo runs offline with no data set.

They look like photographs only in the ways VWT cares about: large flat or smoothly shaded areas (sky, walls,
ground) that match visual words, and textured, edged objects that do not. They carry no labels; with random
weights the demo shows the pipeline working, not accuracy.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter


def draw_scene(rng: np.random.Generator, size: int = 256) -> Image.Image:
    top, bottom = rng.uniform(40, 230, 3), rng.uniform(40, 230, 3)
    t = np.linspace(0.0, 1.0, size)[:, None, None]
    sky = (1 - t) * top + t * bottom
    img = np.broadcast_to(sky, (size, size, 3)).copy()
    horizon = int(rng.uniform(0.45, 0.8) * size)
    img[horizon:] = rng.uniform(30, 200, 3)
    im = Image.fromarray(img.astype(np.uint8))
    draw = ImageDraw.Draw(im)
    for _ in range(int(rng.integers(2, 6))):
        x0, y0 = rng.integers(0, size - 40, 2)
        w, h = rng.integers(24, size // 2, 2)
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        box = [int(x0), int(y0), int(x0 + w), int(y0 + h)]
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=colour, outline=(0, 0, 0), width=2)
    arr = np.asarray(im).astype(np.float32)
    y0 = int(rng.integers(0, size // 2))
    arr[y0 : y0 + size // 4, : size // 3] += rng.normal(0, 40, (len(arr[y0 : y0 + size // 4]), size // 3, 3))
    im = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    return im.filter(ImageFilter.GaussianBlur(0.6))


def write_demo_images(folder: str | Path, count: int = 32, size: int = 256, seed: int = 0) -> Path:
    """Write `count` synthetic PNG scenes to `folder` (kept if already there) and return it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        scene = draw_scene(rng, size)
        path = folder / f"scene_{i:03d}.png"
        if not path.exists():
            tmp = path.with_suffix(".tmp.png")
            scene.save(tmp)
            tmp.replace(path)
    return folder
