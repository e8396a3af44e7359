"""Image folders: listing, decoding and batching with the model's own preprocessing.

Decoding keeps what the image holds (`load_image`); a plain `convert("RGB")` does not for several modes:

    16-bit grey (I;16*, and I from PNG, PGM/PPM or a 16-bit TIFF)
                                         scaled from 0..65535 to 0..255 (convert("RGB") clips at 255: white); a
                                         16-bit grey PNG's transparent value shows white. Pillow scales a PGM/PPM
                                         to 0..65535 by its own maximum (a 10-bit PGM reads right)
    I of 32 bits (TIFF) or unknown depth skipped with a warning: its scale (0..255? 0..65535? more?) would be a guess
    float grey (F)                       values in [0, 1] scaled to 0..255; other ranges are skipped (unknown scale)
    alpha (RGBA, LA, PA, La, RGBa, P or L or RGB with a transparency key)
                                         composited on ALPHA_BACKGROUND (white, as a viewer shows it on a page);
                                         convert("RGB") drops alpha and shows what transparent pixels hide
    16-bit RGB PNG with a transparency key
                                         skipped with a warning: Pillow reads it as 8-bit and keeps the 16-bit key,
                                         so which pixels are transparent cannot be told (without a key: fine)
    EXIF orientation                     applied, as a viewer shows the photo (convert("RGB") ignores it)
    1, L, P, CMYK, YCbCr, LAB, HSV, RGBX Pillow's conversion (CMYK without an ICC profile: Pillow's plain formula)
    animations, multi-page files         the first frame

Size. An image over Pillow's decompression-bomb limit (`PIL.Image.MAX_IMAGE_PIXELS` x 2) is skipped like an
unreadable one, with one warning. A large image is decoded at a reduced size when the model's transform resizes
it far down anyway: by 2, 4 or 8 while its shorter side stays at least REDUCED_MARGIN times the size the transform
resizes to (JPEG: `draft`, decoded at that scale; other formats: `reduce` after decoding once), so the resize still
averages at least REDUCED_MARGIN x REDUCED_MARGIN source pixels into each output pixel. An image longer than
MAX_ASPECT times its width (or the other way round) is cut to its centre first, which the centre crop keeps anyway.

Once per run. Inside `decode_once()` (a run of `vwt_export.export` is one) a file that cannot be decoded is
warned about once (by its resolved path, however it was named) and never decoded again, and the preprocessed
pixels of recently decoded images are kept (DECODED_CACHE_BYTES), so the stages that read the same few images
(verification, INT8 calibration, timing, polygraphy) do not decode them again. The state belongs to the thread
(a context variable) that entered the block: runs in two threads keep theirs apart.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import math
import os
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .errors import VWTError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".pgm", ".tif", ".tiff", ".gif")
ALPHA_BACKGROUND = (255, 255, 255)  # transparent pixels show white, as a browser shows them on a white page
# A reduced decode keeps >= 3x the transform's resize target on its shorter side. Chosen on 21 photographs
# (1280x1024 to 2560x1920) and five 5120x2880 JPEGs with DINOv2-S at 224 (scripts/bench_decode.py): margin 3
# reduced 20 of 26, features' cosine to a full decode >= 0.99995 (mean 0.99999), pixels after the transform
# within 6 of 255 levels on the photographs (11 on one render), mean 0.15; margin 2 let FreshFlower and Dune
# (shorter side 1203, 1050) drop to half at 224, 17 to 23 levels off and cosine 0.9997; margin 4 reduced only
# the 5120x2880 files.
REDUCED_MARGIN = 3
MAX_ASPECT = 8  # longer side / shorter side kept before the transform (its centre crop keeps less anyway)
DECODED_CACHE_BYTES = 256 << 20  # preprocessed pixels kept per run for the images read again

# What decoding a corrupt or unsupported file can raise (DecompressionBombError is an Exception, not an OSError)
DECODE_ERRORS = (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError,
                 MemoryError)
_ORIENTATION = 0x0112
_TRANSPOSE = {2: (Image.Transpose.FLIP_LEFT_RIGHT,), 3: (Image.Transpose.ROTATE_180,),
              4: (Image.Transpose.FLIP_TOP_BOTTOM,), 5: (Image.Transpose.TRANSPOSE,),
              6: (Image.Transpose.ROTATE_270,), 7: (Image.Transpose.TRANSVERSE,), 8: (Image.Transpose.ROTATE_90,)}


class UnsupportedImage(ValueError):
    """A file that decodes but whose values cannot be read as an image without guessing (the reason says why)."""


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


def _open(path: Path) -> Image.Image:
    """Image.open without Pillow's own DecompressionBombWarning (a large image is decoded reduced, see the
    module docstring); one over twice the limit raises DecompressionBombError, which the callers skip."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return Image.open(path)


