"""timm ViT -> model.onnx, the FP32 baseline that every other artefact is derived from.

The model is exported in two halves and joined: the *embedding* (pixels -> tokens: patch embedding, positional
embedding, norm_pre) with a dynamic batch, and the *trunk* (tokens -> logits: blocks, norm, head) with a
dynamic batch **and a dynamic sequence length**. A plain export bakes the sequence length (197 for DeiT-S)
into every Reshape of every attention block, which would make any token reduction impossible; exporting the
trunk over a symbolic length keeps those shapes computed at run time. The joined graph is an ordinary
single-input, single-output model and is checked against torch before it is written.

`precision="fp16"` exports a float16 copy of the model (model.fp16.onnx): every weight and activation is
float16 between a Cast of the float32 pixels and a Cast of the logits back to float32, so the file keeps the
float32 interface. TensorRT builds FP16 engines from it as a strongly typed network (its types are the
precision), which is the only way TensorRT 11 and TensorRT-RTX build FP16 at all.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import onnx
import torch
import torch.nn as nn

from ..atomic import atomic_path
from ..errors import VWTError
from ..models import embed_tokens, patch_tokens
from ..version import __version__

DEFAULT_OPSET = 18
INPUT_NAME, OUTPUT_NAME, TOKENS_NAME = "pixels", "logits", "tokens"


PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16}
ONNX_TYPES = {torch.float32: onnx.TensorProto.FLOAT, torch.float16: onnx.TensorProto.FLOAT16}


class _Embedding(nn.Module):
    """float32 pixels -> tokens in the model's dtype."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return embed_tokens(self.model, patch_tokens(self.model, pixels))


class _Trunk(nn.Module):
    """tokens in the model's dtype -> float32 logits."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        m = self.model
        logits = m.forward_head(m.norm(m.blocks(tokens)))
        return logits if logits.dtype == torch.float32 else logits.float()


def cast_model(model: nn.Module, precision: str) -> nn.Module:
    """`model` in `precision`: itself when it already is, else a copy (the original untouched)."""
    if precision not in PRECISIONS:
        raise VWTError(f"unknown export precision '{precision}' (use one of {', '.join(PRECISIONS)})")
    dtype = PRECISIONS[precision]
    if model.patch_embed.proj.weight.dtype == dtype:
        return model
    import copy

    cast = copy.deepcopy(model).to(dtype)
    for attr in ("vwt_weights", "vwt_name"):
        if hasattr(model, attr):
            setattr(cast, attr, getattr(model, attr))
    return cast.eval()


def float32_in(model: nn.Module):
    """The model taking float32 pixels whatever its dtype, as its ONNX export does (the torch reference of a
    float16 graph)."""
    dtype = model.patch_embed.proj.weight.dtype
    return model if dtype == torch.float32 else (lambda pixels: model(pixels.to(dtype)))


def _export(module: nn.Module, example: torch.Tensor, in_name: str, out_name: str, seq_dynamic: bool,
            opset: int, exporter: str) -> onnx.ModelProto:
    module = module.eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer and deprecation chatter; correctness is checked below
        if exporter == "dynamo":
            from torch.export import Dim

            dims = {0: Dim("batch", min=1, max=4096)}
            if seq_dynamic:
                dims[1] = Dim("seq", min=2, max=16384)
            program = torch.onnx.export(module, (example,), dynamo=True, opset_version=opset, input_names=[in_name],
                                        output_names=[out_name], dynamic_shapes=(dims,), verbose=False)
            return program.model_proto
        if exporter == "torchscript":
            import io

            axes = {in_name: {0: "batch", **({1: "seq"} if seq_dynamic else {})}, out_name: {0: "batch"}}
            buf = io.BytesIO()
            torch.onnx.export(module, (example,), buf, dynamo=False, opset_version=opset, input_names=[in_name],
                              output_names=[out_name], dynamic_axes=axes)
            return onnx.load_from_string(buf.getvalue())
    raise VWTError(f"unknown exporter '{exporter}' (use dynamo or torchscript)")


def export_model(model: nn.Module, opset: int = DEFAULT_OPSET, exporter: str = "dynamo",
                 precision: str = "fp32") -> onnx.ModelProto:
    """Export `model` (eval mode, from load_model) to an in-memory ONNX model: pixels[B,C,H,W] -> logits, both
    float32; `precision="fp16"` computes everything in between in float16 (see the module docstring)."""
    model = cast_model(model, precision)
    c = model.patch_embed.proj.in_channels
    h, w = model.patch_embed.img_size
    device = next(model.parameters()).device
    pixels = torch.randn(2, c, h, w, device=device)
    with torch.no_grad():
        tokens = _Embedding(model)(pixels)
    embed = _export(_Embedding(model), pixels, INPUT_NAME, TOKENS_NAME, False, opset, exporter)
    trunk = _export(_Trunk(model), tokens, TOKENS_NAME, OUTPUT_NAME, True, opset, exporter)
    embed = onnx.compose.add_prefix(embed, prefix="embed/", rename_inputs=False, rename_outputs=False)
    trunk.ir_version = embed.ir_version = min(embed.ir_version, trunk.ir_version)
    tokens_info = onnx.helper.make_tensor_value_info(TOKENS_NAME, ONNX_TYPES[tokens.dtype], ["batch", *tokens.shape[1:]])
    merged = onnx.compose.merge_models(embed, trunk, io_map=[(TOKENS_NAME, TOKENS_NAME)])
    # the joint tensor keeps the embedding's static [batch, T, D] shape, which surgery reads
    kept = [vi for vi in merged.graph.value_info if vi.name != TOKENS_NAME]
    del merged.graph.value_info[:]
    merged.graph.value_info.extend(kept + [tokens_info])
    opsets = {(o.domain or ""): o.version for o in merged.opset_import}  # merge_models may list a domain twice
    del merged.opset_import[:]
    merged.opset_import.extend(onnx.helper.make_opsetid(d, v) for d, v in sorted(opsets.items()))
    merged.producer_name, merged.producer_version = "vwt-export", __version__
    onnx.checker.check_model(merged)
    return merged


def save_model(proto: onnx.ModelProto, path: str | os.PathLike) -> Path:
    """Write an ONNX model atomically (never a half-written file that looks valid)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        onnx.save(proto, str(tmp))
    return path
