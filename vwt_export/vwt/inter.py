"""Inter-image tokenization: patches that match the same visual word become one token (tmlr2025 semantics).

The executable spec of the ops v2 split (DESIGN.md, "The ops"):

  match_keys    f[B,N,F] -> keys i64[B,N]: sim = normalize(f) @ unit_words.T; best = argmax (ties: lowest
                index), top = max; matched (cosine distance 1 - top <= threshold) -> key = best, else V + n
                (n = patch index; V + n keeps unmatched patches apart and in raster order, which is exactly
                tmlr2025's "V + rank among unmatched patches" after dense relabelling). The reference `main`
                branch offsets by the feature width instead of V, which collides with real words when F < V.
  dense_relabel keys -> labels 0..M_b-1 per image in ascending key order; with grid_w > 0 (local grouping) a
                group is first split into its 4-connected components on the patch grid, ordered by
                (key, first patch of the component in raster order).

Standard ops do the matching in the graphs (surgery.py); vwt::TokenMerge does the relabelling and merging.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import VWTError

# Cosine units. Two correct float32 implementations of `similarity` (torch vs an ONNX runtime's ReduceL2 and
# GEMM) sum the F products of a dot product and the F squares of a norm in different orders. Measured, torch vs
# ONNX Runtime CPU, 32 x 196 patches x 1000 words: the largest cosine difference was 4.8e-7 (F = 48), 8.3e-7
# (F = 588), 1.1e-6 (F = 768). 1e-5 is ~10x that (room for GPU GEMMs, TF32 excluded), yet flags few real
# patches: 4 of 6272 (0.06%) on the demo images with a 996-word image-space vocabulary (threshold 0.1).
NEAR_TIE_EPS = 1e-5


def normalized_words(vocab: torch.Tensor) -> torch.Tensor:
    """Unit-norm visual words [V, F] (computed once per vocabulary, not per call)."""
    return F.normalize(vocab.float(), p=2, dim=-1)


def _ordered(x: np.float32) -> int:
    """A float32's position in the order of all float32 values (monotone, -inf < ... < -0 < +0 < ... < inf)."""
    bits = int(np.array(x, np.float32).view(np.int32))
    return bits ^ 0x7FFFFFFF if bits < 0 else bits


def _from_ordered(key: int) -> np.float32:
    bits = key ^ 0x7FFFFFFF if key < 0 else key
    return np.array(bits, np.int32).view(np.float32)[()]


def cosine_threshold(threshold: float) -> float:
    """The float32 cosine c* such that, for every float32 cosine c, `c >= c*` exactly when the float32 distance
    fl(1 - c) <= float32(threshold): the reference's `distance <= threshold` test, bit for bit.

    Rounding is monotone, so the matched cosines form a ray [c*, inf); a binary search over the float32 values
    finds its end. c* is float32(1 - threshold) give or take a few ulps. Graphs store c* as their constant, so
    torch and ONNX compare against the same number."""
    t, one = np.float32(threshold), np.float32(1.0)

    def matched(key: int) -> bool:
        return bool(np.float32(one - _from_ordered(key)) <= t)

    lo, hi = _ordered(np.float32(-np.inf)), _ordered(np.float32(np.inf))
    if not matched(hi):
        return float("inf")  # a NaN threshold matches nothing
    while lo < hi:  # invariant: matched(hi); the answer lies in [lo, hi]
        mid = (lo + hi) // 2
        if matched(mid):
            hi = mid
        else:
            lo = mid + 1
    return float(_from_ordered(hi))


def similarity(features: torch.Tensor, unit_words: torch.Tensor) -> torch.Tensor:
    """features[B, N, F], unit_words[V, F] -> cosine similarity float32 [B, N, V]."""
    return F.normalize(features.float(), p=2, dim=-1) @ unit_words.T


def cosine_distance(features: torch.Tensor, unit_words: torch.Tensor) -> torch.Tensor:
    """features[B, N, F], unit_words[V, F] -> 1 - cos [B, N, V]."""
    return 1.0 - similarity(features, unit_words)


def unmatched_keys(batch: int, num_patches: int, num_words: int, device=None) -> torch.Tensor:
    """V + n for every patch n: the key a patch gets when no word is near enough."""
    return (num_words + torch.arange(num_patches, device=device)).expand(batch, num_patches)


def match_keys(features: torch.Tensor, unit_words: torch.Tensor, threshold: float) -> torch.Tensor:
    """features[B, N, F] -> keys int64 [B, N]: the nearest word's index, or V + n when it is not near enough."""
    top, best = similarity(features, unit_words).max(dim=-1)  # torch.max: the first maximal index on ties
    matched = top >= cosine_threshold(threshold)
    b, n = best.shape
    return torch.where(matched, best, unmatched_keys(b, n, unit_words.shape[0], best.device))


