"""The hybrid: VWT grouping before the first block, then ToMe-style merging inside the blocks.

`HybridViT(model, vocab, threshold=..., r=...)` wraps (does not modify) a timm VisionTransformer:

    patch_embed -> _pos_embed -> norm_pre -> VWT TokenMerge (local grouping by default: vwt_export.vwt;
                                                 optionally no group across a tile x tile square)
    -> every block:  x = x + ls1(attention(norm1(x), bias = key mask [+ log(size)]))     (keys: the metric)
                     x, sizes = merge removed(L_b) tokens per image (vwt_export.hybrid.merge)
                     x = x + ls2(mlp(norm2(x)))
    -> norm -> head (size-weighted pooling for averaging heads; prefix tokens never merge)

The tokenizer is vwt_export.vwt's CompressedViT (matching, keys, TokenMerge); the block is ToMe's
(vwt_export.tome.model: attention that also returns its keys). A batch equals its images run one by one: see
merge.py for why the padded layout gives every image its own decisions.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from ..errors import VWTError
from ..tome.model import attention_with_keys, check_supported
from ..vwt.merge import attention_bias
from ..vwt import defaults
from ..vwt.inter import GROUPINGS
from ..vwt.model import CompressedViT
from ..vwt.vocab import Vocabulary
from .merge import Rule, merge_step, parse_rules, rule_label, tile_offsets

# Chosen on the real weights and photos (scripts/bench_tradeoff.py, README "Quality against speed"): a low
# threshold groups only near-identical neighbours, and the blocks merge a fraction of each image's own tokens
# rather than a count, so an image that grouping already left short is not emptied (a count of 8 left some
# images at cosine 0.2). Groups bounded to 2 x 2 squares (tile 2) kept more at every threshold (t=0.01 r=0.06:
# cosine 0.9963 against 0.9914 unbounded, at 66% and 62% of the tokens); t=0.015 r=0.055 tile 2 kept 0.9958 (min
# 0.984) at 65% of the tokens where ToMe r=16 keeps 0.9934 (min 0.949) at 66%. Grouping and proportional
# attention are VWT's.
DEFAULTS = {"threshold": 0.015, "r": 0.055, "grouping": defaults.GROUPING, "prop_attn": defaults.PROP_ATTN, "tile": 2}


def check_tile(tile) -> int:
    """`tile` as the model takes it: 0 (groups unbounded) or the side, in patches, of the squares no group crosses."""
    if isinstance(tile, bool) or not isinstance(tile, int) or tile == 1 or tile < 0:
        raise VWTError(f"tile={tile!r}: a group's extent is 0 (unbounded) or a square of >= 2 patches a side")
    return tile


def attention_half(blk: nn.Module, x: torch.Tensor, sizes: torch.Tensor,
                   prop_attn: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """A timm Block up to its merge: x[B, T, D], sizes [B, T] -> (x + attention, the merge metric [B, T, head_dim]:
    the keys averaged over heads). The graph exports this half as it is (graph/hybrid_export.py)."""
    attn_out, metric = attention_with_keys(blk.attn, blk.norm1(x), attention_bias(sizes, prop_attn, x.dtype))
    return x + blk.drop_path1(blk.ls1(attn_out)), metric


def mlp_half(blk: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A timm Block after its merge: x + MLP (exported as it is, too)."""
    return x + blk.drop_path2(blk.ls2(blk.mlp(blk.norm2(x))))


