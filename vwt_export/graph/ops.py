"""The `vwt` ONNX ops (domain version 2): their schemas, and their portable bodies as ONNX model-local functions.

    vwt::TokenMerge(tokens T[B,P+N,D], keys i64[B,N]; num_prefix: int, grid_w: int = 0)
        -> merged T[B,P+M,D], sizes f32[B,P+M], length i64 scalar (= P + M)
    (T = float or float16; M = the largest number of groups in the batch, data-dependent)
    vwt::BlockMerge(tokens f32[B,T,D], metric f32[B,T,C], sizes f32[B,T]; num_prefix: int, r: int, r_den: int = 0)
        -> merged f32[B,T',D], merged_sizes f32[B,T']
    (the hybrid's in-block merge; the rule is the count r when r_den = 0, else the fraction r / r_den;
    T' = T - removed(T), static given T)

Matching (which word each patch is nearest to) is not an op: surgery.py writes it in standard ops, so the
distance product runs on the backend's best GEMM. Version 1 had a `WordLabels` op; a graph that still holds
one is refused with a clear error (`check_version`).

Semantics: vwt_export.vwt.merge.token_merge (which relabels with vwt_export.vwt.inter.dense_relabel) is the
executable spec. The function body uses only standard ONNX ops (opset 18), so any runtime can run a graph
holding the node with no library. How the body does it:

  relabel  pairwise comparisons [B,N,N], no sort (so any int64 keys work, and no TopK limit on N):
           root[n] = the first patch of n's group (global: ReduceMin over equal keys; local: see below);
           label[n] = how many groups' roots m have (key[m], m) < (key[n], root[n]).
  local    (grid_w > 0) root[n] by min-label propagation in a Loop: every patch starts as its own root and takes
           the smallest root among its equal-key 4-neighbours (left, right, up, down on a grid grid_w wide, no
           wrap between rows), then its root's root (pointer jumping), until nothing changes (at most N rounds;
           with grid_w = 0 the Loop runs 0 rounds).
  merge    OneHot(labels, N) [B,N,N] and MatMul for the group sums (N bounds the number of groups and is known
           when TensorRT builds), then the first M = max label + 1 groups.
The body is O(B·N²·D) like the merge itself (and holds [B,N,N] int64/float temporaries: ~290 MB per image at
N = 6000), meant for portability, not speed: the op library is fast. Tested on ONNX Runtime CPU (B = 0 included);
UNVERIFIED on TensorRT (no TensorRT runtime here): its Loop, OneHot and int64 reductions there are untested.

BlockMerge's spec is vwt_export.hybrid.merge.merge_step (ToMe's bipartite matching per image on padded
sequences). Its body has no Scatter, TopK, Loop or sort: cosine scores of A (even positions) against B (odd)
[B,Ta,Tb], -inf where a prefix token or a pad (size 0) takes part; ReduceMax/ArgMax for each A token's best
partner; a descending rank by pairwise comparisons [B,Ta,Ta], merged = rank < r_b (r_b = removed(L_b), L_b =
the image's tokens of size > 0); the size-weighted rows [token*size, size] of merged A tokens added into their
partners by a one-hot MatMul [B,Tb,Ta]; the output order [prefix][unmerged real A][real B][pads] by CumSum
slots, inverted by a one-hot ArgMax [B,T',T] and applied with GatherElements; then divided by max(size, 1).
An image that merges nothing (r_b = 0, always so when removed(T) = 0) keeps its order: every slot is its
position, as when it runs alone (pads come out as zero tokens). Tested on ONNX Runtime CPU; TensorRT-RTX
parses and builds it (tests/backends/test_tensorrt.py); UNVERIFIED running on TensorRT.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from ..errors import VWTError

DOMAIN = "vwt"
VERSION = 2
OPSET = 18
TOKEN_MERGE = "TokenMerge"
BLOCK_MERGE = "BlockMerge"
KEYS_TENSOR = "vwt/keys"  # in every inter graph: the int64 [B, N] keys feeding TokenMerge
SIZES_TENSOR = "vwt/sizes"  # inter graphs: TokenMerge's f32 [B, T] sizes (0 for padding)
SELECTED_TENSOR = "vwt/selected"  # intra graphs: the kept tokens [B, P+K, D]
NODE_PREFIX = "vwt/"  # every node and tensor graph surgery adds is named vwt/...
TOKENIZE_SUFFIX, TRUNK_SUFFIX = ".tokenize.onnx", ".trunk.onnx"  # the two stages: model.vwt.onnx -> model.vwt.tokenize.onnx
OPS = (TOKEN_MERGE, BLOCK_MERGE)
INT64_MAX = np.iinfo(np.int64).max


class _Body:
    """Builds a function body (or a Loop body) node by node with readable names."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []

    def __call__(self, op: str, inputs: list[str], outputs: list[str] | str, **attrs) -> str | list[str]:
        outs = [outputs] if isinstance(outputs, str) else outputs
        self.nodes.append(helper.make_node(op, inputs, outs, **attrs))
        return outputs

    def const(self, name: str, value, dtype=None) -> str:
        arr = np.array(value, dtype=dtype)
        self.nodes.append(helper.make_node("Constant", [], [name], value=onnx.numpy_helper.from_array(arr, name)))
        return name

    def const_attr(self, name: str, attr: str, attr_type: int, field: str) -> str:
        """A Constant whose value is the function's attribute `attr`."""
        node = helper.make_node("Constant", [], [name])
        node.attribute.append(_attr_ref(field, attr, attr_type))
        self.nodes.append(node)
        return name


