"""Inter-image tokenization: patches that match the same visual word become one token.

`word_labels` is the executable spec of the `vwt::WordLabels` op (tmlr2025 semantics):
  1. d[b,n,v] = 1 - cos(f[b,n], W[v]); key = argmin_v, distance = min_v.
  2. matched (distance <= threshold) -> key = word index; unmatched -> V + rank among the image's
     unmatched patches (raster order). The reference `main` branch offsets by the feature width instead of
     V, which can collide with real word indices when F < V; tmlr2025 (and this code) use V.
  3. labels = keys renumbered densely from 0 in ascending key order.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def normalized_words(vocab: torch.Tensor) -> torch.Tensor:
    """Unit-norm visual words [V, F] (computed once per vocabulary, not per call)."""
    return F.normalize(vocab.float(), p=2, dim=-1)


def cosine_distance(features: torch.Tensor, unit_words: torch.Tensor) -> torch.Tensor:
    """features[B, N, F], unit_words[V, F] -> 1 - cos [B, N, V]."""
    return 1.0 - F.normalize(features.float(), p=2, dim=-1) @ unit_words.T


def word_labels(features: torch.Tensor, unit_words: torch.Tensor, threshold: float) -> torch.Tensor:
    """features[B, N, F] -> dense group labels int64 [B, N]."""
    distance, best = cosine_distance(features, unit_words).min(dim=-1)
    matched = distance <= threshold
    unmatched_rank = torch.cumsum(~matched, dim=1) - 1
    keys = torch.where(matched, best, unit_words.shape[0] + unmatched_rank)
    return dense_relabel(keys)


def dense_relabel(keys: torch.Tensor) -> torch.Tensor:
    """Renumber keys[B, N] per row to 0..M_b-1, preserving their ascending order."""
    sorted_keys, order = keys.sort(dim=1, stable=True)
    new_group = torch.zeros_like(sorted_keys)
    new_group[:, 1:] = sorted_keys[:, 1:] != sorted_keys[:, :-1]
    return torch.empty_like(new_group).scatter_(1, order, new_group.cumsum(dim=1))
