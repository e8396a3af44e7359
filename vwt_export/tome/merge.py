"""ToMe's bipartite soft matching (Bolya et al., ICLR 2023) as small pure functions.

One merge step, on a sequence of T tokens whose first P are prefix tokens (class, distillation, registers):

1. Split the sequence alternately: A = positions 0, 2, 4, ...; B = positions 1, 3, 5, ...
2. Score every (a, b) pair by the cosine similarity of their metric vectors (ToMe: the attention keys averaged
   over heads). Prefix tokens take no part: a prefix token in A is never a source (its row scores -inf), a
   prefix token in B is never a destination (its column scores -inf). This generalises ToMe's class-token and
   distillation-token rules to all P prefix tokens.
3. Each a keeps its best b (ties: the lowest b). The r tokens of A with the highest best scores (ties: the
   lowest a) are merged into their b; r is clamped to (T - P) // 2, ToMe's rule.
4. Merging is a size-weighted mean: the token times its size is summed into b, sizes are summed, and b is
   divided by its new size.
5. Output order: the prefix tokens in their original order, then the unmerged A tokens in their original
   order, then all B tokens in order. For P <= 2 this is exactly ToMe's order; ToMe sorts the unmerged A
   tokens only when there is a class token (to keep it first), this module always sorts them (so every prefix
   token stays in place for any P, and the next block's alternate split sees tokens in a stable order).

Every shape depends only on T, P and r, so the graph exports with static shapes for a fixed r. Ties are broken
by the lowest index, in torch and in ONNX alike: ArgMax for the partner, and for the order a rank computed by
pairwise comparisons (a stable sort does not export to ONNX).
"""

from __future__ import annotations

from numbers import Integral
from typing import NamedTuple, Sequence

import torch

from ..errors import VWTError


class Matching(NamedTuple):
    """The discrete decisions of one merge step; indices into A (even positions) and B (odd positions)."""

    unmerged: torch.Tensor  # int64 [B, Ta - r], ascending
    sources: torch.Tensor  # int64 [B, r]
    destinations: torch.Tensor  # int64 [B, r]: the B token each source merges into