def _attr_ref(field: str, ref_name: str, attr_type: int) -> onnx.AttributeProto:
    a = onnx.AttributeProto()
    a.name, a.ref_attr_name, a.type = field, ref_name, attr_type
    return a


def _propagation_loop_body() -> onnx.GraphProto:
    """One round of min-label propagation. Loop-carried: roots [B,N], and (unchanged) the neighbour table
    nb [N,4] and the equal-key mask same [B,N,4], carried rather than captured from the outer scope so the body
    needs nothing from the function around it."""
    b = _Body()
    b.const("lp_big", INT64_MAX, np.int64)
    b.const("lp_last", [2], np.int64)
    b("Gather", ["lp_roots_in", "lp_nb_in"], "lp_nb_roots", axis=1)  # [B, N, 4]
    b("Where", ["lp_same_in", "lp_nb_roots", "lp_big"], "lp_candidates")
    b("ReduceMin", ["lp_candidates", "lp_last"], "lp_nb_min", keepdims=0)
    b("Min", ["lp_roots_in", "lp_nb_min"], "lp_lowered")
    b("GatherElements", ["lp_lowered", "lp_lowered"], "lp_roots_out", axis=1)  # pointer jumping
    b("Cast", [b("Not", [b("Equal", ["lp_roots_out", "lp_roots_in"], "lp_same_root")], "lp_changed")],
      "lp_changed_i", to=TensorProto.INT64)
    b("ReduceSum", ["lp_changed_i"], "lp_n_changed", keepdims=0)
    b("Greater", ["lp_n_changed", b.const("lp_zero", 0, np.int64)], "lp_cond_out")
    b("Identity", ["lp_nb_in"], "lp_nb_out")
    b("Identity", ["lp_same_in"], "lp_same_out")
    i64, boolean = TensorProto.INT64, TensorProto.BOOL
    return helper.make_graph(
        b.nodes, "vwt_propagate",
        [helper.make_tensor_value_info("lp_iter", i64, []), helper.make_tensor_value_info("lp_cond_in", boolean, []),
         helper.make_tensor_value_info("lp_roots_in", i64, None), helper.make_tensor_value_info("lp_nb_in", i64, None),
         helper.make_tensor_value_info("lp_same_in", boolean, None)],
        [helper.make_tensor_value_info("lp_cond_out", boolean, []),
         helper.make_tensor_value_info("lp_roots_out", i64, None), helper.make_tensor_value_info("lp_nb_out", i64, None),
         helper.make_tensor_value_info("lp_same_out", boolean, None)],
    )


