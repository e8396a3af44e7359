"""The `vwt` ONNX ops: schemas, and their portable bodies as ONNX model-local functions.

    vwt::WordLabels(features f32[B,N,F], vocab f32[V,F]; threshold: float) -> labels i64[B,N]
    vwt::TokenMerge(tokens T[B,P+N,D], labels i64[B,N]; num_prefix: int) -> merged T[B,P+M,D], sizes f32[B,P+M]
    (T = float or float16; M = the largest number of groups in the batch, data-dependent)

Semantics: vwt_export.vwt.inter.word_labels and vwt_export.vwt.merge.token_merge are the executable spec.
The function bodies use only standard ONNX ops (opset 18) so that any runtime can run a graph holding these
nodes with no library: TopK stands in for sort (its spec breaks ties by lower index, which is exactly the
stable order dense relabelling needs), OneHot + MatMul for the grouped mean.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

DOMAIN = "vwt"
VERSION = 1
OPSET = 18
WORD_LABELS, TOKEN_MERGE = "WordLabels", "TokenMerge"
EPS = 1e-12  # F.normalize's clamp on the norm


class _Body:
    """Builds a function body node by node with readable names."""

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


def word_labels_function() -> onnx.FunctionProto:
    b = _Body()
    eps, one = b.const("eps", EPS, np.float32), b.const("one", 1.0, np.float32)
    last, axis1 = b.const("last", [-1], np.int64), b.const("axis1", 1, np.int64)
    thr = b.const_attr("thr", "threshold", onnx.AttributeProto.FLOAT, "value_float")
    # unit vectors, as F.normalize: x / max(|x|, eps)
    b("ReduceL2", ["features", "last"], "f_norm", keepdims=1)
    b("Div", ["features", b("Max", ["f_norm", "eps"], "f_den")], "f_unit")
    b("ReduceL2", ["vocab", "last"], "w_norm", keepdims=1)
    b("Div", ["vocab", b("Max", ["w_norm", "eps"], "w_den")], "w_unit")
    b("MatMul", ["f_unit", b("Transpose", ["w_unit"], "w_unit_t", perm=[1, 0])], "cos")
    b("Sub", [one, "cos"], "dist")
    b("ReduceMin", ["dist", last], "d_min", keepdims=0)
    b("ArgMin", ["dist"], "best", axis=-1, keepdims=0, select_last_index=0)
    b("LessOrEqual", ["d_min", thr], "matched")
    # unmatched patches: key = V + rank among the image's unmatched patches (raster order)
    b("Cast", [b("Not", ["matched"], "unmatched")], "unmatched_i", to=TensorProto.INT64)
    b("Sub", [b("CumSum", ["unmatched_i", axis1], "unmatched_n"), b.const("one_i", 1, np.int64)], "rank")
    b("Gather", [b("Shape", ["vocab"], "vocab_shape"), b.const("zero_i", 0, np.int64)], "num_words", axis=0)
    b("Where", ["matched", "best", b("Add", ["rank", "num_words"], "unmatched_key")], "keys")
    # dense relabelling: sort keys (TopK over float keys, exact below 2**24; lower index first on ties) ...
    b("Cast", ["keys"], "keys_f", to=TensorProto.FLOAT)
    b("Slice", [b("Shape", ["keys"], "keys_shape"), b.const("s1", [1], np.int64), b.const("s2", [2], np.int64)], "n")
    b("TopK", ["keys_f", "n"], ["sorted", "order"], axis=1, largest=0, sorted=1)
    # ... mark where a new key starts, count them, and scatter the running count back to raster order
    big = b.const("big", [np.iinfo(np.int64).max], np.int64)
    b("Slice", ["sorted", b.const("from1", [1], np.int64), big, b.const("ax1", [1], np.int64)], "tail")
    b("Slice", ["sorted", b.const("from0", [0], np.int64), b.const("to_m1", [-1], np.int64), "ax1"], "head")
    b("Cast", [b("Not", [b("Equal", ["tail", "head"], "same")], "new_key")], "new_key_i", to=TensorProto.INT64)
    b("Mul", [b("Slice", ["order", "from0", "from1", "ax1"], "first_col"), b.const("zero_v", 0, np.int64)], "zero_col")
    b("CumSum", [b("Concat", ["zero_col", "new_key_i"], "starts", axis=1), axis1], "dense_sorted")
    b("Mul", ["keys", "zero_v"], "zeros")
    b("ScatterElements", ["zeros", "order", "dense_sorted"], "labels", axis=1)
    return helper.make_function(
        DOMAIN, WORD_LABELS, ["features", "vocab"], ["labels"], b.nodes,
        opset_imports=[helper.make_opsetid("", OPSET)], attributes=["threshold"],
    )


def token_merge_function() -> onnx.FunctionProto:
    b = _Body()
    ax1 = b.const("ax1", [1], np.int64)
    zero1 = b.const("zero1", [0], np.int64)
    big = b.const("big", [np.iinfo(np.int64).max], np.int64)
    p_scalar = b.const_attr("p_scalar", "num_prefix", onnx.AttributeProto.INT, "value_int")
    b("Unsqueeze", [p_scalar, b.const("ax0", [0], np.int64)], "p")
    b("Slice", ["tokens", zero1, "p", ax1], "prefix")
    b("Cast", [b("Slice", ["tokens", "p", big, ax1], "patches")], "patches_f", to=TensorProto.FLOAT)
    # one-hot membership [B, N, N]: N (static) bounds the number of groups, and TensorRT needs OneHot's depth
    # at build time; the first M = max label + 1 groups are kept
    b("Slice", [b("Shape", ["labels"], "labels_shape"), b.const("s1", [1], np.int64), b.const("s2", [2], np.int64)], "n")
    b("OneHot", ["labels", "n", b.const("off_on", [0.0, 1.0], np.float32)], "member", axis=-1)
    b("ReduceSum", ["member", ax1], "counts_n", keepdims=0)  # [B, N]; 0 for unused groups
    b("MatMul", [b("Transpose", ["member"], "member_t", perm=[0, 2, 1]), "patches_f"], "sums_n")  # [B, N, D]
    b("Add", [b("ReduceMax", ["labels"], "max_label", keepdims=1, noop_with_empty_axes=0), b.const("one_i", 1, np.int64)], "m_2d")
    b("Reshape", ["m_2d", b.const("one_shape", [1], np.int64)], "m")
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
    return helper.make_function(
        DOMAIN, TOKEN_MERGE, ["tokens", "labels"], ["merged", "sizes"], b.nodes,
        opset_imports=[helper.make_opsetid("", OPSET)], attributes=["num_prefix"],
    )


FUNCTIONS = {WORD_LABELS: word_labels_function, TOKEN_MERGE: token_merge_function}


def add_portable_functions(model: onnx.ModelProto) -> onnx.ModelProto:
    """Attach the portable bodies of every `vwt` op the graph uses (the graph itself is unchanged)."""
    used = {n.op_type for n in model.graph.node if n.domain == DOMAIN}
    have = {(f.domain, f.name) for f in model.functions}
    for name in sorted(used):
        if name not in FUNCTIONS:
            raise ValueError(f"unknown vwt op {name}")
        if (DOMAIN, name) not in have:
            model.functions.append(FUNCTIONS[name]())
    return model


def single_op_model(op: str, *, portable: bool = False, token_type: int = TensorProto.FLOAT, **attrs) -> onnx.ModelProto:
    """A graph holding one vwt op, for tests and benchmarks (inputs and outputs named as the op's)."""
    f32, i64 = TensorProto.FLOAT, TensorProto.INT64
    if op == WORD_LABELS:
        inputs = [("features", f32, ["B", "N", "F"]), ("vocab", f32, ["V", "F"])]
        outputs = [("labels", i64, ["B", "N"])]
    elif op == TOKEN_MERGE:
        inputs = [("tokens", token_type, ["B", "T", "D"]), ("labels", i64, ["B", "N"])]
        outputs = [("merged", token_type, ["B", "M", "D"]), ("sizes", f32, ["B", "M"])]
    else:
        raise ValueError(f"unknown vwt op {op}")
    node = helper.make_node(op, [n for n, *_ in inputs], [n for n, *_ in outputs], domain=DOMAIN, **attrs)
    graph = helper.make_graph([node], op, [helper.make_tensor_value_info(*i) for i in inputs],
                              [helper.make_tensor_value_info(*o) for o in outputs])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(DOMAIN, VERSION)],
                              ir_version=10)
    return add_portable_functions(model) if portable else model
