"""Patch features: what the tokenizer compares.

Image space: each patch's pixels flattened in (channel, row, column) order, patches in raster order; this is
the reference code's `unfold(1, C, C).unfold(2, p, p).unfold(3, p, p)` layout, so its vocabularies load as is.
Embedding space: the patch-embedding output before the positional embedding.
"""

from __future__ import annotations

import torch

from ..errors import VWTError


def check_image_size(height: int, width: int, patch_size: int) -> None:
    if height % patch_size or width % patch_size:
        raise VWTError(
            f"image size {height}x{width} is not divisible by the patch size {patch_size}; "
            f"resize or crop to a multiple of {patch_size}"
        )


def image_patches(pixels: torch.Tensor, patch_size: int) -> torch.Tensor:
    """pixels[B, C, H, W] -> features[B, N, C*p*p]."""
    b, c, h, w = pixels.shape
    check_image_size(h, w, patch_size)
    p = patch_size
    x = pixels.reshape(b, c, h // p, p, w // p, p)
    return x.permute(0, 2, 4, 1, 3, 5).reshape(b, (h // p) * (w // p), c * p * p)


def flatten_patch_tokens(tokens: torch.Tensor) -> torch.Tensor:
    """timm's patch_embed gives [B, N, D], or [B, H, W, D] for dynamic image sizes; return [B, N, D]."""
    return tokens if tokens.ndim == 3 else tokens.reshape(tokens.shape[0], -1, tokens.shape[-1])


SPACES = ("image", "embed")


def patch_features(model: torch.nn.Module, pixels: torch.Tensor, space: str, patch_size: int) -> torch.Tensor:
    """The features a vocabulary lives in, for normalised pixels[B, C, H, W] -> [B, N, F]."""
    if space == "image":
        return image_patches(pixels, patch_size)
    if space == "embed":
        check_image_size(pixels.shape[-2], pixels.shape[-1], patch_size)
        return flatten_patch_tokens(model.patch_embed(pixels))
    raise VWTError(f"unknown feature space '{space}' (use one of {', '.join(SPACES)})")
