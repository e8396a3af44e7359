"""ToMe's ONNX graph (vwt_export.graph.tome_export): standard ops only, static shapes, equal to torch, INT8-able."""

import numpy as np
import pytest
import torch

from vwt_export.backends.onnxruntime import OrtRunner, needs_op_library
from vwt_export.check.verify import verify_graph
from vwt_export.errors import VWTError
from vwt_export.graph.tome_export import export_tome, read_schedule
from vwt_export.tome import compress_tome
from vwt_export.vwt import NEAR_TIE_EPS

R = 4


# ToMe's export takes tens of seconds per shape: both in the full tier (make test), neither in make test-fast
@pytest.fixture(scope="module", params=[pytest.param("registers", marks=pytest.mark.slow),
                                        pytest.param("avg", marks=pytest.mark.slow)])
def exported(request, tome_models):
    """(ToMeViT, its ONNX graph): three prefix tokens (class + 2 registers) or none with size-weighted pooling."""
    tmodel = compress_tome(tome_models[request.param], R)
    return tmodel, export_tome(tmodel)  # the tests below do the checking


def test_graph_has_only_standard_ops(exported):
    _, proto = exported
    assert {n.domain for n in proto.graph.node} <= {"", "ai.onnx"}
    assert {o.domain for o in proto.opset_import} <= {"", "ai.onnx"}
    assert not proto.functions and not needs_op_library(proto)
    ops = {n.op_type for n in proto.graph.node}
    assert {"ArgMax", "CumSum", "GatherElements"} <= ops  # the merge really is in the graph
    assert not {"ScatterElements", "ScatterND", "TopK"} & ops  # TensorRT has no scatter-add; no sort needed


@pytest.mark.parametrize("batch", [1, 3])
def test_graph_equals_torch(exported, pixels_for, batch):
    tmodel, proto = exported
    x = pixels_for(tmodel.model)[:batch]
    assert (tmodel.decision_margins(x) >= NEAR_TIE_EPS).all()  # no near-ties: ONNX Runtime must decide the same
    with torch.no_grad():
        expected = tmodel(x).numpy()
    actual = OrtRunner(proto)(x.numpy())
    assert actual.shape == expected.shape == (batch, 10)
    assert np.abs(actual - expected).max() <= 1e-4 * np.abs(expected).max()


def test_export_check_compares_and_can_fail(exported, pixels_for):
    tmodel, proto = exported
    x = pixels_for(tmodel.model)
    result = verify_graph(proto, tmodel, x)  # the run's check (the export itself runs no backend)
    assert result.images_with_near_ties == 0 and result.max_rel_err < 1e-4
    other = compress_tome(tmodel.model, R - 1)  # same output shape, other merges: the check must refuse it
    with pytest.raises(VWTError, match="differs from torch"):
        verify_graph(proto, other, x)


def test_graph_shapes_follow_the_token_schedule(exported):
    """Static shapes: block i's qkv projection runs on [batch, T_i, D] with T_i = P+N - r*i, and its MLP on
    [batch, T_i - r, D] (the exporter's recorded shapes; the batch stays symbolic)."""
    tmodel, proto = exported
    shapes = {v.name: [d.dim_value or d.dim_param for d in v.type.tensor_type.shape.dim]
              for v in proto.graph.value_info}
    shapes.update({i.name: list(i.dims) for i in proto.graph.initializer})
    d = tmodel.model.embed_dim

    def token_dims(weight_shape):
        return [shapes[n.input[0]][:2] for n in proto.graph.node
                if n.op_type in ("MatMul", "Gemm") and shapes.get(n.input[1]) == weight_shape]

    schedule = [tmodel.tokens_in - R * i for i in range(len(tmodel.model.blocks) + 1)]
    assert tmodel.block_tokens == schedule[:-1]
    assert token_dims([d, 3 * d]) == [["batch", t] for t in schedule[:-1]]  # attention
    assert token_dims([d, 4 * d]) == [["batch", t] for t in schedule[1:]]  # MLP, after the merge
    meta = read_schedule(proto)  # what reports read the tokens from: the graph has no size tensor
    assert meta["block_tokens"] == schedule[:-1] and meta["r"] == [R] * len(tmodel.model.blocks) and meta["prop_attn"]


def test_int8_quantizes_and_runs(exported, pixels_for):
    from vwt_export.graph.quantize import quantize_int8

    tmodel, proto = exported
    x = pixels_for(tmodel.model).numpy()
    int8 = quantize_int8(proto, [x[:3], x[3:]])
    assert any(n.op_type == "QuantizeLinear" for n in int8.graph.node)
    assert read_schedule(int8) == read_schedule(proto)
    out = OrtRunner(int8)(x[:2])
    assert out.shape == (2, 10) and np.isfinite(out).all()
