"""The VWT graph in two stages, for length-aware batching: model.vwt.tokenize.onnx + model.vwt.trunk.onnx.

    tokenize, trunk = split_stages(onnx.load("OUT/model.vwt.onnx"))      # or model.vwt.int8.onnx, portable forms

    tokenize: pixels [B, C, H, W] -> "vwt/merged" [B, T, D]   TokenMerge's tokens, padded to the batch's longest image
                                     "vwt/sizes"  f32 [B, T]  1 for prefix tokens, group sizes, 0 for padding
                                     "vwt/counts" i64 [B]     real tokens per image (prefix included)
    trunk:    "vwt/merged" [B, T, D], "vwt/sizes" [B, T] -> logits, B and T dynamic

The cut is at TokenMerge's outputs, found by structure (the one vwt::TokenMerge node), so it works for the
custom-op form, the portable form (the function body stays only in the tokenize stage, the one that uses it) and
the INT8 Q/DQ graphs (their Q/DQ pairs sit on MatMul/Gemm/Conv inputs, never on the merged tokens themselves, so
the trunk keeps every Q/DQ node and scale of the one-graph model). The real tokens of an image are always its
first counts[b] positions (prefix tokens, then groups, then padding), so a runtime may slice a sub-batch to its
own longest count and run the trunk on it: pads never influence a real token (the sizes-derived attention bias).

Composed, tokenize then trunk compute exactly the one-graph model (the same nodes, the same constants).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ..errors import VWTError
from . import ops

TOKENS = "vwt/merged"  # the trunk's token input and the tokenize stage's token output
SIZES = ops.SIZES_TENSOR  # "vwt/sizes"
COUNTS = "vwt/counts"  # the tokenize stage's int64 [B] real-token counts
TOKENIZE_SUFFIX, TRUNK_SUFFIX = ops.TOKENIZE_SUFFIX, ops.TRUNK_SUFFIX
TOKENS_DIM = "vwt_tokens"  # the symbolic (dynamic) sequence length of both stages' token tensors


def _token_merge(graph: gs.Graph) -> gs.Node:
    nodes = [n for n in graph.nodes if n.op == ops.TOKEN_MERGE and n.domain == ops.DOMAIN]
    if len(nodes) != 1:
        raise VWTError(f"splitting into tokenize + trunk needs an inter-mode VWT graph with one vwt::TokenMerge node, "
                       f"found {len(nodes)} (intra graphs have a static length: nothing to batch by length)")
    return nodes[0]


def _embed_dim(graph: gs.Graph, merged: gs.Variable) -> int | str:
    """D of the merged tokens: the scale of the first LayerNormalization reading them (surgery drops the
    intermediate shapes), or a symbolic dim when the graph has none."""
    for node in merged.outputs:
        if node.op == "LayerNormalization" and isinstance(node.inputs[1], gs.Constant):
            return int(node.inputs[1].values.shape[-1])
    return "vwt_dim"


def _export(graph: gs.Graph, source: onnx.ModelProto) -> onnx.ModelProto:
    """Export with the source's ir_version and opsets; the vwt domain (and the function bodies) only where a vwt
    node remains."""
    graph.cleanup(remove_unused_graph_inputs=False).toposort()
    model = gs.export_onnx(graph)
    uses_vwt = any(n.domain == ops.DOMAIN for n in model.graph.node)
    del model.opset_import[:]
    model.opset_import.extend(o for o in source.opset_import if o.domain != ops.DOMAIN or uses_vwt)
    used = {(n.domain, n.op_type) for n in model.graph.node}
    del model.functions[:]
    model.functions.extend(f for f in source.functions if (f.domain, f.name) in used)
    model.ir_version = source.ir_version
    model.producer_name, model.producer_version = source.producer_name, source.producer_version
    return model


def tokenize_stage(vwt_model: onnx.ModelProto) -> onnx.ModelProto:
    """pixels -> "vwt/merged", "vwt/sizes", "vwt/counts" (everything up to and including TokenMerge)."""
    graph = gs.import_onnx(vwt_model)
    tm = _token_merge(graph)
    merged, sizes = tm.outputs[0], tm.outputs[1]
    batch = graph.inputs[0].shape[0] if graph.inputs[0].shape else "batch"
    merged.dtype = merged.dtype or graph.inputs[0].dtype
    merged.shape = [batch, TOKENS_DIM, _embed_dim(graph, merged)]
    sizes.dtype, sizes.shape = np.float32, [batch, TOKENS_DIM]
    # counts in float then cast: a float ReduceSum runs on every backend (TensorRT reduces no int64)
    real, real_f, total = (gs.Variable(f"vwt/counts_{n}", dtype=d) for n, d in
                           (("real", np.bool_), ("real_f", np.float32), ("sum", np.float32)))
    counts = gs.Variable(COUNTS, dtype=np.int64, shape=[batch])
    graph.nodes += [
        gs.Node("Greater", "vwt/counts_real", inputs=[sizes, gs.Constant("vwt/counts_zero", np.array(0.0, np.float32))],
                outputs=[real]),
        gs.Node("Cast", "vwt/counts_real_f", attrs={"to": onnx.TensorProto.FLOAT}, inputs=[real], outputs=[real_f]),
        gs.Node("ReduceSum", "vwt/counts_sum", attrs={"keepdims": 0},
                inputs=[real_f, gs.Constant("vwt/counts_axis", np.array([1], np.int64))], outputs=[total]),
        gs.Node("Cast", "vwt/counts", attrs={"to": onnx.TensorProto.INT64}, inputs=[total], outputs=[counts]),
    ]
    graph.outputs = [merged, sizes, counts]
    return _export(graph, vwt_model)


def trunk_stage(vwt_model: onnx.ModelProto) -> onnx.ModelProto:
    """"vwt/merged" [B, T, D], "vwt/sizes" [B, T] -> the one-graph model's outputs (everything after TokenMerge)."""
    graph = gs.import_onnx(vwt_model)
    tm = _token_merge(graph)
    merged, sizes = tm.outputs[0], tm.outputs[1]
    batch = graph.inputs[0].shape[0] if graph.inputs[0].shape else "batch"
    dtype = merged.dtype or graph.inputs[0].dtype
    merged.dtype, merged.shape = dtype, [batch, TOKENS_DIM, _embed_dim(graph, merged)]
    sizes.dtype, sizes.shape = np.float32, [batch, TOKENS_DIM]
    tm.outputs.clear()  # the trunk starts at TokenMerge's outputs: they become graph inputs
    graph.inputs = [merged, sizes]
    graph.cleanup().toposort()
    needed = {t.name for n in graph.nodes for t in n.inputs} | {t.name for t in graph.outputs}
    if any(t.name not in needed for t in graph.inputs):
        raise VWTError("the VWT graph's trunk does not read both the merged tokens and their sizes; export it "
                       "with this vwt-export (apply_vwt) before splitting it")
    return _export(graph, vwt_model)


