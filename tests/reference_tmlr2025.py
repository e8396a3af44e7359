"""An independent, test-local implementation of VWT, written from the reference code (wearepal/
visual-word-tokenizer, branch tmlr2025, utils/vwt.py), one image at a time and with no padding.

It shares no code with vwt_export: patches come from the reference's unfold chain, labels from its
sort + unique_consecutive relabelling, group means from its NaN-filled scatter_reduce. It generalises the
reference in the two ways DESIGN.md asks for: P prefix tokens (the reference has one class token) and the
size-based extras (proportional attention, size-weighted average pooling).

Local grouping (DESIGN.md "Local grouping") is not in the reference code; `local_labels` is a deliberately
plain flood fill over the reference's labels, one image at a time, sharing nothing with vwt_export.
"""

from collections import deque

import torch
import torch.nn.functional as F


def patches(pixels, p):
    c = pixels.shape[1]
    x = pixels.unfold(1, c, c).unfold(2, p, p).unfold(3, p, p)
    return x.reshape(x.size(0), -1, c * p * p)


def labels(features, vocab, thresh):
    vocab_t = F.normalize(vocab.float(), p=2, dim=-1).T.unsqueeze(0)
    scores = 1 - torch.matmul(F.normalize(features.float(), p=2, dim=-1), vocab_t)
    scores, lab = scores.min(-1)
    masks = scores > thresh
    lab[masks] = torch.arange(int(masks.sum())) + vocab.size(0)
    lab, indices = lab.sort()
    for i, row in enumerate(lab):
        _, lab[i] = torch.unique_consecutive(row, return_inverse=True)
    return lab.gather(1, indices.argsort())


def local_labels(lab, grid_w):
    """Dense labels [B, N] -> labels of their 4-connected components on a grid grid_w wide, ordered by (label,
    first patch of the component in raster order). Breadth-first flood fill in plain Python."""
    out = []
    for row in lab.tolist():
        n = len(row)
        comp = [-1] * n
        firsts = []  # (label, first patch) per component, in discovery (= raster) order of first patches
        for start in range(n):
            if comp[start] >= 0:
                continue
            comp[start] = len(firsts)
            firsts.append((row[start], start))
            queue = deque([start])
            while queue:
                i = queue.popleft()
                r, c = divmod(i, grid_w)
                for rr, cc in ((r, c - 1), (r, c + 1), (r - 1, c), (r + 1, c)):
                    j = rr * grid_w + cc
                    if 0 <= cc < grid_w and 0 <= rr and j < n and comp[j] < 0 and row[j] == row[i]:
                        comp[j] = comp[start]
                        queue.append(j)
        rank = {c: r for r, c in enumerate(sorted(range(len(firsts)), key=lambda c: firsts[c]))}
        out.append([rank[c] for c in comp])
    return torch.tensor(out, dtype=torch.int64)


def mean_by_label(embeddings, lab):
    idx = lab[..., None].expand_as(embeddings)
    mean = torch.full_like(embeddings, torch.nan)
    mean = mean.scatter_reduce(1, idx, embeddings, reduce="mean", include_self=False)
    return mean[:, : lab.max() + 1, :]


def intra_indices(features, k):
    scores = features.var(dim=-1)
    _, indices = torch.topk(scores, k, largest=True)
    indices, _ = indices.sort()
    return indices


@torch.no_grad()
def forward_one(model, pixels, mode, vocab=None, thresh=0.1, k=None, space="image", prop_attn=False, local=False):
    """One image [1, C, H, W] -> (logits [1, classes], tokens kept). `local`: groups split into their
    4-connected components on the patch grid."""
    assert pixels.shape[0] == 1
    p = model.patch_embed.patch_size[0]
    P = model.num_prefix_tokens
    emb = model.patch_embed(pixels)
    tokens = model.norm_pre(model._pos_embed(emb))
    feats = patches(pixels, p) if space == "image" else emb
    sizes = None
    if mode == "intra":
        idx = intra_indices(feats, k)
        kept = torch.gather(tokens[:, P:, :], 1, idx.unsqueeze(-1).expand(-1, -1, tokens.size(-1)))
        x = torch.cat((tokens[:, :P, :], kept), dim=1)
    elif mode == "inter":
        lab = labels(feats, vocab, thresh)
        if local:
            lab = local_labels(lab, pixels.shape[-1] // p)
        x = torch.cat((tokens[:, :P, :], mean_by_label(tokens[:, P:, :], lab)), dim=1)
        sizes = torch.cat((torch.ones(P), torch.bincount(lab[0]).float()))
    else:
        x = tokens
    mask = torch.log(sizes)[None, None, None, :] if (prop_attn and sizes is not None) else None
    for blk in model.blocks:
        x = blk(x, attn_mask=mask)
    x = model.norm(x)
    if model.global_pool == "avg" and sizes is not None:
        w = sizes[P:][None, :, None]
        pooled = (x[:, P:] * w).sum(1) / w.sum(1)
        out = model.head(model.fc_norm(pooled))
    else:
        out = model.forward_head(x)
    return out, x.shape[1]
