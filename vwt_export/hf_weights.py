"""Hugging Face transformers checkpoints -> timm VisionTransformer state dicts.

transformers names the same ViT parameters differently from timm, and splits attention into query, key and
value projections where timm holds one `qkv` projection. Three naming families cover the ViTs transformers
ships: ViT (ViTModel, ViTForImageClassification), DeiT (DeiTModel, DeiT...WithTeacher, with a distillation
token) and DINOv2 (Dinov2Model, Dinov2WithRegistersModel: layer scale, norm1/norm2, registers). Any prefix in
front of `embeddings.` (`vit.`, `deit.`, `dinov2.`, a wrapper's `backbone.`) is accepted.

What has no timm counterpart is dropped and said so: DINOv2's `mask_token` (masked pre-training only) and
ViT's `pooler` (a tanh projection of the class token that transformers' own classifiers do not use). The
position embedding is resampled to the model's grid with timm's `resample_abs_pos_embed`, bicubic, with
antialiasing exactly where transformers uses it at run time (`interpolate_pos_encoding`: DINOv2 with
registers yes; ViT, DeiT, DINOv2 no), so a timm model built for 224 px computes what the transformers model
computes on 224-px input. timm's own default (antialiasing always on) differs on downsampled grids:
scripts/real_weights.py measures by how much.
"""

from __future__ import annotations

import math
import re

import torch

from .errors import VWTError

# Per-block names: transformers' suffix -> timm's. Files (save_pretrained, the Hub) hold transformers 4's names
# (`encoder.layer.N.attention.attention.query`); transformers 5's modules hold others in memory
# (`layers.N.attention.q_proj`, `mlp.gate_proj`), which a torch.save of their state dict writes: both are read.
_BLOCK = {
    "vit": {
        "layernorm_before": "norm1",
        "layernorm_after": "norm2",
        "attention.output.dense": "attn.proj",
        "attention.o_proj": "attn.proj",
        "intermediate.dense": "mlp.fc1",
        "output.dense": "mlp.fc2",
        "mlp.fc1": "mlp.fc1",
        "mlp.fc2": "mlp.fc2",
    },
    "dinov2": {
        "norm1": "norm1",
        "norm2": "norm2",
        "attention.output.dense": "attn.proj",
        "attention.o_proj": "attn.proj",
        "mlp.fc1": "mlp.fc1",
        "mlp.fc2": "mlp.fc2",
        "mlp.weights_in": "mlp.fc1",  # SwiGLU (giant): packed [gate, up], as timm's SwiGLUPacked reads them
        "mlp.weights_out": "mlp.fc2",
        "mlp.down_proj": "mlp.fc2",
        "layer_scale1.lambda1": "ls1.gamma",
        "layer_scale2.lambda1": "ls2.gamma",
    },
}
# Separate projections timm holds as one: suffix -> (timm name, slot in the concatenation, slots).
_PARTS = {
    "attention.attention.query": ("attn.qkv", 0, 3),
    "attention.attention.key": ("attn.qkv", 1, 3),
    "attention.attention.value": ("attn.qkv", 2, 3),
    "attention.q_proj": ("attn.qkv", 0, 3),
    "attention.k_proj": ("attn.qkv", 1, 3),
    "attention.v_proj": ("attn.qkv", 2, 3),
    "mlp.gate_proj": ("mlp.fc1", 0, 2),
    "mlp.up_proj": ("mlp.fc1", 1, 2),
}
_TOP = {
    "embeddings.cls_token": "cls_token",
    "embeddings.distillation_token": "dist_token",
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "layernorm.weight": "norm.weight",
    "layernorm.bias": "norm.bias",
}
# Heads sit outside the backbone prefix: transformers' module name -> timm's.
_HEADS = {"classifier": "head", "cls_classifier": "head", "distillation_classifier": "head_dist"}
_DROPPED = ("embeddings.mask_token", "pooler.dense.weight", "pooler.dense.bias")
_ANCHOR = "embeddings.patch_embeddings.projection.weight"
_LAYER = re.compile(r"(?:encoder\.layer|layers)\.(\d+)\.(.+?)(\.weight|\.bias)?")


def naming(sd: dict[str, torch.Tensor]) -> str:
    """Which naming a state dict uses: 'timm', or 'transformers ViT' / 'transformers DeiT' /
    'transformers DINOv2' (with the prefix in front of the backbone when there is one)."""
    prefix = _prefix(sd)
    if prefix is None:
        return "timm"
    family = "DINOv2" if _family(sd, prefix) == "dinov2" else (
        "DeiT" if prefix.startswith("deit") or f"{prefix}embeddings.distillation_token" in sd else "ViT")
    return f"transformers {family}" + (f" (prefix '{prefix}')" if prefix else "")


def _prefix(sd: dict) -> str | None:
    found = [k[: -len(_ANCHOR)] for k in sd if k.endswith(_ANCHOR)]
    return found[0] if len(found) == 1 else None


def _family(sd: dict, prefix: str) -> str:
    return "dinov2" if any(f"{prefix}{layers}.0.norm1.weight" in sd for layers in ("encoder.layer", "layers")) else "vit"