def split_stages(vwt_model: onnx.ModelProto) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    """(tokenize, trunk) of an inter-mode VWT graph (custom-op, portable or INT8 form); see the module docstring.
    Raises VWTError for a graph without exactly one vwt::TokenMerge node (intra mode, a baseline) or whose trunk
    reaches back past TokenMerge."""
    tokenize, trunk = tokenize_stage(vwt_model), trunk_stage(vwt_model)
    produced = {o for n in trunk.graph.node for o in n.output} | {i.name for i in trunk.graph.input} \
        | {i.name for i in trunk.graph.initializer}
    missing = sorted({i for n in trunk.graph.node for i in n.input if i and i not in produced})
    if missing:
        raise VWTError(f"the trunk reads tensors computed before TokenMerge ({', '.join(missing[:3])}); this graph "
                       "cannot be split into tokenize + trunk")
    return tokenize, trunk


def stage_files(vwt_file: str) -> tuple[str, str]:
    """The stage file names beside a one-graph file: model.vwt.onnx -> (model.vwt.tokenize.onnx,
    model.vwt.trunk.onnx); model.vwt.int8.onnx -> (model.vwt.int8.tokenize.onnx, model.vwt.int8.trunk.onnx)."""
    if not vwt_file.endswith(".onnx"):
        raise VWTError(f"{vwt_file}: expected an .onnx file name")
    stem = vwt_file[: -len(".onnx")]
    return f"{stem}{TOKENIZE_SUFFIX}", f"{stem}{TRUNK_SUFFIX}"