def _relabel_nodes(b: _Body) -> str:
    """keys [B,N] -> labels [B,N] (dense_relabel, with grid_w from the attribute). Returns the labels' name."""
    ax0, ax1, ax2 = b.const("ax0", [0], np.int64), b.const("ax1", [1], np.int64), b.const("ax2", [2], np.int64)
    b("Squeeze", [b("Slice", [b("Shape", ["keys"], "keys_shape"), ax1, ax2], "n_1d"), ax0], "n")
    zero, one = b.const("zero_i", 0, np.int64), b.const("one_i", 1, np.int64)
    b("Range", [zero, "n", one], "idx")  # [N]: patch indices
    b("Unsqueeze", ["keys", ax2], "key_n")  # [B, N, 1]: the patch being labelled
    b("Unsqueeze", ["keys", ax1], "key_m")  # [B, 1, N]: the patches it is compared with
    b("Equal", ["key_m", "key_n"], "eq")  # [B, N, N]
    # global grouping: the root of a patch is the first patch with its key
    b("ReduceMin", [b("Where", ["eq", "idx", "n"], "eq_idx"), ax2], "first", keepdims=0)
    # local grouping: start from every patch being its own root; Loop rounds = N when grid_w > 0, else 0
    gw = b.const_attr("grid_w_s", "grid_w", onnx.AttributeProto.INT, "value_int")
    b("Greater", [gw, zero], "local")
    b("Where", ["local", b("Expand", ["idx", "keys_shape"], "idx_bn"), "first"], "roots0")
    b("Where", ["local", "n", zero], "rounds")
    # neighbour table [N, 4] (grid_w = 0 uses width 1; the Loop does not run then)
    w = b("Max", [gw, one], "w")
    b("Mod", ["idx", w], "col")
    b("Sub", ["idx", one], "idx_m1")
    b("Add", ["idx", one], "idx_p1")
    b("Where", [b("Greater", ["col", zero], "has_left"), "idx_m1", "idx"], "left")
    b("And", [b("Less", ["col", b("Sub", [w, one], "w_m1")], "not_last_col"), b("Less", ["idx_p1", "n"], "p1_in")], "has_right")
    b("Where", ["has_right", "idx_p1", "idx"], "right")
    b("Where", [b("GreaterOrEqual", ["idx", w], "has_up"), b("Sub", ["idx", w], "idx_mw"), "idx"], "up")
    b("Add", ["idx", w], "idx_pw")
    b("Where", [b("Less", ["idx_pw", "n"], "has_down"), "idx_pw", "idx"], "down")
    cols = [b("Unsqueeze", [d, ax1], f"{d}_col") for d in ("left", "right", "up", "down")]
    b("Concat", cols, "nb", axis=1)
    b("Equal", [b("Gather", ["keys", "nb"], "nb_keys", axis=1), "key_n"], "same")  # [B, N, 4]
    b("Loop", ["rounds", b.const("go", True, np.bool_), "roots0", "nb", "same"], ["roots", "nb_done", "same_done"],
      body=_propagation_loop_body())
    # label = number of groups (represented by their roots m) ordered before (key[n], root[n])
    b("Unsqueeze", [b("Equal", ["roots", "idx"], "is_root"), ax1], "root_m")  # [B, 1, N]
    b("Less", ["idx", b("Unsqueeze", ["roots", ax2], "root_n")], "earlier")  # [B, N, N]: m < root[n]
    b("Or", [b("Less", ["key_m", "key_n"], "smaller"), b("And", ["eq", "earlier"], "tie_earlier")], "before")
    b("Cast", [b("And", ["before", "root_m"], "group_before")], "group_before_i", to=TensorProto.INT64)
    return b("ReduceSum", ["group_before_i", ax2], "labels", keepdims=0)


