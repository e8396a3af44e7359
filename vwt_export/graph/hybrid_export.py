"""HybridViT -> model.hybrid.onnx: VWT's tokenize stage, then a trunk that merges inside every block.

    proto = export_hybrid(hmodel)                  # vwt::TokenMerge, vwt::BlockMerge (op library) + standard ops
    portable = surgery.make_portable(proto)        # the vwt ops' standard-op function bodies attached

The graph is two halves joined at vwt::TokenMerge's outputs, "vwt/merged" [B, T, D] and "vwt/sizes" [B, T]:

  tokenize  the baseline export (export.py) through the VWT graph surgery (surgery.apply_vwt: matching in
            standard ops, its keys in "vwt/keys", one vwt::TokenMerge), cut after TokenMerge (stages.py);
  trunk     per block (export_blocks says how): its attention half exported from torch (tokens and sizes ->
            tokens, and the keys averaged over heads, the merge metric), one vwt::BlockMerge node (the merge
            of vwt_export.hybrid.merge.merge_step, the block's rule in its attributes), its MLP half; then
            norm + pooling + head; each with a dynamic batch and a dynamic T, the data-dependent token count,
            and chained. Why one op for the merge: written in standard ops it took ~170 small nodes per block,
            whose per-node cost made the hybrid slower than ToMe at equal tokens on ONNX Runtime CPU; its
            portable body (ops.py) is those standard ops again, for runtimes without the library.

Because the cut is at TokenMerge, stages.split_stages splits this graph into tokenize + trunk too, so the
length-aware runtime batches it like any VWT graph. INT8: quantize.quantize_int8 puts Q/DQ on the weight
GEMMs; the matching's similarity, every activation x activation product (attention) and BlockMerge stay
float.
"""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import torch

from ..errors import VWTError
from ..version import __version__
from . import ops
from .export import DEFAULT_OPSET, OUTPUT_NAME, export_model

# onnx-graphsurgeon (stages, surgery) is imported where graphs are built: reading a graph's metadata (the runners'
# token counts) needs none of it

META_R, META_THRESHOLD, META_GROUPING, META_PROP_ATTN, META_TILE = (
    "vwt.hybrid.r", "vwt.hybrid.threshold", "vwt.hybrid.grouping", "vwt.hybrid.prop_attn", "vwt.hybrid.tile")


