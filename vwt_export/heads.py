"""timm's head over tokens that carry sizes (how many patches each stands for): shared by every method that
merges tokens (vwt, tome), so that their outputs mean what the uncompressed model's mean.

    forward_head(model, x, sizes, num_prefix, attn_bias)   # logits, or features for a headless model
    pool_tokens(x, sizes, "avg", num_prefix)               # timm's global pooling, size-weighted

`sizes` [B, T]: 1 for prefix tokens, a group's size for a merged token, 0 for padding (which never counts).
"""

from __future__ import annotations

from typing import Callable

import torch


def pool_tokens(tokens: torch.Tensor, sizes: torch.Tensor, pool_type: str, num_prefix: int,
                include_prefix: bool = False) -> torch.Tensor:
    """timm's global pooling over a merged sequence: averages are size-weighted over real tokens (so they
    approximate the uncompressed average), maxima ignore padding."""
    if pool_type == "token":
        return tokens[:, 0]
    if not include_prefix:
        tokens, sizes = tokens[:, num_prefix:], sizes[:, num_prefix:]
    w = sizes.to(tokens.dtype).unsqueeze(-1)
    avg = (tokens * w).sum(dim=1) / w.sum(dim=1).clamp(min=1.0)
    if pool_type == "avg":
        return avg
    mx = tokens.masked_fill(w == 0, torch.finfo(tokens.dtype).min).amax(dim=1)
    if pool_type == "max":
        return mx
    if pool_type == "avgmax":
        return 0.5 * (avg + mx)
    raise ValueError(f"unknown pool type {pool_type!r}")


def forward_head(model: torch.nn.Module, x: torch.Tensor, sizes: torch.Tensor | None, num_prefix: int,
                 attn_bias: Callable[[torch.Tensor], torch.Tensor | None]) -> torch.Tensor:
    """timm's forward_head on normed tokens x [B, T, D] whose sizes are `sizes` [B, T] (None: every size 1). An
    attention-pool head weights its keys by `attn_bias(sizes)`, the method's bias over keys."""
    m = model
    if sizes is None or (m.attn_pool is None and m.global_pool in ("token", "")):
        return m.forward_head(x)  # prefix tokens are never merged, so the model's own head is exact
    if m.attn_pool is not None:
        if not m.pool_include_prefix:
            x, sizes = x[:, num_prefix:], sizes[:, num_prefix:]
        pooled = m.attn_pool(x, attn_mask=attn_bias(sizes))
    else:
        pooled = pool_tokens(x, sizes, m.global_pool, num_prefix, m.pool_include_prefix)
    return m.head(m.head_drop(m.fc_norm(pooled)))
