"""Accuracy (against labels) and fidelity (against the FP32 baseline's outputs).

Labels come from an ImageFolder (one subfolder per class: integer class indices, ImageNet synsets such as
n01440764, or any names, taken in sorted order as torchvision does) or from a labels file beside flat images
(`labels.txt` / `labels.csv`: one `filename,label` or `filename label` per line; label an index or a synset).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from ..errors import VWTError
from ..models import is_headless

LABEL_FILES = ("labels.txt", "labels.csv", "val_labels.txt")
SYNSET = re.compile(r"^n\d{8}$")


def _synset_index() -> dict[str, int]:
    from timm.data import ImageNetInfo

    return {s: i for i, s in enumerate(ImageNetInfo().label_names())}


def _class_index(name: str, synsets: dict[str, int] | None, sorted_names: list[str] | None) -> int:
    if name.isdigit():
        return int(name)
    if SYNSET.match(name):
        if synsets is None or name not in synsets:
            raise VWTError(f"unknown ImageNet synset '{name}'")
        return synsets[name]
    if sorted_names is not None and name in sorted_names:
        return sorted_names.index(name)
    raise VWTError(f"label '{name}' is neither a class index nor an ImageNet synset")


def read_labels(folder: str | Path, files: Sequence[Path]) -> np.ndarray | None:
    """Class index per file, or None when the folder carries no labels."""
    folder = Path(folder)
    label_file = next((folder / n for n in LABEL_FILES if (folder / n).is_file()), None)
    synsets = None
    if label_file is not None:
        table = {}
        for i, line in enumerate(label_file.read_text().splitlines()):
            parts = [p for p in re.split(r"[,\s]+", line.strip()) if p]
            if not parts or (i == 0 and not parts[-1].isdigit() and not SYNSET.match(parts[-1])):
                continue  # blank line or a header
            if len(parts) < 2:
                raise VWTError(f"{label_file}:{i + 1}: expected 'filename,label'")
            if SYNSET.match(parts[1]) and synsets is None:
                synsets = _synset_index()
            table[Path(parts[0]).name] = _class_index(parts[1], synsets, None)
        missing = [f.name for f in files if f.name not in table]
        if missing:
            raise VWTError(f"{label_file}: no label for {len(missing)} images (e.g. {missing[0]})")
        return np.array([table[f.name] for f in files])
    parents = [f.parent for f in files]
    if any(p == folder for p in parents):
        return None  # flat folder without a labels file
    names = sorted({p.relative_to(folder).parts[0] for p in parents})
    if any(SYNSET.match(n) for n in names):
        synsets = _synset_index()
    return np.array([_class_index(f.relative_to(folder).parts[0], synsets, names) for f in files])


def softmax(x: np.ndarray) -> np.ndarray:
    z = x - x.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def topk_accuracy(logits: np.ndarray, labels: np.ndarray, k: int) -> float:
    k = min(k, logits.shape[-1])
    top = np.argsort(-logits, axis=-1)[:, :k]
    return float((top == labels[:, None]).any(-1).mean())


def top1_agreement(ref: np.ndarray, cand: np.ndarray) -> float:
    return float((ref.argmax(-1) == cand.argmax(-1)).mean())


def topk_overlap(ref: np.ndarray, cand: np.ndarray, k: int = 5) -> float:
    k = min(k, ref.shape[-1])
    a, b = np.argsort(-ref, axis=-1)[:, :k], np.argsort(-cand, axis=-1)[:, :k]
    return float(np.mean([len(set(x) & set(y)) / k for x, y in zip(a, b)]))


def kl_divergence(ref: np.ndarray, cand: np.ndarray) -> float:
    """Mean KL(softmax(ref) || softmax(cand)) in nats."""
    p, q = softmax(ref.astype(np.float64)), softmax(cand.astype(np.float64))
    return float(np.mean(np.sum(p * (np.log(p + 1e-300) - np.log(q + 1e-300)), axis=-1)))


def cosine_similarities(ref: np.ndarray, cand: np.ndarray) -> np.ndarray:
    """Cosine similarity of each pair of output vectors (along the last axis)."""
    num = np.sum(ref * cand, -1)
    den = np.linalg.norm(ref, axis=-1) * np.linalg.norm(cand, axis=-1)
    return num / np.maximum(den, 1e-12)


def cosine_similarity(ref: np.ndarray, cand: np.ndarray) -> float:
    """Mean cosine similarity of the output vectors."""
    return float(np.mean(cosine_similarities(ref, cand)))


@dataclass(frozen=True)
class Fidelity:
    """A variant's outputs against the reference's (FP32): the first three None for a headless model."""

    top1_agreement: float | None
    top5_overlap: float | None
    kl_divergence: float | None
    cosine_similarity: float


@dataclass(frozen=True)
class Accuracy:
    top1: float
    top5: float


def fidelity(ref: np.ndarray, cand: np.ndarray, headless: bool = False) -> Fidelity:
    """Agreement of a variant's outputs with the reference's. A headless model (no classifier head) outputs
    feature vectors: ranking their components means nothing, so only their cosine similarity is measured."""
    if headless:
        return Fidelity(None, None, None, cosine_similarity(ref, cand))
    return Fidelity(top1_agreement(ref, cand), topk_overlap(ref, cand), kl_divergence(ref, cand),
                    cosine_similarity(ref, cand))


def accuracy(logits: np.ndarray, labels: np.ndarray | None) -> Accuracy | None:
    if labels is None:
        return None
    return Accuracy(topk_accuracy(logits, labels, 1), topk_accuracy(logits, labels, 5))


# -- the torch-path comparison ---------------------------------------------------------------------------------


@dataclass
class Agreement:
    images: int
    top1_agreement: float | None  # None for a headless model
    top5_overlap: float | None
    cosine_similarity: float
    max_abs_logit_diff: float
    tokens_in: int  # P + N, uncompressed
    tokens_mean: float
    tokens_min: int
    tokens_max: int

    def as_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def compare(reference: torch.nn.Module, candidate: torch.nn.Module, batches: Iterable[np.ndarray],
            device: str = "cpu", progress=None) -> Agreement:
    """Run both torch models over batches of pixels; `candidate` is a compressed model (it reports its tokens)."""
    refs, cands, counts = [], [], []
    for batch in batches:
        pixels = torch.from_numpy(batch).to(device)
        refs.append(reference(pixels).float().cpu().numpy())
        cands.append(candidate(pixels).float().cpu().numpy())
        counts.append(candidate.last_token_counts)
        if progress:
            progress(len(batch))
    ref, cand, tokens = np.concatenate(refs), np.concatenate(cands), torch.cat(counts).float()
    f = fidelity(ref, cand, headless=is_headless(reference))
    agreement = Agreement(
        images=len(ref), top1_agreement=f.top1_agreement, top5_overlap=f.top5_overlap,
        cosine_similarity=f.cosine_similarity, max_abs_logit_diff=float(np.abs(ref - cand).max()), tokens_in=candidate.tokens_in,
        tokens_mean=float(tokens.mean()), tokens_min=int(tokens.min()), tokens_max=int(tokens.max()),
    )
    agreement.counts = tokens.long().tolist()  # per image, for the report's histogram (not in as_dict)
    return agreement


def check_torch(run, cmodel) -> dict:
    """Tokens kept and agreement with the uncompressed model, on the torch path, over the run's check images."""
    from tqdm.auto import tqdm

    images = run.images
    with tqdm(total=len(images.files), desc="checking (torch)", unit="img", disable=not run.cfg.progress) as bar:
        a = compare(run.model, cmodel, images.batches(run.cfg.data.batch_size), run.cfg.device, progress=bar.update)
    return {"images_from": str(run.cfg.data.check_folder), **a.as_dict(), "counts": a.counts}