def hybrid_block(blk: nn.Module, x: torch.Tensor, sizes: torch.Tensor, rule: Rule, num_prefix: int, prop_attn: bool,
                 margins: list | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One timm Block on a padded batch x[B, T, D] with sizes float32 [B, T] (0 for pads), merging between
    attention and MLP. With `margins`, the step's decision margin per image [B] is appended to it."""
    x, metric = attention_half(blk, x, sizes, prop_attn)
    x, sizes = merge_step(x, metric, sizes, rule, num_prefix, margins)
    return mlp_half(blk, x), sizes


class HybridViT(nn.Module):
    """The hybrid model. After each call `last_block_tokens` [B, depth] holds the real tokens each block's
    attention saw per image (prefix included), and `last_token_counts` [B] their mean (the figure reports
    compare with ToMe's mean tokens per block). `vwt` is the tokenizer (features, match, unit_words)."""

    def __init__(self, model: nn.Module, vocab: Vocabulary, *, threshold: float = DEFAULTS["threshold"],
                 r: int | float | Sequence[int | float] = DEFAULTS["r"], space: str | None = None,
                 grouping: str = DEFAULTS["grouping"], prop_attn: bool = DEFAULTS["prop_attn"],
                 tile: int = DEFAULTS["tile"]):
        super().__init__()
        check_supported(model)
        if grouping not in GROUPINGS:
            raise VWTError(f"unknown grouping '{grouping}' (use one of {', '.join(GROUPINGS)})")
        self.tile = check_tile(tile)
        self.vwt = CompressedViT(model, "inter", vocab=vocab, threshold=threshold, space=space, prop_attn=prop_attn,
                                 grouping=grouping)
        self.model = model
        self.rules = parse_rules(r, len(model.blocks))
        self.r = r
        self.prop_attn = bool(prop_attn)
        self.num_prefix = int(model.num_prefix_tokens)
        self.tokens_in = self.vwt.tokens_in
        self.last_block_tokens: torch.Tensor | None = None
        self.last_token_counts: torch.Tensor | None = None

    # the tokenizer's facts, read by checks that compare a graph's keys with torch's
    mode = "inter"
    threshold = property(lambda self: self.vwt.threshold)
    unit_words = property(lambda self: self.vwt.unit_words)
    grouping = property(lambda self: self.vwt.grouping)
    space = property(lambda self: self.vwt.space)
    grid_w = property(lambda self: self.vwt.grid_w)

    def extra_repr(self) -> str:
        return (f"threshold={self.threshold}, grouping={self.grouping}, tile={self.tile}, space={self.space}, "
                f"prop_attn={self.prop_attn}, r=[{', '.join(map(rule_label, self.rules))}]")

    def group_keys(self, pixels: torch.Tensor, keys: torch.Tensor | None = None) -> torch.Tensor:
        """The matching's keys (the model's own, or given: a graph's "vwt/keys") -> TokenMerge's keys: with
        `tile`, offset so that no group crosses a tile."""
        keys = self.match(pixels) if keys is None else keys.to(torch.int64)
        if not self.tile:
            return keys
        grid_w = pixels.shape[-1] // self.vwt.patch_size
        return keys + tile_offsets(keys.shape[1], grid_w, self.tile, self.unit_words.shape[0]).to(keys.device)

    def near_ties(self, pixels: torch.Tensor) -> torch.Tensor:
        """bool [B, N]: patches whose word match another correct implementation may make differently."""
        return self.vwt.near_ties(pixels)

    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.vwt.features(pixels)

    def match(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.vwt.match(pixels)

    def run_blocks(self, x: torch.Tensor, sizes: torch.Tensor, margins: list | None = None,
                   trace: list | None = None) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """TokenMerge's output (tokens [B, T, D], sizes float32 [B, T], 0 for pads) -> (normed tokens, sizes,
        real tokens per image before each block): the trunk the exported graph runs after vwt::TokenMerge, with
        no side effects. `trace` (a list) receives (tokens, sizes) after each block; `margins` each merging
        block's decision margins [B]."""
        lengths = []
        for blk, rule in zip(self.model.blocks, self.rules):
            lengths.append((sizes > 0).sum(dim=1))
            x, sizes = hybrid_block(blk, x, sizes, rule, self.num_prefix, self.prop_attn, margins)
            if trace is not None:
                trace.append((x, sizes))
        return self.model.norm(x), sizes, lengths

    @torch.no_grad()
    def forward_tokens(self, x: torch.Tensor, sizes: torch.Tensor, margins: list | None = None,
                       trace: list | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """run_blocks, recording `last_block_tokens`."""
        x, sizes, lengths = self.run_blocks(x, sizes, margins, trace)
        if lengths:
            self.last_block_tokens = torch.stack(lengths, dim=1).cpu()
        return x, sizes

    @torch.no_grad()
    def forward_features(self, pixels: torch.Tensor, keys: torch.Tensor | None = None, margins: list | None = None,
                         trace: list | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        x, sizes = self.vwt.tokenize(pixels, self.group_keys(pixels, keys))
        return self.forward_tokens(x, sizes, margins, trace)

    @torch.no_grad()
    def decision_margins(self, pixels: torch.Tensor, keys: torch.Tensor | None = None) -> torch.Tensor:
        """float [B]: per image, the smallest margin of any in-block merge decision (inf when nothing merges),
        given the keys (the model's own matching when None). Below vwt_export.vwt.NEAR_TIE_EPS another correct
        implementation may merge differently: a near-tie, not an error. Key near-ties are vwt.near_ties'."""
        margins: list[torch.Tensor] = []
        self.forward_features(pixels, keys, margins)
        if not margins:
            return torch.full((pixels.shape[0],), float("inf"))
        return torch.stack(margins).min(dim=0).values.cpu()

    def forward_head(self, x: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
        return self.vwt.forward_head(x, sizes)

    def forward(self, pixels: torch.Tensor, keys: torch.Tensor | None = None) -> torch.Tensor:
        """pixels -> logits (features for a headless model); given `keys` [B, N] (a graph's) replace matching."""
        x, sizes = self.forward_features(pixels, keys)
        self.last_token_counts = self.last_block_tokens.float().mean(dim=1)
        return self.forward_head(x, sizes)


def compress_hybrid(model: nn.Module, vocab: Vocabulary, **options) -> HybridViT:
    """Wrap a timm ViT (from `load_model`) with the hybrid, in eval mode; options: threshold, r, space, grouping,
    prop_attn, tile (DEFAULTS)."""
    return HybridViT(model, vocab, **options).eval()
