"""An independent, deliberately plain hybrid (VWT grouping, then ToMe in every block), used only by tests.

One image at a time, no padding, sharing no code with vwt_export: the grouping is tests/reference_tmlr2025.py's
(its matching, relabelling, flood fill and group means), each block is tests/reference_tome.py's (attention head
by head with log(size), the bipartite matching and merging in Python lists). What is specific to the hybrid:

  - the tokens start with VWT's group sizes, so proportional attention and size-weighted merging see them;
  - an image of L tokens merges r_b = min(r, (L - P) // 2) tokens in a block (a fraction f of its non-prefix
    tokens: min(floor(f * (L - P)), (L - P) // 2), computed with Python's exact Fraction);
  - pooling: the class token, or the size-weighted mean of the non-prefix tokens;
  - with `tile`, a group never crosses a tile x tile square of patches; groups come tile by tile (row-major).
"""

from __future__ import annotations

import math
from fractions import Fraction

import torch

from . import reference_tmlr2025 as vwt_ref
from . import reference_tome as tome_ref


def merge_count(length: int, num_prefix: int, rule) -> int:
    n = length - num_prefix
    want = rule if isinstance(rule, int) else math.floor(Fraction(rule) * n)
    return max(0, min(want, n // 2))


def labels_from_keys(keys: torch.Tensor) -> torch.Tensor:
    """Any integer keys [1, N] -> dense labels in ascending key order."""
    _, inverse = torch.unique(keys[0], sorted=True, return_inverse=True)
    return inverse[None]


@torch.no_grad()
def hybrid_forward(model, pixels: torch.Tensor, vocab: torch.Tensor | None, thresh: float, r, prop_attn: bool = True,
                   local: bool = True, space: str = "image", keys: torch.Tensor | None = None, tile: int = 0) -> dict:
    """pixels[B, C, H, W] (or given keys [B, N]) -> {"logits", "tokens": per image the tokens each block's attention
    saw, "sizes": per image the sizes after each block, "final": per image the final normed tokens, "margin":
    the smallest tie margin of any in-block matching}."""
    p = model.patch_embed.patch_size[0]
    P = model.num_prefix_tokens
    depth = len(model.blocks)
    rules = list(r) if isinstance(r, (list, tuple)) else [r] * depth
    logits, seen, sizes_after, finals, margin = [], [], [], [], math.inf
    for img in range(pixels.shape[0]):
        one = pixels[img:img + 1]
        emb = model.patch_embed(one)
        tokens = model.norm_pre(model._pos_embed(emb))
        if keys is not None:
            lab = labels_from_keys(keys[img:img + 1])
        else:
            feats = vwt_ref.patches(one, p) if space == "image" else emb
            lab = vwt_ref.labels(feats, vocab, thresh)
        grid_w = one.shape[-1] // p
        if tile:  # groups split by tile x tile squares, ordered tile by tile, then as before
            cell = [(n // grid_w // tile) * 1000 + (n % grid_w) // tile for n in range(lab.shape[1])]
            lab = labels_from_keys(torch.tensor([cell]) * (lab.shape[1] + 1) + lab)
        if local:
            lab = vwt_ref.local_labels(lab, grid_w)
        x = torch.cat((tokens[0, :P], vwt_ref.mean_by_label(tokens[:, P:], lab)[0]), dim=0)
        size = [1.0] * P + torch.bincount(lab[0]).float().tolist()
        counts, after = [], []
        for blk, rule in zip(model.blocks, rules):
            counts.append(x.shape[0])
            out, metric = tome_ref.attention(blk, x, size, prop_attn)
            x = x + out
            r_b = merge_count(x.shape[0], P, rule)
            if r_b:
                groups, m = tome_ref.match(list(metric), r_b, P)
                margin = min(margin, m)
                rows, size = tome_ref.merge(list(x), size, groups, P)
                x = torch.stack(rows)
            after.append(list(size))
            x = x + blk.ls2(blk.mlp(blk.norm2(x)))
        x = model.norm(x)
        if model.global_pool == "avg":
            w = torch.tensor(size[P:])[:, None]
            logits.append(model.head(model.fc_norm((x[P:] * w).sum(0) / w.sum())))
        else:
            logits.append(model.forward_head(x[None])[0])
        seen.append(counts)
        sizes_after.append(after)
        finals.append(x)
    return {"logits": torch.stack(logits), "tokens": seen, "sizes": sizes_after, "final": finals, "margin": margin}
