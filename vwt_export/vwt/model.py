"""A timm ViT with its token sequence compressed by the Visual Word Tokenizer.

`compress(model, ...)` wraps (does not modify) a timm VisionTransformer. The wrapper runs the model's own
modules in the model's own order, and only changes the sequence between the positional embedding and the
first block:

    patch_embed -> _pos_embed -> patch_drop -> norm_pre -> [VWT: select or merge] -> blocks(attn bias) -> norm
    -> head (size-weighted pooling for averaging heads)

Outputs have the same shape and meaning as `model(x)` for any batch size.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .. import models as _models
from ..errors import VWTError
from ..heads import forward_head
from . import defaults
from .features import flatten_patch_tokens, image_patches, check_image_size
from .inter import grid_width, match_keys, near_ties, normalized_words
from .intra import keep_indices, resolve_keep, select_tokens
from .merge import attention_bias, token_merge
from .vocab import Vocabulary

MODES = ("none", "intra", "inter")


class CompressedViT(nn.Module):
    """The compressed model. After each call, `last_token_counts` holds the real tokens per image (prefix
    tokens included; padding excluded) and `tokens_in` the uncompressed length P+N.

    Options are taken as given: vwt_export.methods checks them (vx.compress goes through it). What is derived
    from them and the model is derived here, once: `space`, `unit_words` (the normalised words, which the graph
    pass reads too), `keep_count` and `grid_w`."""

    def __init__(self, model: nn.Module, mode: str, *, vocab: Vocabulary | None = None, threshold: float = defaults.THRESHOLD,
                 keep: int | float = defaults.KEEP, space: str | None = None, prop_attn: bool = defaults.PROP_ATTN,
                 grouping: str = defaults.GROUPING):
        super().__init__()
        if mode not in MODES:
            raise VWTError(f"unknown mode '{mode}' (use one of {', '.join(MODES)})")
        self.model = model
        self.mode = mode
        self.patch_size = _models.patch_size(model)
        self.num_prefix = model.num_prefix_tokens
        self.num_patches = model.patch_embed.num_patches
        self.prop_attn = prop_attn
        self.threshold = float(threshold)
        self.keep = keep
        self.space = space or (vocab.space if vocab is not None else "image")
        if mode == "intra":
            self.keep_count = resolve_keep(keep, self.num_patches)  # fails early on a count the model cannot keep
        if mode == "inter":
            if vocab is None:
                raise VWTError("inter mode needs a vocabulary (learn one with learn_vocabulary or pass --vocab FILE)")
            if vocab.space != self.space:
                raise VWTError(f"vocabulary is in {vocab.space} space but space='{self.space}' was asked for")
            vocab.check_compatible(model)
            self.register_buffer("unit_words", normalized_words(vocab.words), persistent=False)
        self.grouping = grouping
        self.grid_w = grid_width(grouping, model.patch_embed.grid_size) if mode == "inter" else 0
        self.vocab = vocab
        self.tokens_in = self.num_prefix + self.num_patches
        self.last_token_counts: torch.Tensor | None = None

    def extra_repr(self) -> str:
        return (f"mode={self.mode}, space={self.space}, threshold={self.threshold}, keep={self.keep}, "
                f"prop_attn={self.prop_attn}, grouping={self.grouping}")

    @torch.no_grad()
    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels[B, C, H, W] -> float32 [B, N, F]: the patch features the vocabulary lives in (image space: the
        pixels as given; embed space: the patch embedding before the positional embedding, in float32)."""
        check_image_size(pixels.shape[-2], pixels.shape[-1], self.patch_size)
        if self.space == "image":
            return image_patches(pixels, self.patch_size).float()
        return flatten_patch_tokens(_models.patch_tokens(self.model, pixels)).float()

    @torch.no_grad()
    def match(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels[B, C, H, W] -> keys int64 [B, N] (inter mode): what the graph's "vwt/keys" tensor holds."""
        if self.mode != "inter":
            raise VWTError(f"match() needs inter mode, this model is '{self.mode}'")
        return match_keys(self.features(pixels), self.unit_words, self.threshold)

    @torch.no_grad()
    def near_ties(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels -> bool [B, N] (inter mode): patches whose match another correct implementation may make
        differently (vwt_export.vwt.inter.near_ties)."""
        return near_ties(self.features(pixels), self.unit_words, self.threshold)

    @torch.no_grad()
    def tokenize(self, pixels: torch.Tensor, keys: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """pixels[B, C, H, W] -> (tokens[B, T, D], sizes[B, T] or None when every token has size 1). In inter
        mode, `keys` [B, N] (e.g. an ONNX graph's) replace the model's own matching."""
        check_image_size(pixels.shape[-2], pixels.shape[-1], self.patch_size)
        if keys is not None and self.mode != "inter":
            raise VWTError(f"keys can only be given in inter mode, this model is '{self.mode}'")
        # a float16 model takes float32 pixels too, as its FP16 ONNX export does: image-space features come from
        # the pixels as given, the tokens from the pixels in the model's dtype
        patch_tokens = _models.patch_tokens(self.model, pixels)
        x = _models.embed_tokens(self.model, patch_tokens)
        if self.mode == "none":
            return x, None
        if self.space == "image":
            features = image_patches(pixels, self.patch_size)
        else:
            features = flatten_patch_tokens(patch_tokens)
        if self.mode == "intra":
            return select_tokens(x, keep_indices(features, self.keep_count), self.num_prefix), None
        if keys is None:
            keys = match_keys(features, self.unit_words, self.threshold)
        elif tuple(keys.shape) != tuple(features.shape[:2]):
            raise VWTError(f"keys have shape {tuple(keys.shape)}, expected {tuple(features.shape[:2])} (batch, patches)")
        return token_merge(x, keys.to(device=x.device, dtype=torch.int64), self.num_prefix, self.grid_w)

    @torch.no_grad()
    def forward_features(self, pixels: torch.Tensor,
                         keys: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        x, sizes = self.tokenize(pixels, keys)
        b, t = x.shape[:2]
        self.last_token_counts = (
            torch.full((b,), t, dtype=torch.long) if sizes is None else (sizes > 0).sum(1).cpu()
        )
        bias = None
        if sizes is not None and (self.prop_attn or bool((sizes == 0).any())):
            bias = attention_bias(sizes, self.prop_attn, x.dtype)
        for blk in self.model.blocks:
            x = blk(x, attn_mask=bias) if bias is not None else blk(x)
        return self.model.norm(x), sizes

    @torch.no_grad()
    def forward_head(self, x: torch.Tensor, sizes: torch.Tensor | None) -> torch.Tensor:
        return forward_head(self.model, x, sizes, self.num_prefix,
                            lambda s: attention_bias(s, self.prop_attn, x.dtype))

    def forward(self, pixels: torch.Tensor, keys: torch.Tensor | None = None) -> torch.Tensor:
        """pixels -> logits; in inter mode, given `keys` [B, N] replace matching (to compare the continuous part
        of another implementation given its discrete decisions)."""
        x, sizes = self.forward_features(pixels, keys)
        return self.forward_head(x, sizes)


def compress(model: nn.Module, mode: str = "inter", *, vocab: Vocabulary | None = None, threshold: float = defaults.THRESHOLD,
             keep: int | float = defaults.KEEP, space: str | None = None, prop_attn: bool = defaults.PROP_ATTN,
             grouping: str = defaults.GROUPING) -> CompressedViT:
    """Wrap a timm ViT (from `load_model`) with VWT token compression, options unchecked (vx.compress checks
    them, and builds every registered method: vwt_export.methods).

    mode="inter": merge patches matching the same word of `vocab` (cosine distance <= threshold).
    mode="intra": keep the `keep` highest-variance patches (a count, or a fraction of N).
    mode="none":  the uncompressed model behind the same interface.
    grouping="local" (inter only): a group is split into its 4-connected components on the patch grid.
    """
    return CompressedViT(model, mode, vocab=vocab, threshold=threshold, keep=keep, space=space,
                         prop_attn=prop_attn, grouping=grouping).eval()