def to_timm(sd: dict[str, torch.Tensor], model: torch.nn.Module) -> tuple[dict[str, torch.Tensor], list[str]]:
    """A transformers-named state dict -> timm names for `model` (a timm VisionTransformer), and notes on
    what was dropped or resampled. Raises VWTError for a state dict that is not transformers-named."""
    prefix = _prefix(sd)
    if prefix is None:
        raise VWTError("not a transformers ViT/DeiT/DINOv2 state dict (no embeddings.patch_embeddings.projection)")
    block = _BLOCK[_family(sd, prefix)]
    out: dict[str, torch.Tensor] = {}
    notes: list[str] = []
    parts: dict[str, list] = {}
    for key, value in sd.items():
        head = re.fullmatch(r"(\w+)\.(weight|bias)", key)
        name = key[len(prefix):] if key.startswith(prefix) else None
        m = _LAYER.fullmatch(name or "")
        if head and head.group(1) in _HEADS:
            out[f"{_HEADS[head.group(1)]}.{head.group(2)}"] = value
        elif name in _DROPPED:
            notes.append(f"dropped {name} (no timm counterpart; unused at inference)")
        elif name in _TOP:
            out[_TOP[name]] = value
        elif name in ("embeddings.position_embeddings", "embeddings.register_tokens"):
            pass  # below: they depend on the model's prefix-token layout
        elif m and m.group(2) in _PARTS:
            target, slot, slots = _PARTS[m.group(2)]
            parts.setdefault(f"blocks.{m.group(1)}.{target}{m.group(3) or ''}", [None] * slots)[slot] = value
        elif m and m.group(2) in block:
            out[f"blocks.{m.group(1)}.{block[m.group(2)]}{m.group(3) or ''}"] = value
        else:
            raise VWTError(f"unexpected transformers parameter '{key}' (no timm counterpart known)")
    for target, pieces in parts.items():
        if any(p is None for p in pieces):
            raise VWTError(f"{target}: {sum(p is None for p in pieces)} of its {len(pieces)} projections are missing")
        out[target] = torch.cat(pieces, dim=0)
    out.update(_prefix_and_positions(sd, prefix, out, model, notes))
    if getattr(model, "num_classes", 1) == 0:
        heads = [k for k in out if k.startswith(("head.", "head_dist."))]
        for k in heads:
            del out[k]
        if heads:
            notes.append("dropped the classifier head (the model is built with num_classes=0)")
    elif "head.weight" in out and out["head.weight"].shape[-1] != model.embed_dim:
        raise VWTError(f"the classifier reads {out['head.weight'].shape[-1]} features, timm's head {model.embed_dim} "
                       "(Dinov2ForImageClassification reads the class token and the mean patch token together): "
                       "load the backbone alone with num_classes=0")
    return out, notes


def _prefix_and_positions(sd: dict, prefix: str, out: dict, model: torch.nn.Module, notes: list[str]) -> dict:
    """pos_embed (and register / class tokens where timm keeps their position elsewhere).

    transformers adds a position to the class token (and DeiT's distillation token) but never to registers;
    timm either holds a position row per prefix token (no_embed_class=False: registers get zero rows) or none
    (no_embed_class=True: the prefix tokens' positions are folded into the tokens themselves)."""
    pos = sd.get(f"{prefix}embeddings.position_embeddings")
    if pos is None:
        raise VWTError("the checkpoint has no embeddings.position_embeddings")
    positioned = [t for t in ("cls_token", "dist_token") if t in out]  # transformers' order: class, distillation
    prefix_pos, patch_pos = pos[:, : len(positioned)], pos[:, len(positioned):]
    registers = sd.get(f"{prefix}embeddings.register_tokens")
    result: dict[str, torch.Tensor] = {}
    if registers is not None:
        result["reg_token"] = registers
    # transformers resamples DINOv2-with-registers' grid with antialiasing, ViT's, DeiT's and DINOv2's without
    patch_pos = _resample(patch_pos, tuple(model.patch_embed.grid_size), antialias=registers is not None, notes=notes)
    if getattr(model, "no_embed_class", False):
        for i, token in enumerate(positioned):
            result[token] = out[token] + prefix_pos[:, i : i + 1]
        result["pos_embed"] = patch_pos
    else:
        # timm's prefix order: class token, registers (VisionTransformer) or class, distillation (DeiT).
        rows = [prefix_pos[:, :1]] if "cls_token" in out else []
        if registers is not None:
            rows.append(torch.zeros_like(registers))
        rows += [prefix_pos[:, i : i + 1] for i, t in enumerate(positioned) if t != "cls_token"]
        result["pos_embed"] = torch.cat([*rows, patch_pos], dim=1)
    return result


def _resample(patch_pos: torch.Tensor, grid: tuple[int, int], antialias: bool, notes: list[str]) -> torch.Tensor:
    from timm.layers import resample_abs_pos_embed

    side = math.isqrt(patch_pos.shape[1])
    if side * side != patch_pos.shape[1]:
        raise VWTError(f"position embedding for {patch_pos.shape[1]} patches: not a square grid")
    if (side, side) == grid:
        return patch_pos
    notes.append(f"resampled the position embedding from {side}x{side} to {grid[0]}x{grid[1]} patches (bicubic, "
                 f"{'with' if antialias else 'no'} antialiasing, as transformers interpolates this model at run time)")
    return resample_abs_pos_embed(patch_pos, new_size=list(grid), old_size=[side, side], num_prefix_tokens=0,
                                  interpolation="bicubic", antialias=antialias)