def _reason(e: BaseException) -> str:
    if isinstance(e, Image.DecompressionBombError):
        return (f"too large to decode safely ({e}); raise PIL.Image.MAX_IMAGE_PIXELS to read it, or shrink it")
    if isinstance(e, MemoryError):
        return "out of memory while decoding it"
    return str(e) or type(e).__name__


def readable_images(folder: str | os.PathLike, max_images: int | None = None) -> list[Path]:
    """The images of `folder` whose headers decode, checked before any slow work: a folder of unreadable files
    fails in a second, not after k-means. Unreadable ones are left out with one warning each (in a run, these
    files are never warned about again); none readable is an error. (Only headers are read here; a file
    corrupt past its header is skipped later, when decoded.)"""
    files = list_images(folder)[:max_images]
    good, bad = [], []
    for path in files:
        try:
            with _open(path) as im:
                im.size  # noqa: B018 (parsing the header is the check)
            good.append(path)
        except DECODE_ERRORS as e:
            bad.append((path, _reason(e)))
    if not good:
        raise VWTError(f"{folder}: none of the {len(files)} image files could be read (first: {bad[0][0].name}: "
                       f"{bad[0][1]}); pass a folder of valid images")
    state = _current.get()
    for path, reason in bad:
        _warn_unreadable(state, path, reason)
    return good


# -- decoding ----------------------------------------------------------------------------------------------


def _integer_bits(im: Image.Image) -> int | None:
    """Bits per sample of an integer grey image, where the file says: I;16* modes; I from PNG (16-bit grey) and
    PGM/PPM (Pillow scales their samples to 0..65535); a TIFF's BitsPerSample. None: unknown."""
    if im.mode.startswith("I;16") or im.format in ("PNG", "PPM"):
        return 16
    bits = getattr(im, "tag_v2", {}).get(258) if im.format == "TIFF" else None
    return int(bits[0]) if isinstance(bits, tuple) and bits else None


def _grey_16bit(im: Image.Image) -> Image.Image:
    """An integer grey image (I;16*, I) of 16 bits per sample: 0..65535 -> 0..255."""
    bits = _integer_bits(im)
    if bits != 16:
        raise UnsupportedImage(f"a {f'{bits}-bit' if bits else 'deep'} integer image: its scale is unknown (0..255? "
                               "0..65535? more?); save it as 8- or 16-bit")
    a = np.asarray(im)
    if a.size and (a.min() < 0 or a.max() > 65535):
        raise UnsupportedImage(f"a {im.mode} image with values in [{a.min()}, {a.max()}]: only 0..65535 (16-bit) "
                               "integer images are read; save it as 8- or 16-bit")
    return Image.fromarray(np.rint(a.astype(np.float64) / 257.0).astype(np.uint8), "L")


def _grey_float(im: Image.Image) -> Image.Image:
    """A float grey image (F) read as intensities in [0, 1]."""
    a = np.asarray(im, dtype=np.float64)
    if a.size and (not np.isfinite(a).all() or a.min() < 0.0 or a.max() > 1.0):
        finite = a[np.isfinite(a)]
        lo, hi = (finite.min(), finite.max()) if finite.size else (float("nan"),) * 2
        extra = "" if finite.size == a.size else " and NaN/inf"
        raise UnsupportedImage(f"a float image with values in [{lo:g}, {hi:g}]{extra}: float images are read as "
                               "intensities in [0, 1]; save it as 8- or 16-bit")
    return Image.fromarray(np.rint(a * 255.0).astype(np.uint8), "L")


def has_alpha(im: Image.Image) -> bool:
    return im.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in im.info