class _Attention(torch.nn.Module):
    """A block's first half, vwt_export.hybrid.model.attention_half: (tokens, sizes) -> (tokens, merge metric)."""

    def __init__(self, blk: torch.nn.Module, prop_attn: bool):
        super().__init__()
        self.blk, self.prop_attn = blk, prop_attn

    def forward(self, x: torch.Tensor, sizes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        from ..hybrid.model import attention_half

        return attention_half(self.blk, x, sizes, self.prop_attn)


class _Mlp(torch.nn.Module):
    """A block's second half, after the merge: vwt_export.hybrid.model.mlp_half."""

    def __init__(self, blk: torch.nn.Module):
        super().__init__()
        self.blk = blk

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from ..hybrid.model import mlp_half

        return mlp_half(self.blk, x)


class _Head(torch.nn.Module):
    """(tokens, sizes) after the last block -> float32 logits: norm, size-weighted pooling, head."""

    def __init__(self, hmodel: torch.nn.Module):
        super().__init__()
        self.hybrid = hmodel

    def forward(self, x: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
        logits = self.hybrid.forward_head(self.hybrid.model.norm(x), sizes)
        return logits if logits.dtype == torch.float32 else logits.float()


def _export_dynamic(module: torch.nn.Module, example: tuple, inputs: list[str], outputs: list[str],
                    opset: int) -> onnx.ModelProto:
    """Dynamo export with a dynamic batch and a dynamic token count T on every input."""
    from torch.export import Dim

    batch, seq = Dim("batch", min=1, max=4096), Dim("vwt_tokens", min=2, max=16384)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # exporter chatter; correctness is checked against torch
        program = torch.onnx.export(module.eval(), example, dynamo=True, opset_version=opset, input_names=inputs,
                                    output_names=outputs, dynamic_shapes=tuple({0: batch, 1: seq} for _ in example),
                                    verbose=False)
    return program.model_proto


def _parameter_map(proto: onnx.ModelProto, marker: torch.nn.Module) -> dict[str, tuple[str, bool]]:
    """{initializer name: (parameter name, transposed)} for a graph exported from `marker`, whose parameters are
    all distinct random values: an initializer equal to one of them (or to its transpose) is that parameter.
    A float initializer of parameter size that equals none is something the exporter folded out of a parameter,
    which cannot be re-targeted to another block: an error."""
    params = {n: p.detach().cpu().numpy() for n, p in marker.named_parameters()}
    smallest = min(v.size for v in params.values())
    mapping = {}
    for init in proto.graph.initializer:
        value = onnx.numpy_helper.to_array(init)
        if value.dtype.kind != "f":
            continue
        found = [(n, False) for n, v in params.items() if v.shape == value.shape and np.array_equal(v, value)]
        found += [(n, True) for n, v in params.items() if v.ndim == 2 and v.T.shape == value.shape
                  and np.array_equal(v.T, value)]
        if len(found) == 1:
            mapping[init.name] = found[0]
        elif value.size >= smallest:
            raise VWTError(f"the hybrid block's exported weight {init.name} {list(value.shape)} matches "
                           f"{len(found)} parameters; this exporter folds weights in a way the block export cannot "
                           "re-target (export with the torch version vwt-export pins)")
    return mapping


def export_blocks(hmodel: torch.nn.Module, example: tuple[torch.Tensor, torch.Tensor],
                  opset: int = DEFAULT_OPSET) -> list[onnx.ModelProto]:
    """One graph per block: (x, sizes) -> (x_out, sizes_out), T dynamic: its attention half, one vwt::BlockMerge
    node holding the block's merge rule, its MLP half (hybrid_block's order). Every block of a timm ViT has the
    same structure, so each half is exported once, from a copy of block 0 holding random marker weights, and
    the copy's weights are then replaced by each block's own. (Exporting all blocks at once would nest each
    block's length expression in the next one's, and the exporter's symbolic shape reasoning grows far faster
    than linearly with the depth: minutes per block.)"""
    import copy

    blocks = hmodel.model.blocks
    for i, blk in enumerate(blocks):
        if type(blk) is not type(blocks[0]):
            raise VWTError(f"block {i} is a {type(blk).__name__}, block 0 a {type(blocks[0]).__name__}; "
                           "the hybrid export needs blocks of one kind")
    marker = copy.deepcopy(blocks[0])
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in marker.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
        x_attn, _ = _Attention(marker, hmodel.prop_attn)(*example)
    halves = []
    for module, args, inputs, outputs in ((_Attention(marker, hmodel.prop_attn), example, ["x", "sizes"],
                                           ["x_attn", "metric"]),
                                          (_Mlp(marker), (x_attn,), ["x_merged"], ["x_out"])):
        proto = _export_dynamic(module, args, inputs, outputs, opset)
        halves.append((proto, _parameter_map(proto, marker)))
    return [_join_block(*(_with_weights(proto, mapping, blk) for proto, mapping in halves), rule, hmodel.num_prefix)
            for blk, rule in zip(blocks, hmodel.rules)]


def _with_weights(template: onnx.ModelProto, mapping: dict[str, tuple[str, bool]],
                  blk: torch.nn.Module) -> onnx.ModelProto:
    """A copy of a half-block graph exported from the marker block, holding `blk`'s weights."""
    proto = _copy(template)
    params = dict(blk.named_parameters())
    for init in proto.graph.initializer:
        if init.name in mapping:
            name, transposed = mapping[init.name]
            value = params[name].detach().cpu().numpy()
            init.CopyFrom(onnx.numpy_helper.from_array(np.ascontiguousarray(value.T if transposed else value),
                                                       init.name))
    return proto


def _join_block(attention: onnx.ModelProto, mlp: onnx.ModelProto, rule, num_prefix: int) -> onnx.ModelProto:
    """attention half -> vwt::BlockMerge (the rule as attributes: r, or r / r_den) -> MLP half, one graph
    (x, sizes) -> (x_out, sizes_out). A block whose rule is 0 merges nothing and holds no BlockMerge."""
    from fractions import Fraction

    # the two exports name their tensors alike ("val_3", "linear"); their inputs and outputs are the joints
    attention, mlp = (onnx.compose.add_prefix(half, prefix, rename_inputs=False, rename_outputs=False)
                      for half, prefix in ((attention, "attn/"), (mlp, "mlp/")))
    if attention.functions or mlp.functions:  # the join below carries graphs, not functions
        raise VWTError("the hybrid block's export holds ONNX local functions, which this join does not carry over "
                       "(export with the torch version vwt-export pins)")
    nodes = list(attention.graph.node)
    if rule == 0:
        nodes.append(onnx.helper.make_node("Identity", ["x_attn"], ["x_merged"]))
        nodes.append(onnx.helper.make_node("Identity", ["sizes"], ["sizes_out"]))
    else:
        r, r_den = (rule.numerator, rule.denominator) if isinstance(rule, Fraction) else (rule, 0)
        nodes.append(onnx.helper.make_node(ops.BLOCK_MERGE, ["x_attn", "metric", "sizes"], ["x_merged", "sizes_out"],
                                           name="block_merge", domain=ops.DOMAIN, num_prefix=num_prefix, r=r,
                                           r_den=r_den))
    nodes += mlp.graph.node
    outputs = [mlp.graph.output[0], onnx.helper.make_tensor_value_info("sizes_out", onnx.TensorProto.FLOAT, ["batch", "T"])]
    graph = onnx.helper.make_graph(nodes, "hybrid_block", list(attention.graph.input), outputs,
                                   [*attention.graph.initializer, *mlp.graph.initializer])
    opsets = {(o.domain or ""): o.version for o in [*attention.opset_import, *mlp.opset_import]}
    opsets[ops.DOMAIN] = ops.VERSION
    return onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid(d, v) for d, v in sorted(opsets.items())],
                                  ir_version=attention.ir_version)