def near_ties(features: torch.Tensor, unit_words: torch.Tensor, threshold: float,
              eps: float = NEAR_TIE_EPS) -> torch.Tensor:
    """bool [B, N]: patches whose key could flip between two correct implementations of match_keys: the two
    most similar words are within eps (and the patch is matched, or nearly), or the best cosine is within eps
    of the threshold."""
    sim = similarity(features, unit_words)
    if sim.shape[-1] >= 2:
        top2 = sim.topk(2, dim=-1).values
        top, second = top2[..., 0], top2[..., 1]
    else:
        top, second = sim[..., 0], torch.full_like(sim[..., 0], -float("inf"))
    c = cosine_threshold(threshold)
    word_tie = (top - second <= eps) & (top >= c - eps)
    threshold_tie = (top - c).abs() <= eps
    return word_tie | threshold_tie


def component_roots(keys: torch.Tensor, grid_w: int) -> torch.Tensor:
    """keys[B, N] on a grid grid_w wide (raster order) -> for each patch, the first patch (raster order) of its
    4-connected component of equal keys.

    Min-label propagation: every patch starts as its own root and repeatedly takes the smallest root among
    itself and its equal-key neighbours, then jumps to its root's root (pointer jumping: a root is always a
    patch of the same component that comes no later, so this is safe and cuts the rounds). At the fixed point
    the root is constant over each component and belongs to it, so it is the component's first patch."""
    b, n = keys.shape
    neighbours = grid_neighbours(n, grid_w, keys.device)  # [N, 4]; a missing neighbour is the patch itself
    same = keys[:, neighbours] == keys.unsqueeze(-1)  # [B, N, 4]
    big = torch.iinfo(torch.int64).max
    roots = torch.arange(n, device=keys.device).expand(b, n).clone()
    for _ in range(n + 1):  # each round that changes something lowers a root, so n rounds always suffice
        candidates = torch.where(same, roots[:, neighbours], big).amin(dim=-1)
        new = torch.minimum(roots, candidates)
        new = new.gather(1, new)
        if torch.equal(new, roots):
            break
        roots = new
    return roots


def grid_neighbours(n: int, grid_w: int, device=None) -> torch.Tensor:
    """int64 [N, 4]: left, right, up, down neighbour of each patch on a grid grid_w wide; the patch itself where
    there is none (a row's last patch has no right neighbour: the next row's first patch is not adjacent)."""
    i = torch.arange(n, device=device)
    col = i % grid_w
    left = torch.where(col > 0, i - 1, i)
    right = torch.where((col < grid_w - 1) & (i + 1 < n), i + 1, i)
    up = torch.where(i >= grid_w, i - grid_w, i)
    down = torch.where(i + grid_w < n, i + grid_w, i)
    return torch.stack([left, right, up, down], dim=1)


GROUPINGS = ("global", "local")  # every patch matching a word merges; only 4-connected patches of a word merge


def grid_width(grouping: str, grid: tuple[int, int]) -> int:
    """The grid_w that token merging takes for a grouping on a patch grid (rows, columns): 0 for global
    grouping, the grid's width for local grouping."""
    if grouping not in GROUPINGS:
        raise VWTError(f"unknown grouping {grouping!r} (use one of {', '.join(GROUPINGS)})")
    return int(grid[1]) if grouping == "local" else 0


def check_grid(num_patches: int, grid_w: int) -> None:
    if grid_w < 0 or (grid_w > 0 and num_patches % grid_w):
        raise VWTError(f"grid_w={grid_w} does not divide the {num_patches} patches into rows; local grouping "
                       "needs grid_w = the patch grid's width")


def dense_relabel(keys: torch.Tensor, grid_w: int = 0) -> torch.Tensor:
    """Renumber keys[B, N] per row to 0..M_b-1 in ascending key order; with grid_w > 0, each group's
    4-connected components on the grid get their own labels, ordered by (key, first patch)."""
    check_grid(keys.shape[1], grid_w)
    if grid_w > 0 and keys.numel():
        # sort by first patch, then (stably) by key: the order is (key, first patch)
        roots = component_roots(keys, grid_w)
        by_root = roots.argsort(dim=1, stable=True)
        by_key = keys.gather(1, by_root).argsort(dim=1, stable=True)
        order = by_root.gather(1, by_key)
        sorted_keys, sorted_roots = keys.gather(1, order), roots.gather(1, order)
        new_group = torch.zeros_like(sorted_keys)
        new_group[:, 1:] = (sorted_keys[:, 1:] != sorted_keys[:, :-1]) | (sorted_roots[:, 1:] != sorted_roots[:, :-1])
    else:
        sorted_keys, order = keys.sort(dim=1, stable=True)
        new_group = torch.zeros_like(sorted_keys)
        new_group[:, 1:] = sorted_keys[:, 1:] != sorted_keys[:, :-1]
    return torch.empty_like(new_group).scatter_(1, order, new_group.cumsum(dim=1))


def word_labels(features: torch.Tensor, unit_words: torch.Tensor, threshold: float, grid_w: int = 0) -> torch.Tensor:
    """features[B, N, F] -> dense group labels int64 [B, N]."""
    return dense_relabel(match_keys(features, unit_words, threshold), grid_w)
