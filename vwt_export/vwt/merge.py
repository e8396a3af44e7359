"""`vwt::TokenMerge` v2 (the executable spec) and the uses of the `sizes` tensor.

Every output token carries `size` = how many patches it stands for: 1 for prefix tokens, the group size for a
merged token, 0 for padding. From it come the attention bias (key mask, optional proportional attention) and
size-weighted pooling (heads.py, shared with every method that merges tokens).
"""

from __future__ import annotations

import torch

from ..heads import pool_tokens  # noqa: F401  (the size-weighted pooling, shared with ToMe, is read from here too)
from .inter import dense_relabel

# Added to the attention logits of padding keys. Finite so that no -inf arithmetic ever produces NaN, and
# small enough in magnitude to stay representable in float16 after adding real logits; exp(-1e4) is exactly
# 0 in float32 and float16, so padding carries no weight at all.
PAD_BIAS = -1.0e4


def token_merge(tokens: torch.Tensor, keys: torch.Tensor, num_prefix: int,
                grid_w: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """tokens[B, P+N, D], keys int64[B, N] (any integers) -> merged[B, P+M, D], sizes float32[B, P+M].

    Patches with equal keys form a group (with grid_w > 0: a 4-connected component of equal keys on a grid
    grid_w wide); groups are numbered by `dense_relabel` and merged[b, P+m] is the mean of group m's tokens.
    Prefix tokens pass through first. M = max over the batch of the number of groups; shorter images are
    padded with zero tokens of size 0. The `length` output of vwt::TokenMerge is P + M = merged.shape[1].
    """
    labels = dense_relabel(keys, grid_w)
    b, _, d = tokens.shape
    prefix, patches = tokens[:, :num_prefix], tokens[:, num_prefix:]
    m = int(labels.max()) + 1 if labels.numel() else 0
    index = labels.unsqueeze(-1).expand(-1, -1, d)
    sums = patches.new_zeros(b, m, d, dtype=torch.float32).scatter_add_(1, index, patches.float())
    counts = torch.zeros(b, m, dtype=torch.float32, device=tokens.device).scatter_add_(
        1, labels, torch.ones_like(labels, dtype=torch.float32)
    )
    means = (sums / counts.clamp(min=1.0).unsqueeze(-1)).to(tokens.dtype)
    sizes = torch.cat([counts.new_ones(b, num_prefix), counts], dim=1)
    return torch.cat([prefix, means], dim=1), sizes


def attention_bias(sizes: torch.Tensor, prop_attn: bool = False, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """sizes[B, T] -> additive attention bias [B, 1, 1, T] over keys.

    0 for real tokens (or log(size) with proportional attention, as in ToMe), PAD_BIAS for padding.
    """
    real = sizes > 0
    bias = sizes.clamp(min=1.0).log() if prop_attn else torch.zeros_like(sizes)
    bias = torch.where(real, bias, torch.full_like(sizes, PAD_BIAS))
    return bias.to(dtype)[:, None, None, :]
