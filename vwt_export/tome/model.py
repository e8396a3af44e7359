"""A timm ViT with Token Merging (ToMe) in every block: the only file that knows timm's Block and Attention.

`ToMeViT(model, r)` wraps (does not modify) a timm VisionTransformer and runs the model's own modules:

    patch_embed -> _pos_embed -> patch_drop -> norm_pre
    -> every block:  x = x + drop_path1(ls1(attention(norm1(x), bias = log(size))))   (keys kept: the metric)
                     x, size = merge r tokens (bipartite soft matching on the keys, size-weighted means)
                     x = x + drop_path2(ls2(mlp(norm2(x))))
    -> norm -> head (size-weighted pooling for averaging heads; the class token is never merged)

This is where ToMe's reference (facebookresearch/ToMe, tome/patch/timm.py) merges: between attention and MLP,
with the keys of that block's attention averaged over heads; unlike the reference, timm's LayerScale (ls1,
ls2), q_norm/k_norm and attention gates are applied as the timm block applies them. Attention is re-implemented
rather than called because ToMe needs its keys; it follows timm's Attention.forward op for op (fused or not,
as the module is configured), so r=0 gives exactly model(x).
"""

from __future__ import annotations

import logging
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import models as _models
from ..errors import VWTError
from ..heads import forward_head
from .merge import bipartite_matching, decision_margin, merge_tokens, parse_r, proportional_bias, token_schedule

log = logging.getLogger(__name__)


def check_supported(model: nn.Module) -> None:
    """One clear line when the model's blocks are not timm's pre-norm Block with its standard Attention."""
    from timm.layers import Attention
    from timm.models.vision_transformer import Block, VisionTransformer

    if not isinstance(model, VisionTransformer):
        raise VWTError(f"ToMe needs a timm VisionTransformer, not {type(model).__name__}")
    for i, blk in enumerate(model.blocks):
        if type(blk).forward is not Block.forward or not isinstance(blk, Block):
            raise VWTError(f"ToMe supports timm's standard ViT Block; block {i} is {type(blk).__name__}")
        if not isinstance(blk.attn, Attention) or type(blk.attn).forward is not Attention.forward:
            raise VWTError(f"ToMe supports timm's standard Attention; block {i} has {type(blk.attn).__name__}")
    if model.attn_pool is None and model.global_pool not in ("token", "avg", "max", "avgmax"):
        raise VWTError(f"ToMe changes the token count, so a model returning all tokens (global_pool="
                       f"'{model.global_pool}') has no fixed output; use a pooled head (token or avg)")


