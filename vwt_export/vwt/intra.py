"""Intra-image tokenization: keep the K patches whose features vary most, drop the rest."""

from __future__ import annotations

import math

import torch

from ..errors import VWTError


def resolve_keep(keep: int | float, num_patches: int) -> int:
    """`keep` as a count (int, 1..N) or a fraction (float, 0 < keep <= 1) -> a patch count K >= 1."""
    if isinstance(keep, bool):
        raise VWTError(f"keep must be a count or a fraction, not {keep!r}")
    if isinstance(keep, int):
        if not 1 <= keep <= num_patches:
            raise VWTError(f"keep={keep} patches is out of range: the model sees {num_patches} patches (use 1..{num_patches})")
        return keep
    if not (isinstance(keep, float) and 0.0 < keep <= 1.0):
        raise VWTError(f"keep={keep} is out of range: give a fraction in (0, 1] or a patch count 1..{num_patches}")
    return max(1, min(num_patches, math.ceil(keep * num_patches - 1e-9)))


def variance_scores(features: torch.Tensor) -> torch.Tensor:
    """features[B, N, F] -> unbiased variance per patch [B, N]."""
    return features.float().var(dim=-1, unbiased=True)


def keep_indices(features: torch.Tensor, k: int) -> torch.Tensor:
    """Indices [B, K] of the K highest-variance patches, in raster order. Ties (flat patches often have
    exactly zero variance) go to the lower index, as ONNX TopK specifies, so every backend keeps the same."""
    order = variance_scores(features).sort(dim=-1, descending=True, stable=True).indices
    return order[:, :k].sort(dim=-1).values


def select_tokens(tokens: torch.Tensor, indices: torch.Tensor, num_prefix: int) -> torch.Tensor:
    """tokens[B, P+N, D], indices[B, K] -> [B, P+K, D] (prefix tokens first, kept patches in raster order)."""
    prefix, patches = tokens[:, :num_prefix], tokens[:, num_prefix:]
    kept = patches.gather(1, indices.unsqueeze(-1).expand(-1, -1, patches.shape[-1]))
    return torch.cat([prefix, kept], dim=1)