def token_merge_function() -> onnx.FunctionProto:
    b = _Body()
    labels = _relabel_nodes(b)
    ax1, zero1 = "ax1", b.const("zero1", [0], np.int64)
    big = b.const("big", [INT64_MAX], np.int64)
    p_scalar = b.const_attr("p_scalar", "num_prefix", onnx.AttributeProto.INT, "value_int")
    b("Unsqueeze", [p_scalar, "ax0"], "p")
    b("Slice", ["tokens", zero1, "p", ax1], "prefix")
    b("Cast", [b("Slice", ["tokens", "p", big, ax1], "patches")], "patches_f", to=TensorProto.FLOAT)
    # one-hot membership [B, N, N]: N (static) bounds the number of groups, and TensorRT needs OneHot's depth
    # at build time; the first M = max label + 1 groups are kept
    b("OneHot", [labels, "n", b.const("off_on", [0.0, 1.0], np.float32)], "member", axis=-1)
    b("ReduceSum", ["member", ax1], "counts_n", keepdims=0)  # [B, N]; 0 for unused groups
    b("MatMul", [b("Transpose", ["member"], "member_t", perm=[0, 2, 1]), "patches_f"], "sums_n")  # [B, N, D]
    # M = max label + 1 over the batch; the appended 0 makes an empty batch give M = 0
    b("Reshape", [b("Add", [labels, "one_i"], "group_no"), b.const("flat", [-1], np.int64)], "group_no_flat")
    b("Concat", ["group_no_flat", zero1], "group_no_or_0", axis=0)
    b("ReduceMax", ["group_no_or_0"], "m", keepdims=1)  # [1]
    b("Slice", ["counts_n", zero1, "m", ax1], "counts")  # [B, M]
    b("Slice", ["sums_n", zero1, "m", ax1], "sums")  # [B, M, D]
    b("Max", ["counts", b.const("one_f", 1.0, np.float32)], "den")
    b("Div", ["sums", b("Unsqueeze", ["den", b.const("last", [-1], np.int64)], "den3")], "means_f")
    b("CastLike", ["means_f", "tokens"], "means")
    b("Concat", ["prefix", "means"], "merged", axis=1)
    # sizes: 1 for each prefix token, then the group sizes
    b("Slice", [b("Shape", ["tokens"], "shape"), zero1, b.const("one1", [1], np.int64)], "batch")
    b("ConstantOfShape", [b("Concat", ["batch", "p"], "prefix_shape", axis=0)], "prefix_sizes",
      value=onnx.numpy_helper.from_array(np.array([1.0], np.float32)))
    b("Concat", ["prefix_sizes", "counts"], "sizes", axis=1)
    b("Reshape", [b("Add", ["p", "m"], "length_1d"), b.const("scalar", np.zeros(0, np.int64))], "length")
    grid_w_default = helper.make_attribute("grid_w", 0)
    return helper.make_function(
        DOMAIN, TOKEN_MERGE, ["tokens", "keys"], ["merged", "sizes", "length"], b.nodes,
        opset_imports=[helper.make_opsetid("", OPSET)], attributes=["num_prefix"], attribute_protos=[grid_w_default],
    )


def _removed_nodes(b: _Body, length: str, tag: str) -> str:
    """Tokens a sequence of `length` real tokens (int64, any shape) loses in one step, as
    vwt_export.hybrid.merge.removed: min(want, n // 2), n = max(length - P, 0), want = r, or n * r // r_den when
    r_den > 0. Everything is non-negative, so ONNX's truncating Div is the floor."""
    n = b("Max", [b("Sub", [length, "bm_p"], f"bm_{tag}_n_raw"), "bm_zero"], f"bm_{tag}_n")
    share = b("Div", [b("Mul", [n, "bm_r"], f"bm_{tag}_nr"), "bm_den"], f"bm_{tag}_share")
    want = b("Where", ["bm_fraction", share, "bm_r"], f"bm_{tag}_want")
    return b("Min", [want, b("Div", [n, "bm_two"], f"bm_{tag}_half")], f"bm_{tag}_removed")


