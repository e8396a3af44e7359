"""ToMeViT -> model.tome.onnx: Token Merging in standard ONNX ops (no vwt op, runs on any runtime).

For a fixed r every shape is static (block i sees P + N - r*i tokens), so the whole model exports as one graph
with a dynamic batch only. The merge is ReduceL2/MatMul (cosine scores), Where (-inf on prefix pairs),
ReduceMax/ArgMax (best partner, lowest index on ties), pairwise Greater/Equal + ReduceSum + CumSum (a stable
descending rank: torch's stable sort does not export, and no sort op is needed), Equal + ArgMax (the inverse
permutation), GatherElements, and a one-hot MatMul for the size-weighted sums. No Scatter at all: TensorRT's
scatter has no add reduction, and ONNX Runtime's CPU ScatterElements has no float16 add. The graph is checked
against torch before it is returned.
"""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import torch

from ..errors import VWTError
from ..vwt.inter import NEAR_TIE_EPS
from .export import DEFAULT_OPSET, INPUT_NAME, OUTPUT_NAME, _version


META_BLOCK_TOKENS, META_R, META_PROP_ATTN = "vwt.tome.block_tokens", "vwt.tome.r", "vwt.tome.prop_attn"


class _Exported(torch.nn.Module):
    """float32 pixels -> float32 logits, whatever the model's dtype."""

    def __init__(self, tome_model: torch.nn.Module):
        super().__init__()
        self.tome = tome_model

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x, size = self.tome.forward_features(pixels)
        logits = self.tome.forward_head(x, size)
        return logits if logits.dtype == torch.float32 else logits.float()


def export_tome(tome_model: torch.nn.Module, opset: int = DEFAULT_OPSET, exporter: str = "dynamo",
                check: bool = True) -> onnx.ModelProto:
    """Export a ToMeViT (from vwt_export.tome.compress_tome) to an in-memory ONNX model: pixels[B,C,H,W] float32
    -> logits float32, dynamic batch. With `check`, ONNX Runtime must match torch to 1e-4 (relative to the
    largest logit) on random images free of near-ties (see check_against_torch), else VWTError."""
    model = tome_model.model
    c = model.patch_embed.proj.in_channels
    h, w = model.patch_embed.img_size
    device = next(model.parameters()).device
    pixels = torch.randn(2, c, h, w, generator=torch.Generator().manual_seed(0)).to(device)
    module = _Exported(tome_model).eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # exporter chatter; correctness is checked below
        if exporter == "dynamo":
            from torch.export import Dim

            program = torch.onnx.export(module, (pixels,), dynamo=True, opset_version=opset, input_names=[INPUT_NAME],
                                        output_names=[OUTPUT_NAME],
                                        dynamic_shapes=({0: Dim("batch", min=1, max=4096)},), verbose=False)
            proto = program.model_proto
        elif exporter == "torchscript":
            import io

            buf = io.BytesIO()
            torch.onnx.export(module, (pixels,), buf, dynamo=False, opset_version=opset, input_names=[INPUT_NAME],
                              output_names=[OUTPUT_NAME],
                              dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
            proto = onnx.load_from_string(buf.getvalue())
        else:
            raise VWTError(f"unknown exporter '{exporter}' (use dynamo or torchscript)")
    proto.producer_name, proto.producer_version = "vwt-export", _version()
    onnx.helper.set_model_props(proto, schedule_metadata(tome_model))
    onnx.checker.check_model(proto)
    if check:
        check_random_images(proto, tome_model)
    return proto


def schedule_metadata(tome_model: torch.nn.Module) -> dict[str, str]:
    """The static token schedule, stored in the graph's metadata: a ToMe graph has no size tensor to read tokens
    from, and needs none (every image follows the same schedule)."""
    return {META_BLOCK_TOKENS: ",".join(map(str, tome_model.block_tokens)),
            META_R: ",".join(map(str, tome_model.block_r)), META_PROP_ATTN: str(int(tome_model.prop_attn))}


def read_schedule(proto: onnx.ModelProto) -> dict | None:
    """{"block_tokens": [...], "r": [...], "prop_attn": bool, "mean_tokens": float} from a ToMe graph's
    metadata (kept by quantize_int8), None for any other graph."""
    props = {p.key: p.value for p in proto.metadata_props}
    if META_BLOCK_TOKENS not in props:
        return None
    tokens = [int(t) for t in props[META_BLOCK_TOKENS].split(",")]
    return {"block_tokens": tokens, "r": [int(t) for t in props.get(META_R, "").split(",") if t],
            "prop_attn": props.get(META_PROP_ATTN) == "1", "mean_tokens": sum(tokens) / len(tokens)}


def check_random_images(proto: onnx.ModelProto, tome_model: torch.nn.Module, images: int = 4, tries: int = 4,
                        rtol: float = 1e-4) -> dict:
    """check_against_torch on batches of random images until one has an image free of near-ties (on real
    weights a deep model often has one near-tie somewhere, in a minority of images)."""
    m = tome_model.model
    shape = (images, m.patch_embed.proj.in_channels, *m.patch_embed.img_size)
    device = next(m.parameters()).device
    for seed in range(tries):
        pixels = torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(device)
        result = check_against_torch(proto, tome_model, pixels, rtol)
        if result["compared"]:
            return result
    raise VWTError(f"could not check the ToMe graph: all {images * tries} random images hold a near-tie")


def check_against_torch(proto: onnx.ModelProto, tome_model: torch.nn.Module, pixels: torch.Tensor,
                        rtol: float = 1e-4, eps: float = NEAR_TIE_EPS) -> dict:
    """Run the graph in ONNX Runtime and torch on the same pixels and compare the images whose merge decisions
    are clear (every decision margin >= eps; the others are near-ties, counted, never an error: DESIGN,
    "Verification of discrete decisions"). Returns {"compared", "near_ties", "max_rel_err"}; VWTError when a
    compared image differs by more than `rtol` relative to the largest logit."""
    from ..backends.onnxruntime import runner

    with torch.no_grad():
        expected = tome_model(pixels).float().cpu().numpy()
    clear = (tome_model.decision_margins(pixels) >= eps).numpy()
    actual = runner(proto)(pixels.float().cpu().numpy())
    if actual.shape != expected.shape:
        raise VWTError(f"the ToMe graph returns {actual.shape}, torch {expected.shape}")
    result = {"compared": int(clear.sum()), "near_ties": int((~clear).sum()), "max_rel_err": 0.0}
    if clear.any():
        a, e = actual[clear], expected[clear]
        result["max_rel_err"] = err = float(np.abs(a - e).max() / max(float(np.abs(e).max()), 1e-6))
        if not err <= rtol:
            raise VWTError(f"the ToMe graph differs from torch by {err:.2e} (relative), more than {rtol:.0e}")
    return result
