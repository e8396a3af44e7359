import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from vwt_export.graph import ops


def op_model(ops_used=("WordLabels", "TokenMerge"), threshold=0.3, num_prefix=1, token_type=TensorProto.FLOAT,
             portable=False):
    """A two-node graph: features, vocab, tokens -> labels, merged, sizes."""
    nodes = [
        helper.make_node("WordLabels", ["f", "w"], ["labels"], domain="vwt", threshold=threshold),
        helper.make_node("TokenMerge", ["t", "labels"], ["merged", "sizes"], domain="vwt", num_prefix=num_prefix),
    ]
    graph = helper.make_graph(
        nodes, "ops",
        [helper.make_tensor_value_info("f", TensorProto.FLOAT, ["B", "N", "F"]),
         helper.make_tensor_value_info("w", TensorProto.FLOAT, ["V", "F"]),
         helper.make_tensor_value_info("t", token_type, ["B", "T", "D"])],
        [helper.make_tensor_value_info("labels", TensorProto.INT64, ["B", "N"]),
         helper.make_tensor_value_info("merged", token_type, ["B", "M", "D"]),
         helper.make_tensor_value_info("sizes", TensorProto.FLOAT, ["B", "M"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ops.OPSET), helper.make_opsetid("vwt", 1)],
                              ir_version=10)
    return ops.add_portable_functions(model) if portable else model


def merge_model(num_prefix=1, token_type=TensorProto.FLOAT, portable=False):
    """TokenMerge alone: tokens, labels -> merged, sizes."""
    return ops.single_op_model(ops.TOKEN_MERGE, portable=portable, token_type=token_type, num_prefix=num_prefix)