def attention_with_keys(attn: nn.Module, x: torch.Tensor,
                        bias: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """timm's Attention.forward on x[B, T, C] with an additive key bias, also returning ToMe's metric: the
    keys (after k_norm) averaged over heads, [B, T, head_dim]."""
    b, t, _ = x.shape
    gate = attn.gate(x).sigmoid() if attn.gate is not None else None
    qkv = attn.qkv(x).reshape(b, t, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    if attn.fused_attn:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias,
                                             dropout_p=attn.attn_drop.p if attn.training else 0.0)
    else:
        scores = (q * attn.scale) @ k.transpose(-2, -1)
        if bias is not None:
            scores = scores + bias
        out = attn.attn_drop(scores.softmax(dim=-1)) @ v
    out = attn.norm(out.transpose(1, 2).reshape(b, t, attn.attn_dim))
    if gate is not None:
        out = out * gate
    return attn.proj_drop(attn.proj(out)), k.mean(dim=1)


def tome_block(blk: nn.Module, x: torch.Tensor, size: torch.Tensor | None, r: int, num_prefix: int,
               prop_attn: bool, margins: list | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One timm Block with ToMe between attention and MLP. size is None until the first merge (all ones).
    With `margins`, the step's decision margin per image is appended to it."""
    bias = proportional_bias(size).to(x.dtype) if prop_attn and size is not None else None
    attn_out, metric = attention_with_keys(blk.attn, blk.norm1(x), bias)
    x = x + blk.drop_path1(blk.ls1(attn_out))
    if r > 0:
        if size is None:
            size = x.new_ones(x.shape[0], x.shape[1], 1)
        if margins is not None:
            margins.append(decision_margin(metric.float(), r, num_prefix))
        x, size = merge_tokens(x, size, bipartite_matching(metric, r, num_prefix), num_prefix)
    x = x + blk.drop_path2(blk.ls2(blk.mlp(blk.norm2(x))))
    return x, size


class ToMeViT(nn.Module):
    """The ToMe model. Static facts (no forward needed): `tokens_in` = P + N, `block_tokens[i]` = tokens block i's
    attention sees (P + N - r*i until r is clamped), `block_r[i]` = tokens block i merges (`r_capped`: whether the
    r asked for was cut to that), `tokens_out`, `mean_tokens` = mean of block_tokens. After each call `last_token_counts` holds mean_tokens per image
    (float; every image has the same schedule), the figure the reports compare with VWT's tokens per block."""

    def __init__(self, model: nn.Module, r: int | Sequence[int], prop_attn: bool = True):
        super().__init__()
        check_supported(model)
        self.model = model
        self.prop_attn = bool(prop_attn)
        self.num_prefix = int(model.num_prefix_tokens)
        self.num_patches = int(model.patch_embed.num_patches)
        self.tokens_in = self.num_prefix + self.num_patches
        self.r = r
        asked = parse_r(r, len(model.blocks))
        self.block_tokens, self.block_r = token_schedule(self.tokens_in, self.num_prefix, asked)
        self.r_capped = self.block_r != asked
        if self.r_capped:
            log.warning("r=%s asks for more merges than ToMe allows (at most half the non-prefix tokens of a block): "
                        "merging %s tokens per block instead (tokens per block: %s)", r, _as_one(self.block_r),
                        ", ".join(map(str, self.block_tokens)))
        self.tokens_out = self.tokens_in - sum(self.block_r)
        self.mean_tokens = sum(self.block_tokens) / max(len(self.block_tokens), 1)
        self.last_token_counts: torch.Tensor | None = None

    def extra_repr(self) -> str:
        return f"r={self.r}, prop_attn={self.prop_attn}, block_tokens={self.block_tokens}"

    def forward_features(self, pixels: torch.Tensor,
                         margins: list | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """pixels[B, C, H, W] -> (normed tokens [B, tokens_out, D], sizes [B, tokens_out, 1] or None if r=0).
        With `margins` (a list), each merging block appends its decision margins [B] (see decision_margin)."""
        m = self.model
        if pixels.dim() != 4 or tuple(pixels.shape[-2:]) != tuple(m.patch_embed.img_size):
            # ToMe's schedule (and the exported graph's shapes) are fixed by the model's image size
            raise VWTError(f"pixels of shape {tuple(pixels.shape)} do not fit this model: ToMe needs [B, C, "
                           f"{m.patch_embed.img_size[0]}, {m.patch_embed.img_size[1]}] ({self.tokens_in} tokens)")
        x = _models.embed_tokens(m, _models.patch_tokens(m, pixels))
        size = None
        for blk, r in zip(m.blocks, self.block_r):
            x, size = tome_block(blk, x, size, r, self.num_prefix, self.prop_attn, margins)
        return m.norm(x), size

    @torch.no_grad()
    def decision_margins(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels -> float [B]: per image, the smallest margin of any merge decision in any block (inf when
        nothing merges). Below vwt_export.vwt.NEAR_TIE_EPS another correct implementation (ONNX Runtime, a GPU)
        may merge differently: a near-tie, not an error."""
        margins: list[torch.Tensor] = []
        self.forward_features(pixels, margins)
        if not margins:
            return torch.full((pixels.shape[0],), float("inf"))
        return torch.stack(margins).min(dim=0).values.cpu()

    def forward_head(self, x: torch.Tensor, size: torch.Tensor | None) -> torch.Tensor:
        return forward_head(self.model, x, None if size is None else size[..., 0], self.num_prefix,
                            lambda s: proportional_bias(s[..., None]).to(x.dtype) if self.prop_attn else None)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels -> logits (or features for a headless model), the same shape as model(pixels)."""
        x, size = self.forward_features(pixels)
        self.last_token_counts = torch.full((pixels.shape[0],), self.mean_tokens)
        logits = self.forward_head(x, size)
        return logits


def compress_tome(model: nn.Module, r: int | Sequence[int], prop_attn: bool = True) -> ToMeViT:
    """Wrap a timm ViT (from `load_model`) with ToMe: r tokens merged in every block (or one r per block),
    proportional attention unless prop_attn=False. The wrapper is in eval mode; the model is not modified."""
    return ToMeViT(model, r, prop_attn).eval()


def _as_one(values: list[int]) -> int | list[int]:
    """For messages: one number where every block merges alike."""
    return values[0] if values and all(v == values[0] for v in values) else list(values)