def export_trunk(hmodel: torch.nn.Module, opset: int = DEFAULT_OPSET) -> onnx.ModelProto:
    """The hybrid trunk: "vwt/merged" [B, T, D], "vwt/sizes" f32 [B, T] -> logits, B and T dynamic; the block
    graphs (export_blocks) and the head chained."""
    from .stages import SIZES, TOKENS

    m = hmodel.model
    shape = (3, m.patch_embed.proj.in_channels, *m.patch_embed.img_size)
    device = next(m.parameters()).device
    pixels = torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(device)
    with torch.no_grad():
        example = hmodel.vwt.tokenize(pixels)
    head = _export_dynamic(_Head(hmodel), example, ["x", "sizes"], [OUTPUT_NAME], opset)
    parts = [*export_blocks(hmodel, example, opset), head]
    trunk, x, sizes = None, TOKENS, SIZES
    for i, part in enumerate(parts):
        is_head = i == len(parts) - 1
        part = onnx.compose.add_prefix(part, prefix=f"hybrid/{'head' if is_head else f'block{i}'}/",
                                       rename_outputs=not is_head)
        _name_token_dims(part, i)
        if trunk is None:
            trunk = part
            _rename_inputs(trunk, {part.graph.input[0].name: x, part.graph.input[1].name: sizes})
        else:
            trunk = onnx.compose.merge_models(trunk, part, io_map=[(x, part.graph.input[0].name),
                                                                   (sizes, part.graph.input[1].name)])
            _one_opset_per_domain(trunk)
        if not is_head:
            x, sizes = part.graph.output[0].name, part.graph.output[1].name
    return trunk


def _one_opset_per_domain(model: onnx.ModelProto) -> None:
    """merge_models lists a domain once per merged model; runtimes and the quantizer want it once."""
    opsets = {(o.domain or ""): o.version for o in model.opset_import}
    del model.opset_import[:]
    model.opset_import.extend(onnx.helper.make_opsetid(d, v) for d, v in sorted(opsets.items()))


def _name_token_dims(part: onnx.ModelProto, i: int) -> None:
    """Block i reads "hybrid_tokens_i" tokens and writes "hybrid_tokens_{i+1}": the exporter's own names (its
    length expressions, and "vwt_tokens" in every part) would tell a runtime that different lengths are equal.
    Intermediate shapes are dropped for the same reason; runtimes infer them again."""
    del part.graph.value_info[:]
    for vis, k in ((part.graph.input, i), (part.graph.output, i + 1)):
        for vi in vis:
            dims = vi.type.tensor_type.shape.dim
            if len(dims) >= 2:
                dims[1].Clear()
                dims[1].dim_param = f"hybrid_tokens_{k}"


def _rename_inputs(proto: onnx.ModelProto, names: dict[str, str]) -> None:
    for vi in proto.graph.input:
        if vi.name in names:
            vi.name = names[vi.name]
    for node in proto.graph.node:
        for i, name in enumerate(node.input):
            if name in names:
                node.input[i] = names[name]


def _tile_keys(vwt_graph: onnx.ModelProto, offsets: np.ndarray) -> onnx.ModelProto:
    """TokenMerge reads "vwt/keys" + the tile offsets (vwt_export.hybrid.merge.tile_offsets); "vwt/keys" itself
    stays the matching's, which the checks compare with torch's."""
    import onnx_graphsurgeon as gs

    graph = gs.import_onnx(vwt_graph)
    tm = next(n for n in graph.nodes if n.op == ops.TOKEN_MERGE and n.domain == ops.DOMAIN)
    tiled = gs.Variable("vwt/tiled_keys", dtype=np.int64, shape=tm.inputs[1].shape)
    graph.nodes.append(gs.Node("Add", "vwt/tile_keys", inputs=[tm.inputs[1], gs.Constant("vwt/tile_offsets", offsets)],
                               outputs=[tiled]))
    tm.inputs[1] = tiled
    graph.cleanup().toposort()
    out = gs.export_onnx(graph)
    del out.opset_import[:]
    out.opset_import.extend(vwt_graph.opset_import)
    out.ir_version = vwt_graph.ir_version
    return out