def _on_background(im: Image.Image) -> Image.Image:
    rgba = im.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (*ALPHA_BACKGROUND, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def to_rgb(im: Image.Image) -> Image.Image:
    """8-bit RGB holding what `im` shows (see the module docstring); UnsupportedImage where that needs a guess."""
    if im.mode == "La":  # premultiplied: Pillow converts it to LA only
        im = im.convert("LA")
    if im.mode.startswith("I;16") or im.mode == "I":
        grey, key = _grey_16bit(im), im.info.get("transparency")
        if isinstance(key, int):  # a 16-bit grey PNG's transparent value (convert("RGBA") would ignore it)
            alpha = Image.fromarray(np.where(np.asarray(im) == key, 0, 255).astype(np.uint8), "L")
            return _on_background(Image.merge("LA", (grey, alpha)))
        return grey.convert("RGB")
    if im.mode == "F":
        return _grey_float(im).convert("RGB")
    if has_alpha(im):
        return _on_background(im)
    return im if im.mode == "RGB" else im.convert("RGB")


def _check_readable(im: Image.Image) -> None:
    """Before decoding: refuse what Pillow would decode into a silently wrong picture."""
    if (im.format == "PNG" and im.mode == "RGB" and isinstance(im.info.get("transparency"), tuple)
            and any(str(t.args).startswith("RGB;16") for t in im.tile)):
        raise UnsupportedImage("a 16-bit RGB PNG with a transparent colour: Pillow reads it as 8-bit, so which pixels "
                               "are transparent cannot be told; save it with an alpha channel (RGBA)")


def _orientation(im: Image.Image) -> int:
    with contextlib.suppress(Exception):  # a broken EXIF block is no reason to lose the picture
        value = im.getexif().get(_ORIENTATION, 1)
        return value if value in _TRANSPOSE else 1
    return 1


def reduction(size: tuple[int, int], target: int | None) -> int:
    """The factor (1, 2, 4 or 8) a (w, h) image can be decoded smaller by while its shorter side stays at least
    REDUCED_MARGIN x `target` (the side the transform resizes to); 1 when `target` is unknown."""
    if not target:
        return 1
    shorter = min(size)
    return next((k for k in (8, 4, 2) if shorter // k >= REDUCED_MARGIN * target), 1)


def load_image(path: str | os.PathLike, target: int | None = None) -> Image.Image:
    """Decode one file to 8-bit RGB as a viewer shows it (see the module docstring). `target`: the side the
    model's transform resizes the shorter side to, which allows a reduced decode of a large image. Raises one
    of DECODE_ERRORS (UnsupportedImage for values that cannot be read without guessing)."""
    path = Path(path)
    with _open(path) as im:
        _check_readable(im)
        k = reduction(im.size, target)
        if k > 1 and im.format in ("JPEG", "MPO"):
            im.draft(None, (math.ceil(im.width / k), math.ceil(im.height / k)))  # DCT scaling: decodes 1/k
        im.load()
        orientation = _orientation(im)
        rgb = to_rgb(im)
    still = reduction(rgb.size, target)  # > 1 where draft could not reduce (not a JPEG): reduce what was decoded
    if still > 1:
        rgb = rgb.reduce(still)
    for op in _TRANSPOSE.get(orientation, ()):
        rgb = rgb.transpose(op)
    w, h = rgb.size
    if max(w, h) > MAX_ASPECT * min(w, h) and target:  # a strip: keep the centre the crop keeps, bounded
        keep = MAX_ASPECT * min(w, h)
        left, top = (w - keep) // 2 if w > h else 0, (h - keep) // 2 if h > w else 0
        rgb = rgb.crop((left, top, left + (keep if w > h else w), top + (keep if h > w else h)))
    return rgb


def resize_target(transform) -> int | None:
    """The side a timm/torchvision eval transform resizes the shorter side to (Resize(int), then a centre
    crop), or None when it does something else (squash to a fixed shape, a custom callable): then every
    image is decoded at full size and never cut."""
    steps = getattr(transform, "transforms", None)
    if not steps:
        return None
    first = steps[0]
    if type(first).__name__ != "Resize":
        return None
    size = getattr(first, "size", None)
    if isinstance(size, (list, tuple)) and len(size) == 1:
        size = size[0]
    if not isinstance(size, int) or getattr(first, "max_size", None):
        return None
    return size if any(type(s).__name__ == "CenterCrop" for s in steps[1:]) else None


# -- once per run --------------------------------------------------------------------------------------------


@dataclass
class _DecodeState:
    """What one run has decoded: failures (never retried, warned about once) and recent preprocessed pixels."""

    failed: dict[tuple, str] = field(default_factory=dict)
    warned: set[Path] = field(default_factory=set)
    pixels: "OrderedDict[tuple, torch.Tensor]" = field(default_factory=OrderedDict)
    bytes: int = 0
    decodes: int = 0  # files decoded (for the tests: no file twice per run while the cache holds it)

    def remember(self, key: tuple, x: torch.Tensor) -> None:
        size = getattr(x, "nbytes", None)  # a tensor or an array (a transform may return either)
        if not isinstance(size, int) or size > DECODED_CACHE_BYTES:
            return
        self.pixels[key] = x
        self.bytes += size
        while self.bytes > DECODED_CACHE_BYTES:
            _, old = self.pixels.popitem(last=False)
            self.bytes -= old.nbytes


_current: contextvars.ContextVar[_DecodeState | None] = contextvars.ContextVar("vwt_export_decode_state", default=None)


@contextlib.contextmanager
def decode_once() -> Iterator[_DecodeState]:
    """Within this block (one run), each unreadable file is warned about once and skipped from then on, and
    recently decoded images are not decoded again. Nested blocks share the outer one's state; another thread
    starts with none (its own block, its own state)."""
    outer = _current.get()
    if outer is not None:
        yield outer
        return
    token = _current.set(_DecodeState())
    try:
        yield _current.get()
    finally:
        _current.reset(token)


def _file_key(path: Path) -> tuple:
    st = path.stat()
    return str(path.resolve()), st.st_mtime_ns, st.st_size


def _warn_unreadable(state: _DecodeState | None, path: Path, reason: str) -> None:
    """One warning naming the file, once per run (by its resolved path, the one the decoded-pixel cache uses)."""
    if state is not None:
        real = path.resolve()
        if real in state.warned:
            return
        state.warned.add(real)
    log.warning("skipping unreadable image %s (%s)", path, reason)


def iter_image_batches(
    files: Sequence[Path],
    transform: Callable[[Image.Image], torch.Tensor],
    batch_size: int,
    progress: Callable[[int], None] | None = None,
) -> Iterator[tuple[torch.Tensor, list[Path]]]:
    """Yield (pixels[B,C,H,W], paths) batches. Unreadable files are skipped with one warning each (once per
    run inside `decode_once`); if none of them can be read, raise a clear error instead of yielding nothing."""
    state = _current.get() or _DecodeState()
    target = resize_target(transform)
    transform_key = repr(transform)
    batch: list[torch.Tensor] = []
    paths: list[Path] = []
    good = 0
    first_failure = None
    for path in files:
        path = Path(path)
        try:
            key = _file_key(path)
        except OSError as e:  # gone or unreadable since it was listed
            key = (str(path),)
            state.failed[key] = _reason(e)
        reason = state.failed.get(key)
        if reason is None:
            x = state.pixels.get((key, transform_key))
            if x is not None:
                state.pixels.move_to_end((key, transform_key))
            else:
                try:
                    state.decodes += 1
                    x = transform(load_image(path, target))
                    state.remember((key, transform_key), x)
                except DECODE_ERRORS as e:
                    reason = state.failed[key] = _reason(e)
        if reason is None:
            batch.append(x)
            paths.append(path)
            good += 1
        else:
            first_failure = first_failure or f"{path.name}: {reason}"
            _warn_unreadable(state, path, reason)
        if progress:
            progress(1)
        if len(batch) == batch_size:
            yield torch.stack(batch), paths
            batch, paths = [], []
    if batch:
        yield torch.stack(batch), paths
    if good == 0:
        folder = Path(files[0]).parent if files else "?"
        raise VWTError(
            f"{folder}: none of the {len(files)} image files could be read (first: {first_failure}); "
            "pass a folder of valid images"
        )
