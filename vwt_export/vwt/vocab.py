"""Visual-word vocabularies: learned offline by streaming mini-batch k-means, stored as safetensors.

File format: one safetensors file holding the tensor `words` [V, F] (float32) and, in the header's metadata
under the key `vwt_export`, a JSON object: format, version, space, patch_size, channels, feature_dim, size,
mean, std (the pixel normalisation the words live in; null when unknown), model, weights,
patch_embed_sha256 (embed space only) and source (calibration folder, images, patches, seed, epochs).

The reference repository's bare `vocab.pt` ([V, C*p*p] cluster centres) loads too; its words are taken to be
in the model's normalised pixel space, which cannot be checked.

Clustering follows the reference: Euclidean mini-batch k-means on raw patch features (its scikit-learn
MiniBatchKMeans), while matching at inference uses cosine distance. The two disagree about what "the same
word" is: two centres that differ only in length (flat patches of one hue at two brightnesses, say) are far
apart for k-means and identical for matching. Such near-duplicate words make the nearest word a coin toss for
every patch near them, which two correct implementations may call differently. So learning merges every pair
of words closer than DUPLICATE_DISTANCE in cosine distance (1% of the default matching threshold: a patch that
matches one matches the other), and loading a vocabulary that has such pairs warns once, with their count.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import torch

from .. import models as _models
from ..atomic import atomic_path
from ..errors import VWTError
from .features import SPACES, patch_features

FORMAT = "vwt-export/vocabulary"
VERSION = 1
DUPLICATE_DISTANCE = 1e-3  # cosine distance under which two words are one word (see the module docstring)

log = logging.getLogger(__name__)


@dataclass
class Vocabulary:
    words: torch.Tensor  # [V, F] float32
    space: str = "image"
    patch_size: int | None = None
    channels: int | None = 3
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    meta: dict[str, Any] = field(default_factory=dict)  # model, weights, patch_embed_sha256, source

    def __post_init__(self) -> None:
        self.words = self.words.detach().to("cpu", torch.float32).contiguous()
        _check_words(self.words, "vocabulary")

    @property
    def size(self) -> int:
        return self.words.shape[0]

    @property
    def feature_dim(self) -> int:
        return self.words.shape[1]

    def __repr__(self) -> str:
        return f"Vocabulary(size={self.size}, feature_dim={self.feature_dim}, space={self.space!r}, patch_size={self.patch_size})"

    # -- files ----------------------------------------------------------------------------------------------

    def save(self, path: str | os.PathLike) -> Path:
        """Write atomically to `path` (.safetensors)."""
        from safetensors.torch import save_file

        path = Path(path)
        header = {
            "format": FORMAT, "version": VERSION, "space": self.space, "patch_size": self.patch_size,
            "channels": self.channels, "feature_dim": self.feature_dim, "size": self.size,
            "mean": list(self.mean) if self.mean else None, "std": list(self.std) if self.std else None,
            **self.meta,
        }
        with atomic_path(path) as tmp:
            save_file({"words": self.words}, str(tmp), metadata={"vwt_export": json.dumps(header)})
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, space: str | None = None) -> "Vocabulary":
        """Load our .safetensors files or the reference repo's bare vocab.pt (`space` defaults to image)."""
        path = Path(path)
        if path.is_dir():
            raise VWTError(f"{path}: a folder, not a vocabulary file; pass --vocab FILE, or --calib DIR to learn one")
        if not path.is_file():
            raise VWTError(f"{path}: no such vocabulary file; pass --vocab FILE, or --calib DIR to learn one")
        if path.suffix == ".safetensors":
            vocab = cls._load_safetensors(path)
        elif path.suffix in (".pt", ".pth"):
            vocab = cls._load_reference(path, space or "image")
        else:
            raise VWTError(f"{path}: unknown vocabulary format (expected .safetensors, or a reference vocab.pt)")
        pairs = near_duplicate_pairs(vocab.words)
        if pairs:
            log.warning("%s: %d pairs of words are near-duplicates (cosine distance under %g): a patch near them "
                        "matches either, so implementations may pick different ones; the checks count such "
                        "near-ties instead of failing (learning a vocabulary with vwt-export merges them)",
                        path, pairs, DUPLICATE_DISTANCE)
        return vocab

    @classmethod
    def _load_safetensors(cls, path: Path) -> "Vocabulary":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                header = json.loads((f.metadata() or {})["vwt_export"])
                words = f.get_tensor("words")
        except (KeyError, json.JSONDecodeError):
            raise VWTError(f"{path}: a safetensors file, but not a vwt-export vocabulary (no 'words' or metadata)") from None
        except Exception as e:
            raise VWTError(f"{path}: corrupt or unreadable vocabulary ({type(e).__name__}: {str(e)[:120]})") from None
        header = _check_header(header, path)
        _check_words(words, str(path))
        if words.shape[1] != header.get("feature_dim", words.shape[1]):
            raise VWTError(f"{path}: words are {words.shape[1]} wide but the metadata says {header['feature_dim']}")
        if header.get("size", words.shape[0]) != words.shape[0]:
            raise VWTError(f"{path}: holds {words.shape[0]} words but the metadata says {header['size']}")
        known = {"format", "version", "space", "patch_size", "channels", "feature_dim", "size", "mean", "std"}
        return cls(
            words=words, space=header.get("space", "image"), patch_size=header.get("patch_size"),
            channels=header.get("channels"), mean=_tuple(header.get("mean")), std=_tuple(header.get("std")),
            meta={k: v for k, v in header.items() if k not in known},
        )

    @classmethod
    def _load_reference(cls, path: Path, space: str) -> "Vocabulary":
        try:
            words = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise VWTError(f"{path}: corrupt or unreadable vocabulary ({type(e).__name__}: {str(e)[:120]})") from None
        if not isinstance(words, torch.Tensor):
            raise VWTError(f"{path}: expected a bare [V, F] tensor as the reference code saves, found {type(words).__name__}")
        _check_words(words, str(path))
        patch = None
        if space == "image":
            patch = math.isqrt(words.shape[1] // 3)
            if 3 * patch * patch != words.shape[1]:
                raise VWTError(f"{path}: width {words.shape[1]} is not 3*p*p for any patch size p; "
                               "if it is an embedding-space vocabulary, pass --space embed")
        return cls(words=words, space=space, patch_size=patch, channels=3 if space == "image" else None,
                   meta={"source": {"reference_file": str(path)}})

    # -- compatibility ----------------------------------------------------------------------------------------

    def check_compatible(self, model: torch.nn.Module) -> None:
        """Refuse, with one clear line, a vocabulary that does not fit `model`."""
        p = _models.patch_size(model)
        name = getattr(model, "vwt_name", type(model).__name__)
        if self.space == "image":
            c = model.patch_embed.proj.in_channels
            if self.patch_size is not None and self.patch_size != p:
                raise VWTError(f"vocabulary has patch size {self.patch_size} but {name} uses patch size {p}; "
                               f"learn a vocabulary for this model (--calib DIR)")
            if self.feature_dim != c * p * p:
                raise VWTError(f"vocabulary words are {self.feature_dim} wide but {name} image patches are "
                               f"{c}x{p}x{p} = {c * p * p}; learn a vocabulary for this model (--calib DIR)")
            cfg = _models.data_config(model)
            for what, ours in (("mean", self.mean), ("std", self.std)):
                theirs = tuple(float(v) for v in cfg[what])
                if ours is not None and not all(math.isclose(a, b, abs_tol=1e-4) for a, b in zip(ours, theirs)):
                    raise VWTError(f"vocabulary was learned with pixel {what} {ours} but {name} normalises with "
                                   f"{theirs}; learn a vocabulary for this model (--calib DIR)")
        else:
            d = model.embed_dim
            if self.feature_dim != d:
                raise VWTError(f"embedding-space vocabulary is {self.feature_dim} wide but {name} embeds to {d}; "
                               f"learn a vocabulary for this model (--calib DIR --space embed)")
            sha = self.meta.get("patch_embed_sha256")
            if sha and sha != patch_embed_sha256(model):
                import warnings

                warnings.warn(f"embedding-space vocabulary was learned with other patch-embedding weights "
                              f"({self.meta.get('model')}, {self.meta.get('weights')}); matches may be poor",
                              stacklevel=2)


def _check_header(header: Any, path: Path) -> dict:
    """The metadata object of a vocabulary file, each known field of its documented type; one line otherwise."""
    def bad(what: str) -> VWTError:
        return VWTError(f"{path}: malformed vocabulary metadata ({what}); learn the vocabulary again (--calib DIR)")

    if not isinstance(header, dict):
        raise bad(f"a JSON {type(header).__name__}, not an object")
    if header.get("format") != FORMAT:
        raise VWTError(f"{path}: unsupported vocabulary format {header.get('format')!r} (expected {FORMAT!r})")
    version = header.get("version", VERSION)
    if isinstance(version, bool) or not isinstance(version, int):
        raise bad(f"version {version!r} is not a number")
    if version > VERSION:
        raise VWTError(f"{path}: vocabulary format version {version}, newer than this vwt-export reads ({VERSION}); "
                       "upgrade vwt-export")
    if header.get("space", "image") not in SPACES:
        raise bad(f"space {header.get('space')!r} is not one of {', '.join(SPACES)}")
    for key in ("patch_size", "channels", "feature_dim", "size"):
        value = header.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise bad(f"{key} {value!r} is not a positive whole number")
    for key in ("mean", "std"):
        value = header.get(key)
        if value is not None and (not isinstance(value, list) or not value or
                                  not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
            raise bad(f"{key} {value!r} is not a list of numbers")
    if not isinstance(header.get("source", {}), dict):
        raise bad("source is not an object")
    return header


def _tuple(v) -> tuple[float, ...] | None:
    return tuple(float(x) for x in v) if v else None


def _check_words(words: Any, where: str) -> None:
    if not isinstance(words, torch.Tensor) or words.ndim != 2 or words.shape[0] < 1 or words.shape[1] < 1:
        shape = tuple(words.shape) if isinstance(words, torch.Tensor) else type(words).__name__
        raise VWTError(f"{where}: words must be a non-empty [V, F] matrix, found {shape}")
    if not words.is_floating_point():
        raise VWTError(f"{where}: words must be floating point, found {words.dtype}")
    if not torch.isfinite(words).all():
        raise VWTError(f"{where}: words contain NaN or infinite values; the file is corrupt, learn it again")
    zero = (words.float().norm(dim=1) == 0).nonzero()
    if len(zero):
        raise VWTError(f"{where}: word {int(zero[0])} is all zeros, so its cosine distance is undefined")


def _cosine_similarities(words: torch.Tensor) -> torch.Tensor:
    unit = torch.nn.functional.normalize(words.double(), dim=1)  # double: a 1e-3 distance is far above its rounding
    return unit @ unit.T


def near_duplicate_pairs(words: torch.Tensor, distance: float = DUPLICATE_DISTANCE) -> int:
    """How many pairs of distinct words lie closer than `distance` in cosine distance."""
    close = _cosine_similarities(words) > 1.0 - distance
    return int(torch.triu(close, diagonal=1).sum())


def merge_near_duplicates(words: torch.Tensor, counts: torch.Tensor | None = None,
                          distance: float = DUPLICATE_DISTANCE) -> tuple[torch.Tensor, int]:
    """Merge words closer than `distance` (cosine) into their count-weighted mean, until no such pair is
    left. Returns (words in their original order, less the merged ones; how many were merged away)."""
    words = words.clone()
    weights = (counts.clone().float() if counts is not None else torch.ones(len(words))).clamp(min=1.0)
    merged = 0
    while True:
        close = torch.triu(_cosine_similarities(words) > 1.0 - distance, diagonal=1)
        if not close.any():
            return words, merged
        keep = torch.ones(len(words), dtype=torch.bool)
        for i, j in close.nonzero().tolist():  # each word absorbs the later words close to it, once
            if keep[i] and keep[j]:
                total = weights[i] + weights[j]
                words[i] = (words[i] * weights[i] + words[j] * weights[j]) / total
                weights[i], keep[j] = total, False
                merged += 1
        words, weights = words[keep], weights[keep]


def patch_embed_sha256(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in sorted(model.patch_embed.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------------------
# Streaming mini-batch k-means


class StreamingKMeans:
    """Mini-batch k-means (Sculley 2010) over a stream of feature batches in bounded memory.

    The first `init_size` rows seed the centres by k-means++; every row then moves its nearest centre by
    1/count (each centre is the running mean of the rows assigned to it). Seeded, so repeatable.
    """

    def __init__(self, k: int, seed: int = 0, init_size: int | None = None, chunk: int = 4096):
        if k < 1:
            raise VWTError(f"vocabulary size must be at least 1, got {k}")
        self.k, self.chunk = k, chunk
        self.init_size = init_size or max(3 * k, 1024)
        self.generator = torch.Generator().manual_seed(seed)
        self.centers: torch.Tensor | None = None
        self.counts: torch.Tensor | None = None
        self._buffer: list[torch.Tensor] = []
        self._buffered = 0
        self.seen = 0

    def partial_fit(self, x: torch.Tensor) -> None:
        x = x.detach().reshape(-1, x.shape[-1]).to("cpu", torch.float32)
        self.seen += len(x)
        if self.centers is None:
            self._buffer.append(x)
            self._buffered += len(x)
            if self._buffered >= self.init_size:
                self._init_from_buffer()
            return
        for part in x.split(self.chunk):
            self._update(part)

    def finish(self) -> torch.Tensor:
        if self.centers is None:
            if self._buffered < self.k:
                raise VWTError(f"the calibration images give only {self._buffered} patches, fewer than the "
                               f"{self.k} words asked for; use more images or a smaller --vocab-size")
            self._init_from_buffer()
        return self.centers

    def _init_from_buffer(self) -> None:
        data = torch.cat(self._buffer)
        self._buffer, self._buffered = [], 0
        self.centers = _kmeans_pp(data, self.k, self.generator)
        self.counts = torch.zeros(self.k)
        for part in data.split(self.chunk):
            self._update(part)

    def _update(self, x: torch.Tensor) -> None:
        c = self.centers
        d2 = (x * x).sum(1, keepdim=True) - 2 * x @ c.T + (c * c).sum(1)
        assign = d2.argmin(dim=1)
        batch_counts = torch.bincount(assign, minlength=self.k).float()
        sums = torch.zeros_like(c).index_add_(0, assign, x)
        hit = batch_counts > 0
        total = self.counts + batch_counts
        c[hit] = (c[hit] * self.counts[hit, None] + sums[hit]) / total[hit, None]
        self.counts = total


def _kmeans_pp(x: torch.Tensor, k: int, g: torch.Generator) -> torch.Tensor:
    """k-means++ seeding: each next centre is drawn with probability proportional to squared distance."""
    n = len(x)
    idx = [int(torch.randint(n, (1,), generator=g))]
    d2 = ((x - x[idx[0]]) ** 2).sum(1)
    for _ in range(1, k):
        total = float(d2.sum())
        if total > 0:
            i = int(torch.multinomial(d2 / total, 1, generator=g))
        else:  # fewer distinct points than k: duplicates are harmless
            i = int(torch.randint(n, (1,), generator=g))
        idx.append(i)
        d2 = torch.minimum(d2, ((x - x[i]) ** 2).sum(1))
    return x[idx].clone()


def learn_vocabulary(
    model: torch.nn.Module,
    images: str | os.PathLike | list[Path] | Iterable[torch.Tensor],
    size: int = 1000,
    *,
    space: str = "image",
    batch_size: int = 32,
    seed: int = 0,
    epochs: int = 1,
    max_images: int | None = None,
    progress: bool = True,
) -> Vocabulary:
    """Learn a vocabulary of at most `size` words from a folder of images, a list of image files (preprocessed
    as `model` expects) or an iterable of normalised pixel batches [B, C, H, W]. Near-duplicate words are merged
    (see the module docstring), so the result can hold fewer than `size` words; its metadata says how many
    were merged."""
    from tqdm.auto import tqdm

    from ..data import iter_image_batches, list_images

    if space not in SPACES:
        raise VWTError(f"unknown feature space '{space}' (use one of {', '.join(SPACES)})")
    if epochs < 1:
        raise VWTError(f"epochs must be at least 1, got {epochs}")
    p = _models.patch_size(model)
    device = next(model.parameters()).device
    km = StreamingKMeans(size, seed=seed)
    source: dict[str, Any] = {"seed": seed, "epochs": epochs}
    if isinstance(images, (str, os.PathLike)):
        source["calib"] = str(images)
        images = list_images(images)
    images = list(images)
    from_files = bool(images) and isinstance(images[0], Path)
    if from_files:
        files = images[:max_images]
        source.setdefault("calib", str(files[0].parent))
        source["images"] = len(files)
        tf = _models.transform(model)
        bar = tqdm(total=len(files) * epochs, desc="learning vocabulary", unit="img", disable=not progress)
        batches = lambda: (b for b, _ in iter_image_batches(files, tf, batch_size, progress=bar.update))  # noqa: E731
    else:
        bar = tqdm(total=len(images) * epochs, desc="learning vocabulary", unit="batch", disable=not progress)
        batches = lambda: iter(images)  # noqa: E731
    with torch.inference_mode(), bar:
        for _ in range(epochs):
            for pixels in batches():
                km.partial_fit(patch_features(model, pixels.to(device), space, p))
                if not from_files:
                    bar.update(1)
        words, merged = merge_near_duplicates(km.finish(), km.counts)
    source["patches"] = km.seen
    source["near_duplicates_merged"] = merged
    source["created"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    cfg = _models.data_config(model)
    meta: dict[str, Any] = {"model": getattr(model, "vwt_name", None), "weights": getattr(model, "vwt_weights", None),
                            "source": source}
    if space == "embed":
        meta["patch_embed_sha256"] = patch_embed_sha256(model)
    return Vocabulary(
        words=words, space=space, patch_size=p, channels=model.patch_embed.proj.in_channels if space == "image" else None,
        mean=tuple(float(v) for v in cfg["mean"]) if space == "image" else None,
        std=tuple(float(v) for v in cfg["std"]) if space == "image" else None, meta=meta,
    )
