"""Image folders: listing, decoding and batching with the model's own preprocessing."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch
from PIL import Image, UnidentifiedImageError

from .errors import VWTError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".pgm", ".tif", ".tiff", ".gif")


def list_images(folder: str | os.PathLike) -> list[Path]:
    """All image files below `folder` (recursively, sorted), or a clear error if there are none."""
    folder = Path(folder)
    if not folder.exists():
        raise VWTError(f"{folder}: no such folder; pass a folder of images")
    if not folder.is_dir():
        raise VWTError(f"{folder}: not a folder; pass a folder of images")
    try:
        files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    except PermissionError as e:
        raise VWTError(f"{folder}: cannot be read ({e.strerror}); check its permissions") from None
    if not files:
        raise VWTError(
            f"{folder}: no images found (looked recursively for {', '.join(IMAGE_EXTENSIONS)}); "
            "pass a folder that holds images"
        )
    return files


def readable_images(folder: str | os.PathLike, max_images: int | None = None) -> list[Path]:
    """The images of `folder` whose headers decode, checked before any slow work: a folder of unreadable files
    fails in a second, not after k-means. Unreadable ones are left out with one warning; none readable is an
    error. (Only headers are read here; a file corrupt past its header is skipped later, when decoded.)"""
    files = list_images(folder)[:max_images]
    good, bad = [], []
    for path in files:
        try:
            with Image.open(path) as im:
                im.size  # noqa: B018 (parsing the header is the check)
            good.append(path)
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
            bad.append(f"{path.name}: {e}")
    if not good:
        raise VWTError(f"{folder}: none of the {len(files)} image files could be read (first: {bad[0]}); "
                       "pass a folder of valid images")
    if bad:
        log.warning("%s: %d of %d image files cannot be read and are skipped (first: %s)", folder, len(bad),
                    len(files), bad[0])
    return good


def load_image(path: Path) -> Image.Image:
    with Image.open(path) as im:
        return im.convert("RGB")


def iter_image_batches(
    files: Sequence[Path],
    transform: Callable[[Image.Image], torch.Tensor],
    batch_size: int,
    progress: Callable[[int], None] | None = None,
) -> Iterator[tuple[torch.Tensor, list[Path]]]:
    """Yield (pixels[B,C,H,W], paths) batches. Unreadable files are skipped with a warning; if none of
    them can be read, raise a clear error instead of yielding nothing."""
    batch: list[torch.Tensor] = []
    paths: list[Path] = []
    good = 0
    first_failure = None
    for path in files:
        try:
            batch.append(transform(load_image(path)))
            paths.append(path)
            good += 1
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
            first_failure = first_failure or f"{path.name}: {e}"
            log.warning("skipping unreadable image %s (%s)", path, e)
        if progress:
            progress(1)
        if len(batch) == batch_size:
            yield torch.stack(batch), paths
            batch, paths = [], []
    if batch:
        yield torch.stack(batch), paths
    if good == 0:
        folder = files[0].parent if files else "?"
        raise VWTError(
            f"{folder}: none of the {len(files)} image files could be read (first: {first_failure}); "
            "pass a folder of valid images"
        )
