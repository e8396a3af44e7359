"""Graph surgery (onnx-graphsurgeon): turn the baseline model.onnx into the VWT model.

The passes find what they need by structure, not by name, so they survive exporter versions and renaming:

  patch conv       the Conv on the graph input whose kernel equals its stride;
  token sequence   walking forward from that Conv, the first tensor read by both a LayerNormalization (the
                   first block's norm1) and an Add (its residual): the sequence after the positional
                   embedding and norm_pre, just before the first block;
  attention        every Softmax after the token sequence;
  pooling          a ReduceMean / ReduceMax over axis 1 of a rank-3 tensor after the last block.

Inter mode inserts the matching in standard ops (normalise, MatMul "vwt/similarity" with the pre-normalised
words, ArgMax/ReduceMax, Where) whose keys (the tensor "vwt/keys") feed one vwt::TokenMerge node (ops v2).

Each pass is a function registered on gs.Graph and ends in cleanup().toposort(), as in onnx-graphsurgeon's
examples. `token_pass` is the frame of a method's graph pass (find the sequence, insert, export); `inter_graph` and
`intra_graph` are the passes of the methods registry (vwt_export.methods), which passes checked options and what
its torch model derived from them (normalised words, grid_w); `apply_vwt` does the same by mode name from raw
words, for callers without a torch model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import torch

from ..errors import VWTError
from ..vwt import defaults
from ..vwt.inter import cosine_threshold, grid_width, normalized_words
from ..vwt.merge import PAD_BIAS
from . import ops

SIMILARITY_NODE = "vwt/similarity"  # the [B*N, F] x [F, V] product; quantize.py leaves it in float by default
NORM_EPS = 1e-12  # F.normalize's clamp on the norm


@dataclass
class TokenSite:
    """Where the token sequence is, and its geometry."""

    pixels: gs.Variable
    conv: gs.Node
    tokens: gs.Variable
    patch_size: int
    channels: int
    grid: tuple[int, int]
    num_prefix: int
    embed_dim: int

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]


def _const_ints(tensor) -> list[int] | None:
    if isinstance(tensor, gs.Constant):
        return [int(v) for v in np.asarray(tensor.values).reshape(-1)]
    if tensor.inputs and tensor.inputs[0].op == "Constant":
        return [int(v) for v in np.asarray(tensor.inputs[0].attrs["value"].values).reshape(-1)]
    return None


@gs.Graph.register()
def vwt_find_tokens(self: gs.Graph) -> TokenSite:
    if len(self.inputs) != 1 or len(self.inputs[0].shape or []) != 4:
        raise VWTError("graph surgery expects one pixel input [B, C, H, W]; is this a timm ViT export?")
    pixels = self.inputs[0]
    # the Conv may read the pixels through an INT8 graph's QuantizeLinear -> DequantizeLinear or an FP16 graph's Cast
    readers, frontier = [], list(pixels.outputs)
    while frontier:
        node = frontier.pop()
        if node not in readers:
            readers.append(node)
            if node.op in ("QuantizeLinear", "DequantizeLinear", "Cast"):
                frontier += node.outputs[0].outputs
    convs = [n for n in readers if n.op == "Conv"
             and n.attrs.get("kernel_shape") == n.attrs.get("strides") and len(n.attrs.get("kernel_shape", [])) == 2]
    if len(convs) != 1:
        raise VWTError("no patch-embedding convolution (kernel == stride) reads the pixel input; not a ViT graph")
    conv = convs[0]
    p = conv.attrs["kernel_shape"]
    if p[0] != p[1]:
        raise VWTError(f"non-square patches {p} are not supported")
    c, h, w = pixels.shape[1:]
    if not all(isinstance(v, int) for v in (c, h, w)):
        raise VWTError("the pixel input needs static channels, height and width for graph surgery")
    grid = (h // p[0], w // p[1])
    frontier, seen = [conv.outputs[0]], set()
    while frontier:
        t = frontier.pop(0)
        if t.name in seen:
            continue
        seen.add(t.name)
        readers = {n.op for n in t.outputs}
        if "LayerNormalization" in readers and "Add" in readers:
            shape = t.shape or []
            if len(shape) != 3 or not isinstance(shape[1], int) or not isinstance(shape[2], int):
                raise VWTError(f"the token sequence {t.name} needs a static [B, T, D] shape, found {shape}; export "
                               "with vwt_export.graph.export")
            num_prefix = shape[1] - grid[0] * grid[1]
            if num_prefix < 0:
                raise VWTError(f"token sequence {t.name} is shorter ({shape[1]}) than the patch grid {grid}")
            return TokenSite(pixels, conv, t, p[0], c, grid, num_prefix, shape[2])
        for n in t.outputs:
            frontier.extend(n.outputs)
    raise VWTError("could not find the token sequence (a tensor read by a block's LayerNormalization and residual "
                   "Add after the patch embedding); export with vwt_export.graph.export (opset >= 17)")


def _downstream(tensor: gs.Variable) -> list[gs.Node]:
    out, seen, frontier = [], set(), [tensor]
    while frontier:
        for node in frontier.pop().outputs:
            if id(node) not in seen:
                seen.add(id(node))
                out.append(node)
                frontier.extend(node.outputs)
    return out


@gs.Graph.register()
def vwt_check_dynamic_sequence(self: gs.Graph, site: TokenSite) -> None:
    """Refuse graphs whose blocks hard-code the sequence length: reducing tokens would break their Reshapes."""
    t = site.tokens.shape[1]
    for node in _downstream(site.tokens):
        if node.op == "Reshape" and t in (_const_ints(node.inputs[1]) or []):
            raise VWTError(f"the graph hard-codes the sequence length {t} ({node.name}); export it with "
                           "vwt_export.graph.export, which keeps the sequence length dynamic")


def _patch_features(graph: gs.Graph, site: TokenSite, space: str) -> gs.Variable:
    """[B, N, F] features from standard ops: pixels (image space) or the patch-embedding conv (embed space)."""
    gh, gw = site.grid
    p, c = site.patch_size, site.channels
    feats = gs.Variable("vwt/features", dtype=np.float32, shape=[site.pixels.shape[0], site.num_patches, None])
    if space == "image":
        six = gs.Variable("vwt/patch_grid", dtype=np.float32)
        perm = gs.Variable("vwt/patch_grid_t", dtype=np.float32)
        graph.nodes += [
            gs.Node("Reshape", "vwt/patches_reshape", inputs=[site.pixels, gs.Constant("vwt/grid_shape", np.array([-1, c, gh, p, gw, p], np.int64))], outputs=[six]),
            gs.Node("Transpose", "vwt/patches_transpose", attrs={"perm": [0, 2, 4, 1, 3, 5]}, inputs=[six], outputs=[perm]),
            gs.Node("Reshape", "vwt/patches_flatten", inputs=[perm, gs.Constant("vwt/features_shape", np.array([-1, gh * gw, c * p * p], np.int64))], outputs=[feats]),
        ]
    elif space == "embed":
        embedded = site.conv.outputs[0]
        flat = gs.Variable("vwt/embed_flat", dtype=embedded.dtype)
        transposed = feats if embedded.dtype in (None, np.float32) else gs.Variable("vwt/embed_t", dtype=embedded.dtype)
        graph.nodes += [
            gs.Node("Reshape", "vwt/embed_reshape", inputs=[embedded, gs.Constant("vwt/embed_shape", np.array([0, site.embed_dim, -1], np.int64))], outputs=[flat]),
            gs.Node("Transpose", "vwt/embed_transpose", attrs={"perm": [0, 2, 1]}, inputs=[flat], outputs=[transposed]),
        ]
        if transposed is not feats:  # an FP16 graph: the words are compared in float32, as in torch
            graph.nodes.append(gs.Node("Cast", "vwt/embed_f32", attrs={"to": onnx.TensorProto.FLOAT}, inputs=[transposed], outputs=[feats]))
    else:
        raise VWTError(f"unknown feature space '{space}'")
    return feats


def _merged_of(sizes: gs.Variable) -> gs.Variable:
    """The merged token sequence produced beside `sizes` by TokenMerge."""
    return sizes.inputs[0].outputs[0]


def replace_uses(old: gs.Variable, new: gs.Variable, except_nodes: tuple[gs.Node, ...]) -> None:
    for node in list(old.outputs):
        if node in except_nodes:
            continue
        for i, inp in enumerate(node.inputs):
            if inp is old:
                node.inputs[i] = new


def _match_nodes(graph: gs.Graph, feats: gs.Variable, unit_words: np.ndarray, threshold: float,
                 num_patches: int) -> gs.Variable:
    """features [B, N, F] (float32) -> keys int64 [B, N] in standard ops, as vwt.inter.match_keys:
    normalise (x / max(|x|, eps), as F.normalize), MatMul with the pre-normalised words transposed [F, V] (the
    node "vwt/similarity": a plain GEMM the backend does best, INT8 included), ArgMax + ReduceMax, and
    Where(top >= c*, best, V + n) with c* = cosine_threshold(threshold)."""
    num_words = unit_words.shape[0]
    V = lambda name, dtype=np.float32: gs.Variable(f"vwt/{name}", dtype=dtype)  # noqa: E731
    norm, den, unit, sim = V("f_norm"), V("f_den"), V("f_unit"), V("sim")
    best_r, top_r = V("best_raw", np.int64), V("top_raw")
    best, top, matched = V("best", np.int64), V("top"), V("matched", np.bool_)
    # [-1, N]: a no-op, except that ONNX Runtime 1.2x's ArgMax/ReduceMax return an empty input unreduced
    # ([0, N, V]), which would break the Where below for an empty batch
    bn = gs.Constant("vwt/keys_shape", np.array([-1, num_patches], np.int64))
    keys = gs.Variable(ops.KEYS_TENSOR, dtype=np.int64, shape=[feats.shape[0] if feats.shape else None, num_patches])
    words_t = gs.Constant("vwt/unit_words_t", np.ascontiguousarray(unit_words.T, dtype=np.float32))
    graph.nodes += [
        gs.Node("ReduceL2", "vwt/f_norm", inputs=[feats, gs.Constant("vwt/last_axis", np.array([-1], np.int64))],
                outputs=[norm], attrs={"keepdims": 1}),
        gs.Node("Max", "vwt/f_den", inputs=[norm, gs.Constant("vwt/norm_eps", np.array(NORM_EPS, np.float32))], outputs=[den]),
        gs.Node("Div", "vwt/f_unit", inputs=[feats, den], outputs=[unit]),
        gs.Node("MatMul", SIMILARITY_NODE, inputs=[unit, words_t], outputs=[sim]),
        gs.Node("ArgMax", "vwt/best_raw", inputs=[sim], outputs=[best_r], attrs={"axis": -1, "keepdims": 0, "select_last_index": 0}),
        gs.Node("ReduceMax", "vwt/top_raw", inputs=[sim, gs.Constant("vwt/last_axis2", np.array([-1], np.int64))],
                outputs=[top_r], attrs={"keepdims": 0}),
        gs.Node("Reshape", "vwt/best", inputs=[best_r, bn], outputs=[best]),
        gs.Node("Reshape", "vwt/top", inputs=[top_r, bn], outputs=[top]),
        gs.Node("GreaterOrEqual", "vwt/matched", inputs=[top, gs.Constant("vwt/cos_threshold", np.array(cosine_threshold(threshold), np.float32))],
                outputs=[matched]),
        gs.Node("Where", "vwt/keys", inputs=[matched, best, gs.Constant("vwt/unmatched_keys", num_words + np.arange(num_patches, dtype=np.int64))],
                outputs=[keys]),
    ]
    return keys


def _token_merge_node(graph: gs.Graph, tokens: gs.Variable, keys: gs.Variable, num_prefix: int, grid_w: int,
                      batch, embed_dim) -> gs.Node:
    merged = gs.Variable("vwt/merged", dtype=tokens.dtype, shape=[batch, "vwt_tokens", embed_dim])
    sizes = gs.Variable("vwt/sizes", dtype=np.float32, shape=[batch, "vwt_tokens"])
    length = gs.Variable("vwt/length", dtype=np.int64, shape=[])
    node = gs.Node(ops.TOKEN_MERGE, "vwt/token_merge", domain=ops.DOMAIN,
                   attrs={"num_prefix": int(num_prefix), "grid_w": int(grid_w)},
                   inputs=[tokens, keys], outputs=[merged, sizes, length])
    graph.nodes.append(node)
    return node


def unit_vocabulary(vocab: np.ndarray) -> np.ndarray:
    """The words normalised exactly as the torch reference does (CompressedViT.unit_words)."""
    return normalized_words(torch.from_numpy(np.asarray(vocab, dtype=np.float32))).numpy()


@gs.Graph.register()
def vwt_insert_inter(self: gs.Graph, site: TokenSite, unit_words: np.ndarray, threshold: float, space: str = "image",
                     grid_w: int = 0) -> gs.Variable:
    """tokens -> matching (standard ops, against unit-norm words) + TokenMerge -> merged tokens. Returns the
    `sizes` tensor."""
    width = site.channels * site.patch_size ** 2 if space == "image" else site.embed_dim
    if np.ndim(unit_words) != 2 or np.shape(unit_words)[1] != width:
        raise VWTError(f"the vocabulary's words have shape {np.shape(unit_words)[1:]}, but the graph's {space}-space "
                       f"patch features have {width} values; learn the vocabulary for this model and space")
    feats = _patch_features(self, site, space)
    keys = _match_nodes(self, feats, unit_words, threshold, site.num_patches)
    tm = _token_merge_node(self, site.tokens, keys, site.num_prefix, grid_w, site.pixels.shape[0], site.embed_dim)
    replace_uses(site.tokens, tm.outputs[0], except_nodes=(tm,))
    self.cleanup().toposort()
    return tm.outputs[1]


def matching_model(vocab: np.ndarray, threshold: float, num_patches: int, *, num_prefix: int = 1, grid_w: int = 0,
                   token_type: int = onnx.TensorProto.FLOAT, portable: bool = False) -> onnx.ModelProto:
    """Matching + TokenMerge alone, as the inter graphs hold them, for tests and benchmarks: inputs "features"
    f32 [B, N, F], "tokens" [B, P+N, D]; outputs "vwt/keys", "vwt/merged", "vwt/sizes", "vwt/length"."""
    dtype = onnx.helper.tensor_dtype_to_np_dtype(token_type)
    feats = gs.Variable("features", dtype=np.float32, shape=["B", num_patches, np.shape(vocab)[1]])
    tokens = gs.Variable("tokens", dtype=dtype, shape=["B", num_prefix + num_patches, "D"])
    graph = gs.Graph(inputs=[feats, tokens], opset=ops.OPSET)
    keys = _match_nodes(graph, feats, unit_vocabulary(vocab), threshold, num_patches)
    tm = _token_merge_node(graph, tokens, keys, num_prefix, grid_w, "B", "D")
    graph.outputs = [keys, *tm.outputs]
    graph.cleanup().toposort()
    model = gs.export_onnx(graph)
    model.ir_version = 10
    _set_vwt_opset(model)
    return make_portable(model) if portable else model


def _set_vwt_opset(model: onnx.ModelProto) -> None:
    """Import the vwt domain at ops.VERSION (onnx-graphsurgeon imports a custom domain at version 1)."""
    for o in list(model.opset_import):
        if o.domain == ops.DOMAIN:
            model.opset_import.remove(o)
    model.opset_import.append(onnx.helper.make_opsetid(ops.DOMAIN, ops.VERSION))


@gs.Graph.register()
def vwt_insert_intra(self: gs.Graph, site: TokenSite, keep: int, space: str = "image") -> None:
    """tokens -> keep the `keep` highest-variance patches (TopK; raster order restored by a second TopK)."""
    feats = _patch_features(self, site, space)
    V = lambda name, dtype=np.float32: gs.Variable(f"vwt/{name}", dtype=dtype)  # noqa: E731
    C = lambda name, value, dtype=np.int64: gs.Constant(f"vwt/{name}", np.array(value, dtype))  # noqa: E731
    mean, centred, sq, ssum, var = V("f_mean"), V("f_centred"), V("f_sq"), V("f_ssum"), V("scores")
    top_v, top_i, top_f, raster_v, raster_i = V("top_v"), V("top_i", np.int64), V("top_f"), V("raster_v"), V("raster_i", np.int64)
    idx, idx3, idx_x, prefix, patches, kept = (V("keep_idx", np.int64), V("keep_idx3", np.int64), V("keep_idx_x", np.int64),
                                               V("prefix", site.tokens.dtype), V("patches", site.tokens.dtype),
                                               V("kept", site.tokens.dtype))
    selected = gs.Variable("vwt/selected", dtype=site.tokens.dtype, shape=[site.pixels.shape[0], site.num_prefix + keep, site.embed_dim])
    k = C("k", [keep])
    self.nodes += [
        gs.Node("ReduceMean", inputs=[feats, C("last", [-1])], outputs=[mean], attrs={"keepdims": 1}),
        gs.Node("Sub", inputs=[feats, mean], outputs=[centred]),
        gs.Node("Mul", inputs=[centred, centred], outputs=[sq]),
        gs.Node("ReduceSum", inputs=[sq, C("last2", [-1])], outputs=[ssum], attrs={"keepdims": 0}),
        gs.Node("Div", inputs=[ssum, C("f_minus_1", float(site.channels * site.patch_size ** 2 if space == "image" else site.embed_dim) - 1, np.float32)], outputs=[var]),
        gs.Node("TopK", inputs=[var, k], outputs=[top_v, top_i], attrs={"axis": 1, "largest": 1, "sorted": 1}),
        gs.Node("Cast", inputs=[top_i], outputs=[top_f], attrs={"to": onnx.TensorProto.FLOAT}),
        gs.Node("TopK", inputs=[top_f, k], outputs=[raster_v, raster_i], attrs={"axis": 1, "largest": 0, "sorted": 1}),
        gs.Node("Cast", inputs=[raster_v], outputs=[idx], attrs={"to": onnx.TensorProto.INT64}),
        gs.Node("Unsqueeze", inputs=[idx, C("ax_last", [-1])], outputs=[idx3]),
        gs.Node("Expand", inputs=[idx3, C("expand_shape", [1, 1, site.embed_dim])], outputs=[idx_x]),
        gs.Node("Slice", inputs=[site.tokens, C("zero", [0]), C("p", [site.num_prefix]), C("ax1", [1])], outputs=[prefix]),
        gs.Node("Slice", inputs=[site.tokens, C("p2", [site.num_prefix]), C("end", [np.iinfo(np.int64).max]), C("ax1b", [1])], outputs=[patches]),
        gs.Node("GatherElements", inputs=[patches, idx_x], outputs=[kept], attrs={"axis": 1}),
        gs.Node("Concat", inputs=[prefix, kept], outputs=[selected], attrs={"axis": 1}),
    ]
    ours = tuple(n for n in site.tokens.outputs if n.outputs and n.outputs[0] in (prefix, patches))
    replace_uses(site.tokens, selected, except_nodes=ours)
    self.cleanup().toposort()


@gs.Graph.register()
def vwt_attention_bias(self: gs.Graph, site: TokenSite, sizes: gs.Variable, prop_attn: bool = False) -> int:
    """Add the sizes-derived bias [B, 1, 1, T] to the logits of every attention Softmax. Returns how many."""
    V = lambda name, dtype=np.float32: gs.Variable(f"vwt/{name}", dtype=dtype)  # noqa: E731
    real, base, bias, bias4 = V("real", np.bool_), V("bias_base"), V("bias"), V("attn_bias")
    nodes = [gs.Node("Greater", inputs=[sizes, gs.Constant("vwt/zero_f", np.array(0.0, np.float32))], outputs=[real])]
    if prop_attn:
        clamped = V("sizes_clamped")
        nodes += [gs.Node("Max", inputs=[sizes, gs.Constant("vwt/one_f", np.array(1.0, np.float32))], outputs=[clamped]),
                  gs.Node("Log", inputs=[clamped], outputs=[base])]
    else:
        nodes += [gs.Node("Mul", inputs=[sizes, gs.Constant("vwt/zero_f2", np.array(0.0, np.float32))], outputs=[base])]
    nodes += [
        gs.Node("Where", inputs=[real, base, gs.Constant("vwt/pad_bias", np.array(PAD_BIAS, np.float32))], outputs=[bias]),
        gs.Node("Unsqueeze", inputs=[bias, gs.Constant("vwt/ax12", np.array([1, 2], np.int64))], outputs=[bias4]),
    ]
    softmaxes = [n for n in _downstream(_merged_of(sizes)) if n.op == "Softmax"]
    if not softmaxes:
        raise VWTError("no attention Softmax found after the token sequence; cannot mask padding")
    for i, sm in enumerate(softmaxes):
        biased = gs.Variable(f"vwt/biased_logits_{i}", dtype=sm.inputs[0].dtype)
        cast = gs.Variable(f"vwt/attn_bias_{i}", dtype=sm.inputs[0].dtype)
        nodes += [gs.Node("CastLike", inputs=[bias4, sm.inputs[0]], outputs=[cast]),
                  gs.Node("Add", inputs=[sm.inputs[0], cast], outputs=[biased])]
        sm.inputs[0] = biased
    self.nodes += nodes
    self.cleanup().toposort()
    return len(softmaxes)


@gs.Graph.register()
def vwt_weighted_pooling(self: gs.Graph, site: TokenSite, sizes: gs.Variable) -> int:
    """Average pooling becomes the size-weighted mean over real tokens; max pooling ignores padding."""
    count = 0
    for node in [n for n in _downstream(_merged_of(sizes)) if n.op in ("ReduceMean", "ReduceMax")]:
        x = node.inputs[0]
        axes = _const_ints(node.inputs[1]) if len(node.inputs) > 1 else node.attrs.get("axes")
        if axes != [1] or len(x.shape or [None] * 3) != 3 or node.attrs.get("keepdims", 1) != 0:
            continue
        start = 0
        src = x.inputs[0] if x.inputs else None
        if src is not None and src.op == "Slice" and _const_ints(src.inputs[3]) == [1]:
            start = _const_ints(src.inputs[1])[0]
        i = count
        dtype = np.dtype(x.dtype or np.float32)  # constants meet x: float16 in an FP16 graph
        w, w3 = gs.Variable(f"vwt/pool_w_{i}", dtype=np.float32), gs.Variable(f"vwt/pool_w3_{i}", dtype=np.float32)
        w3x = gs.Variable(f"vwt/pool_w3x_{i}", dtype=x.dtype)
        new = [
            gs.Node("Slice", inputs=[sizes, gs.Constant(f"vwt/pool_s{i}", np.array([start], np.int64)),
                                     gs.Constant(f"vwt/pool_e{i}", np.array([np.iinfo(np.int64).max], np.int64)),
                                     gs.Constant(f"vwt/pool_a{i}", np.array([1], np.int64))], outputs=[w]),
            gs.Node("Unsqueeze", inputs=[w, gs.Constant(f"vwt/pool_ax{i}", np.array([-1], np.int64))], outputs=[w3]),
            gs.Node("CastLike", inputs=[w3, x], outputs=[w3x]),
        ]
        out = node.outputs[0]
        node.outputs.clear()
        if node.op == "ReduceMean":
            xw, num, den, den_c = (gs.Variable(f"vwt/pool_{n}_{i}", dtype=x.dtype) for n in ("xw", "num", "den", "den_c"))
            new += [
                gs.Node("Mul", inputs=[x, w3x], outputs=[xw]),
                gs.Node("ReduceSum", inputs=[xw, gs.Constant(f"vwt/pool_r{i}", np.array([1], np.int64))], outputs=[num], attrs={"keepdims": 0}),
                gs.Node("ReduceSum", inputs=[w3x, gs.Constant(f"vwt/pool_r2{i}", np.array([1], np.int64))], outputs=[den], attrs={"keepdims": 0}),
                gs.Node("Max", inputs=[den, gs.Constant(f"vwt/pool_one{i}", np.array(1.0, dtype))], outputs=[den_c]),
                gs.Node("Div", inputs=[num, den_c], outputs=[out]),
            ]
        else:
            real, masked = gs.Variable(f"vwt/pool_real_{i}", dtype=np.bool_), gs.Variable(f"vwt/pool_masked_{i}", dtype=x.dtype)
            new += [
                gs.Node("Greater", inputs=[w3x, gs.Constant(f"vwt/pool_z{i}", np.array(0.0, dtype))], outputs=[real]),
                gs.Node("Where", inputs=[real, x, gs.Constant(f"vwt/pool_min{i}", np.array(np.finfo(dtype).min, dtype))], outputs=[masked]),
                gs.Node("ReduceMax", inputs=[masked, gs.Constant(f"vwt/pool_r{i}", np.array([1], np.int64))], outputs=[out], attrs={"keepdims": 0}),
            ]
        self.nodes += new
        count += 1
    self.cleanup().toposort()
    return count


@gs.Graph.register()
def vwt_forget_shapes(self: gs.Graph) -> None:
    """Drop intermediate shapes: those after the token sequence are stale once its length changes, and the
    runtime infers them again anyway."""
    io = {id(t) for t in (*self.inputs, *self.outputs)}
    for t in self.tensors().values():
        if isinstance(t, gs.Variable) and id(t) not in io:
            t.shape = None
    self.cleanup().toposort()


def token_pass(model: onnx.ModelProto, insert) -> onnx.ModelProto:
    """The baseline model with its token sequence compressed by `insert(graph, site)`: a pass that adds nodes
    reading `site.tokens` and redirects the blocks to its output (replace_uses). The frame of every method's
    graph pass: the sequence found by structure, its length checked to be dynamic, stale shapes dropped after."""
    graph = gs.import_onnx(onnx.shape_inference.infer_shapes(model))  # static shapes locate the sequence
    site = graph.vwt_find_tokens()
    graph.vwt_check_dynamic_sequence(site)
    insert(graph, site)
    graph.vwt_forget_shapes()
    out = gs.export_onnx(graph)
    out.ir_version = model.ir_version
    if any(n.domain == ops.DOMAIN for n in out.graph.node):
        _set_vwt_opset(out)
    out.producer_name, out.producer_version = model.producer_name, model.producer_version
    return out


def _insert_inter(graph: gs.Graph, site: TokenSite, unit_words: np.ndarray, threshold: float, space: str,
                  grid_w: int, prop_attn: bool, pooling: str | None) -> None:
    sizes = graph.vwt_insert_inter(site, unit_words, threshold, space, grid_w)
    graph.vwt_attention_bias(site, sizes, prop_attn)
    pooled = graph.vwt_weighted_pooling(site, sizes)
    if pooling in ("avg", "max", "avgmax") and pooled == 0:
        raise VWTError(f"the model pools tokens ('{pooling}') but no token reduction was found in the graph")


def inter_graph(model: onnx.ModelProto, unit_words: np.ndarray, threshold: float, *, space: str = "image",
                grid_w: int = 0, prop_attn: bool = False, pooling: str | None = None) -> onnx.ModelProto:
    """The baseline model -> the inter-mode VWT model: matching in standard ops against `unit_words` (unit norm,
    as the torch reference holds them; its keys in the tensor "vwt/keys") and a vwt::TokenMerge node (no function
    body attached: make_portable adds it), splitting groups into 4-connected components when grid_w > 0.

    `pooling` is the model's global pool ('token', 'avg', 'max', 'avgmax'); when it averages, the pass that
    weights the pooling by token size must have found the reduction, or the result would be wrong."""
    return token_pass(model, lambda graph, site: _insert_inter(graph, site, unit_words, threshold, space, grid_w,
                                                               prop_attn, pooling))


def intra_graph(model: onnx.ModelProto, keep: int, *, space: str = "image") -> onnx.ModelProto:
    """The baseline model -> the intra-mode VWT model, keeping `keep` patches (a count) in standard ops."""
    return token_pass(model, lambda graph, site: graph.vwt_insert_intra(site, keep, space))


def apply_vwt(model: onnx.ModelProto, mode: str, *, vocab: np.ndarray | None = None,
              threshold: float = defaults.THRESHOLD, keep: int | None = None, space: str = "image",
              prop_attn: bool = defaults.PROP_ATTN, pooling: str | None = None,
              grouping: str = defaults.GROUPING) -> onnx.ModelProto:
    """inter_graph or intra_graph by mode name, from raw words (normalised here) and a grouping (global, or local:
    grid_w = the graph's patch grid width). Options are taken as given: vwt_export.methods checks them."""
    if mode == "inter":
        if vocab is None:
            raise VWTError("inter mode needs a vocabulary")
        words = unit_vocabulary(vocab)
        return token_pass(model, lambda graph, site: _insert_inter(
            graph, site, words, threshold, space, grid_width(grouping, site.grid), prop_attn, pooling))
    if mode == "intra":
        if keep is None:
            raise VWTError("intra mode needs keep (a patch count)")
        return intra_graph(model, keep, space=space)
    raise VWTError(f"graph surgery has nothing to do for mode '{mode}'")


def make_portable(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same graph with the `vwt` ops' standard-op bodies attached as model-local functions."""
    portable = onnx.ModelProto()
    portable.CopyFrom(model)
    return ops.add_portable_functions(portable)
