"""Agreement between a compressed model and its uncompressed reference on the same images."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import torch

from ..data import iter_image_batches


@dataclass
class Agreement:
    images: int
    top1_agreement: float  # fraction of images whose top-1 class is unchanged
    top5_overlap: float  # mean |top5(ref) & top5(candidate)| / 5
    max_abs_logit_diff: float
    tokens_in: int  # P + N, uncompressed
    tokens_mean: float
    tokens_min: int
    tokens_max: int

    def as_dict(self) -> dict:
        return asdict(self)


def top1_agreement(ref: torch.Tensor, cand: torch.Tensor) -> float:
    return float((ref.argmax(-1) == cand.argmax(-1)).float().mean())


def topk_overlap(ref: torch.Tensor, cand: torch.Tensor, k: int = 5) -> float:
    k = min(k, ref.shape[-1])
    a, b = ref.topk(k, dim=-1).indices, cand.topk(k, dim=-1).indices
    shared = (a.unsqueeze(-1) == b.unsqueeze(-2)).any(-1).sum(-1).float()
    return float((shared / k).mean())


@torch.no_grad()
def compare(reference: torch.nn.Module, candidate: torch.nn.Module, files: Sequence[Path], transform,
            batch_size: int = 32, device: str = "cpu", progress=None) -> Agreement:
    """Run both models over the images; `candidate` is a CompressedViT (it reports its token counts)."""
    refs, cands, counts = [], [], []
    for pixels, _ in iter_image_batches(files, transform, batch_size, progress=progress):
        pixels = pixels.to(device)
        refs.append(reference(pixels).float().cpu())
        cands.append(candidate(pixels).float().cpu())
        counts.append(candidate.last_token_counts)
    ref, cand, tokens = torch.cat(refs), torch.cat(cands), torch.cat(counts).float()
    return Agreement(
        images=len(ref), top1_agreement=top1_agreement(ref, cand), top5_overlap=topk_overlap(ref, cand),
        max_abs_logit_diff=float((ref - cand).abs().max()), tokens_in=candidate.tokens_in,
        tokens_mean=float(tokens.mean()), tokens_min=int(tokens.min()), tokens_max=int(tokens.max()),
    )
