"""The hybrid's in-block merge: ToMe's bipartite soft matching on padded, per-image variable-length sequences.

After VWT's TokenMerge an image b has L_b real tokens (P prefix tokens, then its groups) followed by pads (size
0) up to the batch's length T. One in-block merge step must give every image exactly what it would get run
alone, with no padding:

* Alone, an image merges r_b = removed(L_b) tokens (ToMe's rule: min(r, (L_b - P) // 2), or a fraction of its
  non-prefix tokens). In the batch the sequence loses removed(T) >= r_b slots: the image's r_b merges plus
  removed(T) - r_b of its pads. `removed` keeps L - removed(L) non-decreasing, so the longest image still fits
  and the others have pads enough to give (removed(T) - removed(L) <= T - L).
* Pads never match: a pad is neither a source (A) nor a destination (B); prefix tokens are protected as in
  vwt_export.tome.merge. Real tokens sit at positions 0..L_b-1, so the alternate A/B split of the real tokens
  is the one the image alone sees, and their scores, partners and ranks are the same.
* Output layout: [prefix][unmerged real A in order][real B in order][pads]. The real part is ToMe's order
  (vwt_export.tome.merge), so the next block's split is again the image's own, block after block. An image
  that merges nothing (r_b = 0) keeps its order, as alone, where the step is skipped.

The step is the torch reference of the graph's vwt::BlockMerge op (merge_step); its C++ kernel
(plugins/common/vwt_block_merge.h) and its standard-op body (vwt_export/graph/ops.py) are tested against it.
"""

from __future__ import annotations

from fractions import Fraction
from numbers import Integral, Real
from typing import NamedTuple, Sequence, Union

import torch

from ..errors import VWTError
from ..tome.merge import descending_rank, match_scores

# One block's merge rule: a count r (ToMe's r), or a fraction of the block's non-prefix tokens (per image).
Rule = Union[int, Fraction]
MAX_FRACTION = Fraction(1, 2)  # ToMe's clamp: at most half the non-prefix tokens merge in a step


def parse_rule(value) -> Rule:
    """An int >= 0 is a count; a float in [0, 0.5] (or a Fraction) is a fraction of the current non-prefix
    tokens, stored as an exact ratio (limit_denominator(1000)) so torch and ONNX floor the same integers."""
    if isinstance(value, bool) or isinstance(value, (str, bytes)):
        raise VWTError(f"r={value!r} is not a merge rule (use a token count >= 0, or a fraction in [0, 0.5])")
    if isinstance(value, Integral):
        if value < 0:
            raise VWTError(f"r={value}: tokens merged per block must be non-negative")
        return int(value)
    if isinstance(value, Real):
        f = Fraction(float(value)).limit_denominator(1000) if not isinstance(value, Fraction) else value
        if not 0 <= f <= MAX_FRACTION:
            raise VWTError(f"r={value}: a fraction of the tokens merged per block lies in [0, 0.5]")
        return f
    raise VWTError(f"r={value!r} is not a merge rule (use a token count >= 0, or a fraction in [0, 0.5])")


def parse_rules(r, depth: int) -> list[Rule]:
    """One rule for every block, or one per block (a decreasing schedule, say), as `depth` rules."""
    if isinstance(r, (list, tuple)):
        if len(r) != depth:
            raise VWTError(f"r has {len(r)} values but the model has {depth} blocks (give one r, or one per block)")
        return [parse_rule(v) for v in r]
    return [parse_rule(r)] * depth


def rule_label(rule: Rule) -> str:
    return str(rule) if isinstance(rule, int) else f"{float(rule):g}"