def _without_counts(tokenize: onnx.ModelProto) -> onnx.ModelProto:
    """The tokenize stage with only the merged tokens and sizes as outputs (the counts are for the runtime)."""
    import onnx_graphsurgeon as gs

    from .stages import COUNTS

    graph = gs.import_onnx(tokenize)
    graph.outputs = [t for t in graph.outputs if t.name != COUNTS]
    graph.cleanup(remove_unused_graph_inputs=False).toposort()
    out = gs.export_onnx(graph)
    del out.opset_import[:]
    out.opset_import.extend(tokenize.opset_import)
    out.functions.extend(tokenize.functions)
    out.ir_version = tokenize.ir_version
    return out


def join(tokenize: onnx.ModelProto, trunk: onnx.ModelProto) -> onnx.ModelProto:
    """pixels -> logits: the tokenize stage's "vwt/merged" and "vwt/sizes" feed the trunk's inputs of the same
    names (the trunk's own names all start with "hybrid/", so nothing collides)."""
    from .stages import SIZES, TOKENS

    tokenize = _without_counts(tokenize)
    tokenize.ir_version = trunk.ir_version = min(tokenize.ir_version, trunk.ir_version)
    joined = onnx.compose.merge_models(tokenize, trunk, io_map=[(TOKENS, TOKENS), (SIZES, SIZES)],
                                       outputs=[OUTPUT_NAME])
    _one_opset_per_domain(joined)
    return joined


def metadata(hmodel: torch.nn.Module) -> dict[str, str]:
    from ..hybrid.merge import rule_label

    return {META_R: ",".join(map(rule_label, hmodel.rules)), META_THRESHOLD: repr(hmodel.threshold),
            META_GROUPING: hmodel.grouping, META_PROP_ATTN: str(int(hmodel.prop_attn)), META_TILE: str(hmodel.tile)}


def read_metadata(proto: onnx.ModelProto) -> dict | None:
    """{"r": [...], "threshold", "grouping", "prop_attn", "tile"} of a hybrid graph (kept by quantize_int8), else
    None."""
    props = {p.key: p.value for p in proto.metadata_props}
    if META_R not in props:
        return None
    return {"r": props[META_R].split(","), "threshold": float(props[META_THRESHOLD]),
            "grouping": props[META_GROUPING], "prop_attn": props[META_PROP_ATTN] == "1",
            "tile": int(props.get(META_TILE, 0))}


def block_sizes(proto: onnx.ModelProto) -> list[str] | None:
    """The sizes tensor each block of a hybrid graph reads (TokenMerge's, then each block's output but the last's),
    whose real (> 0) entries per image average to HybridViT.last_token_counts; None for another graph."""
    meta = read_metadata(proto)
    if meta is None:
        return None
    return [ops.SIZES_TENSOR] + [f"hybrid/block{i}/sizes_out" for i in range(len(meta["r"]) - 1)]


def export_hybrid(hmodel: torch.nn.Module, opset: int = DEFAULT_OPSET,
                  baseline: onnx.ModelProto | None = None) -> onnx.ModelProto:
    """A HybridViT (vwt_export.hybrid.compress_hybrid) -> an in-memory ONNX model: pixels[B,C,H,W] float32 ->
    logits float32, dynamic batch, with one vwt::TokenMerge node (make_portable attaches its body). `baseline`:
    the model's export_model graph, when already made. Verification against torch is the run's (check/verify.py,
    which reads HybridViT.decision_margins for the in-block decisions)."""
    from .stages import tokenize_stage
    from .surgery import apply_vwt

    model = hmodel.model
    if model.patch_embed.proj.weight.dtype != torch.float32:
        raise VWTError("the hybrid exports from a float32 model only (FP16 hybrid graphs are not built yet)")
    baseline = baseline if baseline is not None else export_model(model, opset)
    vwt_graph = apply_vwt(baseline, "inter", vocab=hmodel.vwt.vocab.words.numpy(), threshold=hmodel.threshold,
                          space=hmodel.space, prop_attn=hmodel.prop_attn, grouping=hmodel.grouping)
    if hmodel.tile:
        from ..hybrid.merge import tile_offsets

        grid_h, grid_w = model.patch_embed.grid_size
        vwt_graph = _tile_keys(vwt_graph, tile_offsets(grid_h * grid_w, grid_w, hmodel.tile,
                                                       hmodel.unit_words.shape[0]).numpy())
    proto = join(tokenize_stage(vwt_graph), export_trunk(hmodel, opset))
    proto.producer_name, proto.producer_version = "vwt-export", __version__
    onnx.helper.set_model_props(proto, metadata(hmodel))
    onnx.checker.check_model(ops.add_portable_functions(_copy(proto)))
    return proto


def _copy(proto: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    return out