def block_merge_function() -> onnx.FunctionProto:
    b = _Body()
    i64, f32, INT = TensorProto.INT64, TensorProto.FLOAT, onnx.AttributeProto.INT
    ax0, ax1, ax2 = b.const("ax0", [0], np.int64), b.const("ax1", [1], np.int64), b.const("ax2", [2], np.int64)
    last, end = b.const("last", [-1], np.int64), b.const("end", [INT64_MAX], np.int64)
    zero1, step2 = b.const("zero1", [0], np.int64), b.const("step2", [2], np.int64)
    zero, one, two = b.const("bm_zero", 0, np.int64), b.const("one_i", 1, np.int64), b.const("bm_two", 2, np.int64)
    b.const_attr("bm_p", "num_prefix", INT, "value_int")
    b.const_attr("bm_r", "r", INT, "value_int")
    r_den = b.const_attr("r_den_s", "r_den", INT, "value_int")
    b("Greater", [r_den, zero], "bm_fraction")
    b("Max", [r_den, one], "bm_den")  # r_den = 0 (a count) must not divide by zero in the unused branch
    # T' = T - removed(T): the batch's length decides the output shape
    shape = b("Shape", ["tokens"], "shape")
    t = b("Squeeze", [b("Slice", [shape, ax1, ax2], "t_1d"), ax0], "t")
    removed_t = _removed_nodes(b, t, "t")
    t_out = b("Sub", [t, removed_t], "t_out")
    # per image: L_b real tokens (size > 0), r_b = removed(L_b)
    real = b("Greater", ["sizes", b.const("zero_f", 0.0, np.float32)], "real")  # [B, T]
    lengths = b("ReduceSum", [b("Cast", [real], "real_i", to=i64), ax1], "lengths", keepdims=0)
    r_img = b("Unsqueeze", [_removed_nodes(b, lengths, "img"), ax1], "r_img")  # [B, 1]
    b("Greater", [r_img, zero], "merges")  # an image that merges nothing keeps its order, as it does alone
    # cosine scores of A (even positions) against B (odd positions); -inf where a prefix token or a pad takes part
    unit = b("Div", ["metric", b("ReduceL2", ["metric", last], "metric_norm", keepdims=1)], "unit")
    evens, odds = [zero1, end, ax1, step2], [b.const("one1", [1], np.int64), end, ax1, step2]
    unit_a, unit_b = b("Slice", [unit, *evens], "unit_a"), b("Slice", [unit, *odds], "unit_b")
    scores = b("MatMul", [unit_a, b("Transpose", [unit_b], "unit_b_t", perm=[0, 2, 1])], "scores")  # [B, Ta, Tb]
    pos = b("Range", [zero, t, one], "pos")  # [T]
    allowed = b("And", [real, b("GreaterOrEqual", [pos, "bm_p"], "not_prefix")], "allowed")  # [B, T]
    allowed_a = b("Unsqueeze", [b("Slice", [allowed, *evens], "allowed_a"), ax2], "allowed_a3")  # [B, Ta, 1]
    allowed_b = b("Unsqueeze", [b("Slice", [allowed, *odds], "allowed_b"), ax1], "allowed_b3")  # [B, 1, Tb]
    b("Where", [b("And", [allowed_a, allowed_b], "pair_allowed"), scores, b.const("minus_inf", -np.inf, np.float32)],
      "pair_scores")
    # one more -inf column: ArgMax fails on an empty axis (T = 1, no B token); it is never chosen (ties: lowest b)
    b("Pad", ["pair_scores", b.const("pad_end", [0, 1], np.int64), "minus_inf", ax2], "pair_scores_padded")
    best = b("ReduceMax", ["pair_scores_padded", ax2], "best", keepdims=0)  # [B, Ta]
    partner = b("ArgMax", ["pair_scores_padded"], "partner", axis=2, keepdims=0)  # ties: the lowest b
    # descending rank by pairwise comparisons (ties: the lower a first); the r_b best A tokens merge
    ta = b("Squeeze", [b("Slice", [b("Shape", [best], "best_shape"), ax1, ax2], "ta_1d"), ax0], "ta")
    pos_a = b("Range", [zero, ta, one], "pos_a")
    best_i, best_j = b("Unsqueeze", [best, ax2], "best_i"), b("Unsqueeze", [best, ax1], "best_j")  # [B,Ta,1], [B,1,Ta]
    earlier = b("Less", [pos_a, b("Unsqueeze", [pos_a, ax1], "pos_a_col")], "earlier")  # [Ta, Ta]: j < i
    tie_earlier = b("And", [b("Equal", [best_j, best_i], "tied"), earlier], "tie_earlier")
    before = b("Or", [b("Greater", [best_j, best_i], "higher"), tie_earlier], "before")
    rank = b("ReduceSum", [b("Cast", [before], "before_i", to=i64), ax2], "rank", keepdims=0)
    merged = b("Less", [rank, r_img], "is_merged")  # [B, Ta]
    # size-weighted sums [B, T, D+1]: token * size, then size; merged A rows summed into their partners
    s = b("Unsqueeze", ["sizes", last], "s")
    weighted = b("Concat", [b("Mul", ["tokens", s], "xs"), s], "weighted", axis=-1)
    w_a, w_b = b("Slice", [weighted, *evens], "w_a"), b("Slice", [weighted, *odds], "w_b")
    tb = b("Squeeze", [b("Slice", [b("Shape", [w_b], "w_b_shape"), ax1, ax2], "tb_1d"), ax0], "tb")
    pos_b_col = b("Unsqueeze", [b("Range", [zero, tb, one], "pos_b"), ax1], "pos_b_col")  # [Tb, 1]
    into = b("And", [b("Equal", [b("Unsqueeze", [partner, ax1], "partner_row"), pos_b_col], "is_partner"),
                     b("Unsqueeze", [merged, ax1], "merged_row")], "into")  # [B, Tb, Ta]
    w_b_new = b("Add", [w_b, b("MatMul", [b("Cast", [into], "into_f", to=f32), w_a], "received")], "w_b_new")
    # output slots [prefix][unmerged real A][real B][pads] (output_slots); merged A tokens get T (no slot)
    is_a = b("Equal", [b("Mod", [pos, two], "parity"), zero], "is_a")
    prefix = b("Less", [pos, "bm_p"], "prefix")
    half_pos = b("Div", [pos, two], "half_pos")
    merged_full = b("And", [b("Gather", [merged, half_pos], "merged_at", axis=1), is_a], "merged_full")
    unmerged_a = b("And", [b("And", [allowed, is_a], "real_a"), b("Not", [merged_full], "kept")], "unmerged_a")
    real_b = b("And", [allowed, b("Not", [is_a], "is_b")], "real_b")
    pads = b("Not", [real], "pads")

    def kind(mask: str, counted: bool = True) -> tuple[str | None, str]:  # (count per image [B, 1], place among its kind [B, T])
        as_int = b("Cast", [mask], f"{mask}_i", to=i64)
        count = b("ReduceSum", [as_int, ax1], f"{mask}_n", keepdims=1) if counted else None
        return count, b("Sub", [b("CumSum", [as_int, b.const(f"{mask}_axis", 1, np.int64)], f"{mask}_cum"), one],
                        f"{mask}_rank")

    n_a, rank_a = kind(unmerged_a)
    n_b, rank_b = kind(real_b)
    _, rank_pad = kind(pads, counted=False)
    start_b = b("Add", ["bm_p", n_a], "start_b")
    start_pad = b("Add", [start_b, n_b], "start_pad")
    slot = b("Where", [pads, b("Add", [start_pad, rank_pad], "pad_slot"), t], "slot_pads")
    slot = b("Where", [real_b, b("Add", [start_b, rank_b], "b_slot"), slot], "slot_b")
    slot = b("Where", [unmerged_a, b("Add", ["bm_p", rank_a], "a_slot"), slot], "slot_a")
    slot = b("Where", [prefix, pos, slot], "slot_prefix")
    slot = b("Where", ["merges", slot, pos], "slot")  # the image merges nothing: its input order
    # invert: for each output slot k < T', the token that fills it (a one-hot ArgMax, no Scatter)
    k_col = b("Unsqueeze", [b("Range", [zero, t_out, one], "k"), ax1], "k_col")  # [T', 1]
    fills = b("Cast", [b("Equal", [b("Unsqueeze", [slot, ax1], "slot_row"), k_col], "fills_b")], "fills", to=f32)
    source = b("ArgMax", [fills], "source", axis=2, keepdims=0)  # [B, T']
    src_half = b("Div", [source, two], "src_half")
    src_is_a = b("Equal", [b("Mod", [source, two], "src_parity"), zero], "src_is_a")
    index = b("Where", [src_is_a, src_half, b("Add", [src_half, ta], "src_in_b")], "index")  # into [A; B]
    ab = b("Concat", [w_a, w_b_new], "ab", axis=1)
    gather_shape = b("Concat", [b("Slice", [shape, zero1, "one1"], "batch"), b("Unsqueeze", [t_out, ax0], "t_out_1d"),
                                b("Slice", [b("Shape", [ab], "ab_shape"), last, end], "width")], "gather_shape", axis=0)
    index3 = b("Expand", [b("Unsqueeze", [index, last], "index_col"), gather_shape], "index3")
    out = b("GatherElements", [ab, index3], "out", axis=1)  # [B, T', D+1]
    b("Squeeze", [b("Slice", [out, last, end, ax2], "out_size"), ax2], "merged_sizes")
    out_sum = b("Slice", [out, zero1, last, ax2], "out_sum")
    den = b("Unsqueeze", [b("Max", ["merged_sizes", b.const("one_f", 1.0, np.float32)], "den"), last], "den3")
    b("Div", [out_sum, den], "merged")
    r_den_default = helper.make_attribute("r_den", 0)
    return helper.make_function(
        DOMAIN, BLOCK_MERGE, ["tokens", "metric", "sizes"], ["merged", "merged_sizes"], b.nodes,
        opset_imports=[helper.make_opsetid("", OPSET)], attributes=["num_prefix", "r"],
        attribute_protos=[r_den_default],
    )


