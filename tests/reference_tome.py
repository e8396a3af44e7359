"""An independent, deliberately plain ToMe (Token Merging, Bolya et al., ICLR 2023), used only by tests.

Written from the paper's description, one image at a time with Python loops, and sharing no code with
vwt_export.tome. It uses only the timm model's weights and leaf modules (LayerNorm, Linear, MLP, LayerScale).

Per block, on one image's tokens (a list of vectors with sizes):
  attention: logits = q.k * scale (+ log(size of the key) with proportional attention), softmax per head.
  metric:    the keys averaged over heads.
  matching:  positions 0, 2, 4, ... form set A and 1, 3, 5, ... set B (positions in the current sequence);
             prefix tokens (the first P) are in neither. Every a in A picks the b in B with the highest cosine
             similarity (the first b on a tie); the r a's with the highest similarity (the first a on a tie) merge.
  merging:   b becomes the size-weighted mean of itself and the a's merged into it; sizes add.
  order:     prefix tokens, the unmerged a's by position, then the b's by position.
  r is clamped to (T - P) // 2 as in ToMe.
Pooling: the class token (the model's own head), or the size-weighted mean of the non-prefix tokens.
"""

from __future__ import annotations

import math

import torch


def match(metric: list[torch.Tensor], r: int, num_prefix: int) -> tuple[dict[int, list[int]], float]:
    """metric: one vector per token. Returns ({b position: [a positions merged into it]}, margin), where
    margin is how far the decisions are from a tie (the smallest gap between a merged a's best and second best
    partner, and between the r-th and (r+1)-th best edge): float noise below it cannot change the result."""
    t = len(metric)
    a_pos = [i for i in range(num_prefix, t) if i % 2 == 0]
    b_pos = [i for i in range(num_prefix, t) if i % 2 == 1]
    unit = [v / v.norm() for v in metric]
    edges = []  # (similarity, a, best b, gap to the second best b)
    for a in a_pos:
        sims = [float(unit[a] @ unit[b]) for b in b_pos]
        best = 0
        for j in range(1, len(sims)):
            if sims[j] > sims[best]:
                best = j
        others = [s for j, s in enumerate(sims) if j != best]
        gap = sims[best] - max(others) if others else math.inf
        edges.append((sims[best], a, b_pos[best], gap))
    edges.sort(key=lambda e: (-e[0], e[1]))
    merged = edges[:r]
    groups: dict[int, list[int]] = {}
    for _, a, b, _ in merged:
        groups.setdefault(b, []).append(a)
    margin = min([e[3] for e in merged] + [math.inf])
    if r < len(edges):
        margin = min(margin, edges[r - 1][0] - edges[r][0])
    return groups, margin


def merge(x: list[torch.Tensor], size: list[float], groups: dict[int, list[int]],
          num_prefix: int) -> tuple[list[torch.Tensor], list[float]]:
    """Apply a matching to one image's tokens and sizes."""
    t = len(x)
    sources = {a for members in groups.values() for a in members}
    order = list(range(num_prefix))
    order += [i for i in range(num_prefix, t) if i % 2 == 0 and i not in sources]
    order += [i for i in range(num_prefix, t) if i % 2 == 1]
    new_x, new_size = [], []
    for i in order:
        members = [i] + groups.get(i, [])
        total = sum(size[j] for j in members)
        new_x.append(sum(x[j] * size[j] for j in members) / total)
        new_size.append(total)
    return new_x, new_size


def attention(blk, x: torch.Tensor, size: list[float], prop_attn: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """One image's attention, head by head: (output [T, D], keys averaged over heads [T, head_dim])."""
    attn = blk.attn
    h = blk.norm1(x)
    t, d = h.shape
    heads, hd = attn.num_heads, attn.head_dim
    qkv = h @ attn.qkv.weight.T + (attn.qkv.bias if attn.qkv.bias is not None else 0)
    q_all, k_all, v_all = qkv[:, :d], qkv[:, d:2 * d], qkv[:, 2 * d:]
    outs, keys = [], []
    for j in range(heads):
        q = attn.q_norm(q_all[:, j * hd:(j + 1) * hd])
        k = attn.k_norm(k_all[:, j * hd:(j + 1) * hd])
        v = v_all[:, j * hd:(j + 1) * hd]
        logits = (q @ k.T) / math.sqrt(hd)
        if prop_attn:
            logits = logits + torch.tensor([math.log(s) for s in size])[None, :]
        outs.append(torch.softmax(logits, dim=-1) @ v)
        keys.append(k)
    out = attn.proj(attn.norm(torch.cat(outs, dim=-1)))
    return blk.ls1(out), sum(keys) / heads


@torch.no_grad()
def tome_forward(model, pixels: torch.Tensor, r: int | list[int], prop_attn: bool = True) -> dict:
    """pixels[B, C, H, W] -> {"logits": [B, classes], "tokens": per image the tokens each block's attention saw,
    "sizes": per image the final sizes, "final": per image the final normed tokens, "margin": the smallest
    tie margin of any matching}."""
    p = model.num_prefix_tokens
    tokens = model.norm_pre(model._pos_embed(model.patch_embed(pixels)))
    rs = [r] * len(model.blocks) if isinstance(r, int) else list(r)
    logits, seen, sizes, finals, margin = [], [], [], [], math.inf
    for img in range(pixels.shape[0]):
        x = tokens[img]
        size = [1.0] * x.shape[0]
        counts = []
        for blk, r_blk in zip(model.blocks, rs):
            counts.append(x.shape[0])
            out, metric = attention(blk, x, size, prop_attn)
            x = x + out
            r_eff = max(0, min(r_blk, (x.shape[0] - p) // 2))
            if r_eff:
                groups, m = match(list(metric), r_eff, p)
                margin = min(margin, m)
                rows, size = merge(list(x), size, groups, p)
                x = torch.stack(rows)
            x = x + blk.ls2(blk.mlp(blk.norm2(x)))
        x = model.norm(x)
        if model.global_pool == "avg":
            w = torch.tensor(size[p:])[:, None]
            pooled = (x[p:] * w).sum(0) / w.sum()
            logits.append(model.head(model.fc_norm(pooled)))
        else:
            logits.append(model.forward_head(x[None])[0])
        seen.append(counts)
        sizes.append(size)
        finals.append(x)
    return {"logits": torch.stack(logits), "tokens": seen, "sizes": sizes, "final": finals, "margin": margin}
