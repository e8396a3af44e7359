"""Hugging Face transformers checkpoints -> timm VisionTransformer state dicts.

transformers names the same ViT parameters differently from timm, and splits attention into query, key and
value projections where timm holds one `qkv` projection. Three naming families cover the ViTs transformers
ships: ViT (ViTModel, ViTForImageClassification), DeiT (DeiTModel, DeiT...WithTeacher, with a distillation
token) and DINOv2 (Dinov2Model, Dinov2WithRegistersModel: layer scale, norm1/norm2, registers). Any prefix in
front of `embeddings.` (`vit.`, `deit.`, `dinov2.`, a wrapper's `backbone.`) is accepted.

What has no timm counterpart is dropped and said so: DINOv2's `mask_token` (masked pre-training only) and
ViT's `pooler` (a tanh projection of the class token that transformers' own classifiers do not use). The
position embedding is resampled to the model's grid with timm's `resample_abs_pos_embed`, bicubic WITHOUT
antialiasing: that is what transformers does at run time (`interpolate_pos_encoding`), so a timm model built
for 224 px computes what the transformers model computes on 224-px input (timm's own default, antialiasing
on, differs on downsampled grids; scripts/real_weights.py measures by how much).
"""

from __future__ import annotations

import math
import re

import torch

from .errors import VWTError

# Per-block names: transformers' suffix -> timm's, for both families; q/k/v are handled separately.
_BLOCK = {
    "vit": {
        "layernorm_before": "norm1",
        "layernorm_after": "norm2",
        "attention.output.dense": "attn.proj",
        "intermediate.dense": "mlp.fc1",
        "output.dense": "mlp.fc2",
    },
    "dinov2": {
        "norm1": "norm1",
        "norm2": "norm2",
        "attention.output.dense": "attn.proj",
        "mlp.fc1": "mlp.fc1",
        "mlp.fc2": "mlp.fc2",
        "mlp.weights_in": "mlp.fc1",  # SwiGLU (giant): packed [gate, value] as timm's SwiGLUPacked reads them
        "mlp.weights_out": "mlp.fc2",
        "layer_scale1.lambda1": "ls1.gamma",
        "layer_scale2.lambda1": "ls2.gamma",
    },
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
_QKV = ("query", "key", "value")


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
    return "dinov2" if f"{prefix}encoder.layer.0.norm1.weight" in sd else "vit"


def to_timm(sd: dict[str, torch.Tensor], model: torch.nn.Module) -> tuple[dict[str, torch.Tensor], list[str]]:
    """A transformers-named state dict -> timm names for `model` (a timm VisionTransformer), and notes on
    what was dropped or resampled. Raises VWTError for a state dict that is not transformers-named."""
    prefix = _prefix(sd)
    if prefix is None:
        raise VWTError("not a transformers ViT/DeiT/DINOv2 state dict (no embeddings.patch_embeddings.projection)")
    block = _BLOCK[_family(sd, prefix)]
    out: dict[str, torch.Tensor] = {}
    notes: list[str] = []
    qkv: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for key, value in sd.items():
        head = re.fullmatch(r"(\w+)\.(weight|bias)", key)
        name = key[len(prefix):] if key.startswith(prefix) else None
        if head and head.group(1) in _HEADS:
            out[f"{_HEADS[head.group(1)]}.{head.group(2)}"] = value
        elif name is None:
            raise VWTError(f"unexpected transformers parameter '{key}' (no timm counterpart known)")
        elif name in _DROPPED:
            notes.append(f"dropped {name} (no timm counterpart; unused at inference)")
        elif name in _TOP:
            out[_TOP[name]] = value
        elif name in ("embeddings.position_embeddings", "embeddings.register_tokens"):
            pass  # below: they depend on the model's prefix-token layout
        elif m := re.fullmatch(r"encoder\.layer\.(\d+)\.attention\.attention\.(query|key|value)\.(weight|bias)", name):
            qkv.setdefault((int(m.group(1)), m.group(3)), {})[m.group(2)] = value
        elif (m := re.fullmatch(r"encoder\.layer\.(\d+)\.(.+?)(\.weight|\.bias)?", name)) and m.group(2) in block:
            out[f"blocks.{m.group(1)}.{block[m.group(2)]}{m.group(3) or ''}"] = value
        else:
            raise VWTError(f"unexpected transformers parameter '{key}' (no timm counterpart known)")
    for (layer, kind), parts in sorted(qkv.items()):
        if set(parts) != set(_QKV):
            raise VWTError(f"layer {layer}: attention {kind} lacks {sorted(set(_QKV) - set(parts))}")
        out[f"blocks.{layer}.attn.qkv.{kind}"] = torch.cat([parts[p] for p in _QKV], dim=0)
    out.update(_prefix_and_positions(sd, prefix, out, model, notes))
    if getattr(model, "num_classes", 1) == 0:
        heads = [k for k in out if k.startswith(("head.", "head_dist."))]
        for k in heads:
            del out[k]
        if heads:
            notes.append("dropped the classifier head (the model is built with num_classes=0)")
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
    patch_pos = _resample(patch_pos, tuple(model.patch_embed.grid_size), notes)
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


def _resample(patch_pos: torch.Tensor, grid: tuple[int, int], notes: list[str]) -> torch.Tensor:
    from timm.layers import resample_abs_pos_embed

    side = math.isqrt(patch_pos.shape[1])
    if side * side != patch_pos.shape[1]:
        raise VWTError(f"position embedding for {patch_pos.shape[1]} patches: not a square grid")
    if (side, side) == grid:
        return patch_pos
    notes.append(f"resampled the position embedding from {side}x{side} to {grid[0]}x{grid[1]} patches "
                 "(bicubic, no antialiasing, as transformers interpolates at run time)")
    return resample_abs_pos_embed(patch_pos, new_size=list(grid), old_size=[side, side], num_prefix_tokens=0,
                                  interpolation="bicubic", antialias=False)