FUNCTIONS = {TOKEN_MERGE: token_merge_function, BLOCK_MERGE: block_merge_function}


def check_version(model: onnx.ModelProto) -> None:
    """Refuse a graph made for another version of the vwt ops, with the fix."""
    versions = {o.version for o in model.opset_import if o.domain == DOMAIN}
    v1_nodes = [n.op_type for n in model.graph.node if n.domain == DOMAIN and n.op_type not in FUNCTIONS]
    if (versions and versions != {VERSION}) or v1_nodes:
        found = f"version {sorted(versions)}" if versions and versions != {VERSION} else f"op {v1_nodes[0]}"
        raise VWTError(f"the graph uses vwt ops {found}, this vwt-export has version {VERSION} "
                       f"({', '.join(OPS)}); "
                       "export the graph again with this version")


def add_portable_functions(model: onnx.ModelProto) -> onnx.ModelProto:
    """Attach the portable bodies of every `vwt` op the graph uses (the graph itself is unchanged)."""
    check_version(model)
    used = {n.op_type for n in model.graph.node if n.domain == DOMAIN}
    have = {(f.domain, f.name) for f in model.functions}
    for name in sorted(used):
        if (DOMAIN, name) not in have:
            model.functions.append(FUNCTIONS[name]())
    return model