def removed(length: int, num_prefix: int, rule: Rule) -> int:
    """Tokens a sequence of `length` real tokens loses in one step. Both rules keep length - removed(length)
    non-decreasing in length, which the batch layout needs."""
    n = length - num_prefix
    want = rule if isinstance(rule, int) else n * rule.numerator // rule.denominator
    return max(0, min(want, n // 2))


def removed_per_image(lengths: torch.Tensor, num_prefix: int, rule: Rule) -> torch.Tensor:
    """int64 [B]: r_b = removed(L_b) for every image's real length L_b (prefix tokens included)."""
    n = (lengths - num_prefix).clamp(min=0)
    want = torch.full_like(n, rule) if isinstance(rule, int) else n * rule.numerator // rule.denominator
    return torch.minimum(want, n // 2)


def schedule(length: int, num_prefix: int, rules: Sequence[Rule]) -> list[int]:
    """Tokens each block's attention sees, for one image of `length` real tokens run alone."""
    seen = []
    for rule in rules:
        seen.append(length)
        length -= removed(length, num_prefix, rule)
    return seen


class Matching(NamedTuple):
    """One step's decisions, per image; indices into A (even positions) and B (odd positions)."""

    merged: torch.Tensor  # bool [B, Ta]: the A tokens merged away (exactly r_b real ones per image)
    partner: torch.Tensor  # int64 [B, Ta]: the B token each A token would merge into


def pad_aware_scores(metric: torch.Tensor, sizes: torch.Tensor, num_prefix: int) -> torch.Tensor:
    """metric[B, T, C], sizes[B, T] -> cosine scores [B, Ta, Tb]; -inf wherever a prefix token or a pad takes
    part, so neither can ever be chosen."""
    scores = match_scores(metric, num_prefix)
    real = sizes > 0
    allowed = real[:, ::2, None] & real[:, None, 1::2]
    return torch.where(allowed, scores, torch.full_like(scores, float("-inf")))


def bipartite_matching(metric: torch.Tensor, sizes: torch.Tensor, r_img: torch.Tensor, num_prefix: int) -> Matching:
    """Each A token's best B (ties: the lowest b); per image the r_img[b] A tokens with the highest scores merge
    (ties: the lowest a). Real A tokens have finite scores whenever r_img > 0, so only they are chosen."""
    best, partner = pad_aware_scores(metric, sizes, num_prefix).max(dim=-1)
    return Matching(descending_rank(best) < r_img[:, None], partner)


def decision_margin(metric: torch.Tensor, sizes: torch.Tensor, r_img: torch.Tensor, num_prefix: int) -> torch.Tensor:
    """float [B]: how far each image's decisions are from a tie: the gap between its r_b-th and (r_b+1)-th best
    edge, and each merged token's gap between its best and second-best partner (as
    vwt_export.tome.merge.decision_margin, with r per image and pads out); inf when nothing could flip."""
    scores = pad_aware_scores(metric.float(), sizes, num_prefix)
    b, ta, tb = scores.shape
    inf = torch.full((b,), float("inf"), device=scores.device)
    if ta == 0 or tb == 0:
        return inf
    top2 = scores.topk(min(2, tb), dim=-1).values
    best = top2[..., 0]
    ordered = best.sort(dim=-1, descending=True).values
    r = r_img.clamp(max=ta)
    last = ordered.gather(1, (r - 1).clamp(min=0)[:, None])[:, 0]  # the weakest merged edge
    following = ordered.gather(1, r.clamp(max=ta - 1)[:, None])[:, 0]
    margin = torch.where((r >= 1) & (r < ta), last - following, inf)
    if top2.shape[-1] == 2:
        second = (top2[..., 0] - top2[..., 1]).masked_fill(best < last[:, None], float("inf")).min(dim=-1).values
        margin = torch.minimum(margin, torch.where(r >= 1, second, inf))
    return margin.nan_to_num(nan=float("inf"), posinf=float("inf"))


def output_slots(sizes: torch.Tensor, merged: torch.Tensor, num_prefix: int) -> torch.Tensor:
    """int64 [B, T]: where each input token goes in [prefix][unmerged real A][real B][pads]; merged A tokens
    get T (no slot: they live on in their partner's). Pads are numbered after the real tokens, so those past
    the output length fall off the end."""
    t = sizes.shape[1]
    pos = torch.arange(t, device=sizes.device)
    is_a = pos % 2 == 0
    prefix = pos < num_prefix
    real = sizes > 0
    merged_full = merged[:, pos // 2] & is_a  # merged A flags at their sequence positions (a Gather)
    unmerged_a = real & is_a & ~prefix & ~merged_full
    real_b = real & ~is_a & ~prefix
    pads = ~real
    n_a = unmerged_a.sum(dim=1, keepdim=True)
    n_b = real_b.sum(dim=1, keepdim=True)

    def rank(mask):  # position among the tokens of this kind, from 0
        return mask.long().cumsum(dim=1) - 1

    slot = torch.full_like(pos, t).expand_as(sizes)
    slot = torch.where(pads, num_prefix + n_a + n_b + rank(pads), slot)
    slot = torch.where(real_b, num_prefix + n_a + rank(real_b), slot)
    slot = torch.where(unmerged_a, num_prefix + rank(unmerged_a), slot)
    slot = torch.where(prefix, pos, slot)
    # an image that merges nothing keeps its order, as it does alone (where the step is skipped); it fits:
    # removed(L) = 0 gives L <= T - removed(T)
    return torch.where(merged.any(dim=1, keepdim=True), slot, pos)


def merge_tokens(x: torch.Tensor, sizes: torch.Tensor, m: Matching, num_prefix: int,
                 t_out) -> tuple[torch.Tensor, torch.Tensor]:
    """x[B, T, C], sizes float32 [B, T] -> the merged sequence [B, t_out, C] and its sizes [B, t_out]:
    size-weighted means, laid out as output_slots says; pads come out as zero tokens of size 0."""
    s = sizes.to(x.dtype).unsqueeze(-1)
    weighted = torch.cat([x * s, s], dim=-1)  # one gather moves the tokens and their sizes; pads weigh 0
    a, b = weighted[:, ::2], weighted[:, 1::2]
    # merged A tokens summed into their partners: a one-hot [Tb, Ta] MatMul (no scatter-add)
    into = (m.partner[:, None, :] == torch.arange(b.shape[1], device=x.device)[None, :, None]) & m.merged[:, None, :]
    b = b + into.to(x.dtype) @ a
    # the new order: for each output slot, the token that fills it (a one-hot ArgMax inverts the slots)
    slots = output_slots(sizes, m.merged, num_prefix)
    source = (slots[:, None, :] == torch.arange(t_out, device=x.device)[None, :, None]).float().argmax(dim=-1)
    index = torch.where(source % 2 == 0, source // 2, a.shape[1] + source // 2)  # into cat([A, B])
    out = torch.cat([a, b], dim=1).gather(1, index[..., None].expand(-1, -1, weighted.shape[-1]))
    out_x, out_size = out[..., :-1], out[..., -1]
    return out_x / out_size.clamp(min=1).unsqueeze(-1), out_size.float()


def merge_step(x: torch.Tensor, metric: torch.Tensor, sizes: torch.Tensor, rule: Rule, num_prefix: int,
               margins: list | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One in-block merge, what the graph's vwt::BlockMerge node computes: x[B, T, D], metric[B, T, C] (the keys
    averaged over heads), sizes float32 [B, T] -> (x, sizes) [B, T - removed(T), ...]. Every image b merges
    r_b = removed(L_b) of its own tokens. A step that removes nothing (removed(T) = 0) returns its input, as an
    image alone skips it. Pads' token values are unspecified (here as given or zero; BlockMerge gives zero). With `margins`, the step's decision margin per image [B] is appended to it."""
    t_out = x.shape[1] - removed(x.shape[1], num_prefix, rule)
    if t_out == x.shape[1]:
        return x, sizes
    r_img = removed_per_image((sizes > 0).sum(dim=1), num_prefix, rule)
    if margins is not None:
        margins.append(decision_margin(metric, sizes, r_img, num_prefix))
    return merge_tokens(x, sizes, bipartite_matching(metric, sizes, r_img, num_prefix), num_prefix, t_out)


def tile_offsets(num_patches: int, grid_w: int, tile: int, num_words: int) -> torch.Tensor:
    """int64 [N]: added to the matching's keys (each in [0, V + N)) so that equal keys in different tile x tile
    squares of the patch grid differ: no group crosses a tile, a token stands for at most tile^2 patches. Groups
    then come tile by tile (TokenMerge orders them by key). tile = 0: all zeros."""
    if tile == 0:
        return torch.zeros(num_patches, dtype=torch.int64)
    n = torch.arange(num_patches)
    tiles_w = -(-grid_w // tile)
    return (n // grid_w // tile * tiles_w + n % grid_w // tile) * (num_words + num_patches)
