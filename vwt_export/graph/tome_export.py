"""ToMeViT -> model.tome.onnx: Token Merging in standard ONNX ops (no vwt op, runs on any runtime).

For a fixed r every shape is static (block i sees P + N - r*i tokens), so the whole model exports as one graph
with a dynamic batch only. The merge is ReduceL2/MatMul (cosine scores), Where (-inf on prefix pairs),
ReduceMax/ArgMax (best partner, lowest index on ties), pairwise Greater/Equal + ReduceSum + CumSum (a stable
descending rank: torch's stable sort does not export, and no sort op is needed), Equal + ArgMax (the inverse
permutation), GatherElements, and a one-hot MatMul for the size-weighted sums. No Scatter at all: TensorRT's
scatter has no add reduction, and ONNX Runtime's CPU ScatterElements has no float16 add.
"""

from __future__ import annotations

import warnings

import onnx
import torch

from ..errors import VWTError
from ..version import __version__
from .export import DEFAULT_OPSET, INPUT_NAME, OUTPUT_NAME


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


def export_tome(tome_model: torch.nn.Module, opset: int = DEFAULT_OPSET, exporter: str = "dynamo") -> onnx.ModelProto:
    """Export a ToMeViT (from vwt_export.tome.compress_tome) to an in-memory ONNX model: pixels[B,C,H,W] float32
    -> logits float32, dynamic batch. Check it with vwt_export.check.verify.verify_graph (the run does): images
    whose merge decisions sit on a near-tie are counted there, not compared."""
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
    proto.producer_name, proto.producer_version = "vwt-export", __version__
    onnx.helper.set_model_props(proto, schedule_metadata(tome_model))
    onnx.checker.check_model(proto)
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