def single_op_model(op: str, *, portable: bool = False, token_type: int = TensorProto.FLOAT, **attrs) -> onnx.ModelProto:
    """A graph holding one vwt op, for tests and benchmarks, with the op's own input and output names:
    TokenMerge: "tokens" [B,T,D], "keys" [B,N] -> "merged", "sizes", "length";
    BlockMerge: "tokens" [B,T,D], "metric" [B,T,C], "sizes" [B,T] -> "merged", "merged_sizes" (float32 only)."""
    f32, i64 = TensorProto.FLOAT, TensorProto.INT64
    if op == TOKEN_MERGE:
        inputs = [("tokens", token_type, ["B", "T", "D"]), ("keys", i64, ["B", "N"])]
        outputs = [("merged", token_type, ["B", "M", "D"]), ("sizes", f32, ["B", "M"]), ("length", i64, [])]
    elif op == BLOCK_MERGE:
        if token_type != f32:
            raise VWTError(f"vwt::{BLOCK_MERGE} takes float32 tokens (token_type={token_type})")
        inputs = [("tokens", f32, ["B", "T", "D"]), ("metric", f32, ["B", "T", "C"]), ("sizes", f32, ["B", "T"])]
        outputs = [("merged", f32, ["B", "T_out", "D"]), ("merged_sizes", f32, ["B", "T_out"])]
    else:
        raise VWTError(f"unknown vwt op {op} (version {VERSION} has {', '.join(OPS)})")
    node = helper.make_node(op, [n for n, *_ in inputs], [n for n, *_ in outputs], domain=DOMAIN, **attrs)
    graph = helper.make_graph([node], op, [helper.make_tensor_value_info(*i) for i in inputs],
                              [helper.make_tensor_value_info(*o) for o in outputs])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(DOMAIN, VERSION)],
                              ir_version=10)
    return add_portable_functions(model) if portable else model