def clamp_r(r: int, tokens: int, num_prefix: int) -> int:
    """ToMe's rule: at most half the non-prefix tokens merge in one step, so at least P + 1 tokens remain."""
    return max(0, min(int(r), (tokens - num_prefix) // 2))


def parse_r(r: int | Sequence[int], depth: int) -> list[int]:
    """A constant r, or one r per block, as a list of `depth` non-negative integers."""
    if isinstance(r, (bool, str, bytes)):
        raise VWTError(f"r={r!r} is not a number of tokens (use a non-negative integer)")
    if isinstance(r, Integral):
        rs = [int(r)] * depth
    else:
        try:
            rs = list(r)
        except TypeError:
            raise VWTError(f"r={r!r} is not a number of tokens (use a non-negative integer or one per block)") from None
        if len(rs) != depth:
            raise VWTError(f"r has {len(rs)} values but the model has {depth} blocks (give one r, or one per block)")
    for v in rs:
        if isinstance(v, bool) or not isinstance(v, Integral) or v < 0:
            raise VWTError(f"r={r!r}: tokens merged per block must be non-negative integers")
    return [int(v) for v in rs]


def token_schedule(tokens: int, num_prefix: int, rs: Sequence[int]) -> tuple[list[int], list[int]]:
    """(tokens entering each block, the clamped r of each block). Without clamping, block i sees
    tokens - r * i tokens; the MLP of block i sees tokens - r * (i + 1)."""
    seen, used = [], []
    for r in rs:
        seen.append(tokens)
        r = clamp_r(r, tokens, num_prefix)
        used.append(r)
        tokens -= r
    return seen, used


def protection_mask(tokens: int, num_prefix: int, device: torch.device | None = None) -> torch.Tensor:
    """bool [Ta, Tb]: True where the pair (a, b) may merge, i.e. neither is a prefix token."""
    a_pos = torch.arange(0, tokens, 2, device=device)
    b_pos = torch.arange(1, tokens, 2, device=device)
    return (a_pos >= num_prefix)[:, None] & (b_pos >= num_prefix)[None, :]


def match_scores(metric: torch.Tensor, num_prefix: int) -> torch.Tensor:
    """metric[B, T, C] -> cosine similarities [B, Ta, Tb] between A and B tokens; prefix pairs score -inf."""
    metric = metric / metric.norm(dim=-1, keepdim=True)
    a, b = metric[:, ::2], metric[:, 1::2]
    scores = a @ b.transpose(-1, -2)
    allowed = protection_mask(metric.shape[1], num_prefix, metric.device)
    return torch.where(allowed, scores, torch.full_like(scores, float("-inf")))


def bipartite_matching(metric: torch.Tensor, r: int, num_prefix: int) -> Matching:
    """metric[B, T, C] -> the matching that merges r tokens of A into B (r already clamped, r >= 1)."""
    scores = match_scores(metric, num_prefix)
    best, best_b = scores.max(dim=-1)  # ties: the lowest b, as ONNX ArgMax
    order = stable_order(best, r)
    ta = best.shape[1]
    sources = order[:, ta - r:]
    return Matching(order[:, :ta - r], sources, best_b.gather(1, sources))


def decision_margin(metric: torch.Tensor, r: int, num_prefix: int) -> torch.Tensor:
    """metric[B, T, C] -> float [B]: how far this step's decisions are from a tie. The smallest of: the gap
    between the r-th and (r+1)-th best edge (which tokens merge), and each merged token's gap between its best
    and second-best partner (where it merges). Two correct implementations can only disagree where this is
    within float noise (DESIGN, "Verification of discrete decisions"); inf when no decision could flip."""
    scores = match_scores(metric, num_prefix)
    inf = torch.full(scores.shape[:1], float("inf"), device=scores.device, dtype=scores.dtype)
    top2 = scores.topk(min(2, scores.shape[-1]), dim=-1).values
    best = top2[..., 0]
    order = best.topk(min(r + 1, best.shape[-1]), dim=-1).values
    margin = order[:, r - 1] - order[:, r] if order.shape[-1] > r else inf
    if top2.shape[-1] == 2:
        second_gap = (top2[..., 0] - top2[..., 1]).masked_fill(best < order[:, r - 1:r], float("inf"))
        margin = torch.minimum(torch.as_tensor(margin), second_gap.min(dim=-1).values)
    return margin.nan_to_num(nan=float("inf"))


def descending_rank(values: torch.Tensor) -> torch.Tensor:
    """values[B, K] -> int64 [B, K]: each value's place in a stable descending sort (ties: the lower index
    first). Pairwise comparisons rather than a sort: torch's stable sort does not export to ONNX, and TopK's
    order of equal values is not specified by torch."""
    k = values.shape[1]
    pos = torch.arange(k, device=values.device)
    before = (values[:, None, :] > values[:, :, None]) | (
        (values[:, None, :] == values[:, :, None]) & (pos[None, :] < pos[:, None])[None])
    return before.sum(dim=-1)


def stable_order(best: torch.Tensor, r: int) -> torch.Tensor:
    """best[B, K] -> int64 [B, K]: the K - r indices that do not merge, ascending, then the r that do (the r
    highest scores), in descending score order."""
    k = best.shape[1]
    rank = descending_rank(best)
    merged = rank < r
    # where each index goes: unmerged ones keep their relative order at the front, merged ones follow by rank
    slot = torch.where(merged, rank + (k - r), torch.cumsum((~merged).long(), dim=1) - 1)
    # the inverse permutation: for slot j, the index i with slot[i] == j (a one-hot ArgMax, not a Scatter)
    pos = torch.arange(k, device=best.device)
    return (slot[:, :, None] == pos).float().argmax(dim=1)


def scatter_sum(dst: torch.Tensor, index: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
    """dst[B, T, C] with src[B, K, C] added to rows index[B, K] (repeats add up). A one-hot MatMul rather than
    ScatterElements(reduction="add"): TensorRT's scatter has no reduction and ONNX Runtime's CPU kernel has no
    float16 one; the product is tiny (T x K per image) next to the block's GEMMs."""
    onehot = (index[:, :, None] == torch.arange(dst.shape[1], device=dst.device)).to(src.dtype)
    return dst + onehot.transpose(1, 2) @ src


def _take(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x[B, T, C] gathered along tokens by index[B, K] -> [B, K, C]."""
    return x.gather(1, index[..., None].expand(-1, -1, x.shape[-1]))


def merge_tokens(x: torch.Tensor, size: torch.Tensor, m: Matching,
                 num_prefix: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x[B, T, C], size[B, T, 1] -> the merged sequence [B, T - r, C] and its sizes [B, T - r, 1] (size-weighted
    means, in the output order of the module docstring)."""
    weighted = torch.cat([x * size, size], dim=-1)  # one gather/scatter moves the tokens and their sizes
    a, b = weighted[:, ::2], weighted[:, 1::2]
    unm = _take(a, m.unmerged)
    src = _take(a, m.sources)
    dst = scatter_sum(b, m.destinations, src)
    pa, pb = (num_prefix + 1) // 2, num_prefix // 2  # prefix tokens that sit in A and in B
    prefix = [t for i in range(pa) for t in ([unm[:, i:i + 1]] + ([dst[:, i:i + 1]] if i < pb else []))]
    out = torch.cat([*prefix, unm[:, pa:], dst[:, pb:]], dim=1)
    out_x, out_size = out[..., :-1], out[..., -1:]
    return out_x / out_size, out_size


def proportional_bias(size: torch.Tensor) -> torch.Tensor:
    """size[B, T, 1] -> additive attention bias log(size) over keys, [B, 1, 1, T] (ToMe's proportional
    attention: a token standing for s patches gets the attention weight of s keys)."""
    return size.log()[:, None, None, :, 0]

