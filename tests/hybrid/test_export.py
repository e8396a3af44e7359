"""The hybrid's ONNX graph (vwt_export.graph.hybrid_export): vwt::TokenMerge (op library or portable body) then
standard ops with a dynamic batch and token count, equal to torch, split into stages, INT8-able."""

import numpy as np
import onnx
import onnx.inliner
import pytest
import torch

from vwt_export.backends.onnxruntime import OrtRunner, create_session, needs_op_library
from vwt_export.errors import VWTError
from vwt_export.graph import ops
from vwt_export.graph.hybrid_export import export_hybrid, read_metadata
from vwt_export.graph.stages import split_stages
from vwt_export.graph.surgery import make_portable
from vwt_export.hybrid import compress_hybrid
from vwt_export.vwt import NEAR_TIE_EPS

from .conftest import images_for, mixed_threshold
from .graph_check import check_against_torch

R = 4


@pytest.fixture(scope="module", params=["registers", "avg"])
def exported(request, hybrid_models, hybrid_vocabs):
    """(HybridViT, its graph, test images): three prefix tokens (class + 2 registers), or none with size-weighted
    pooling and groups bounded by 2 x 2 tiles."""
    model, vocab = hybrid_models[request.param], hybrid_vocabs[request.param]
    x = images_for(model, seed=2)
    tile = 2 if request.param == "avg" else 0
    hmodel = compress_hybrid(model, vocab, threshold=mixed_threshold(model, x, vocab), r=R, tile=tile)
    return hmodel, export_hybrid(hmodel), x  # the tests below do the checking


def test_graph_has_one_token_merge_then_a_block_merge_per_block(exported, op_library):
    hmodel, proto, _ = exported
    assert [i.name for i in proto.graph.input] == ["pixels"] and [o.name for o in proto.graph.output] == ["logits"]
    depth = len(hmodel.model.blocks)
    assert [n.op_type for n in proto.graph.node if n.domain == ops.DOMAIN] == [ops.TOKEN_MERGE] + [ops.BLOCK_MERGE] * depth
    merges = [n for n in proto.graph.node if n.op_type == ops.BLOCK_MERGE]
    assert all({a.name: onnx.helper.get_attribute_value(a) for a in n.attribute} == {"num_prefix": hmodel.num_prefix,
               "r": R, "r_den": 0} for n in merges)
    assert {n.domain for n in proto.graph.node} <= {"", "ai.onnx", ops.DOMAIN}
    assert needs_op_library(proto) and not needs_op_library(make_portable(proto))
    portable = onnx.inliner.inline_local_functions(make_portable(proto))
    types = {n.op_type for n in portable.graph.node}
    assert {"ArgMax", "CumSum", "GatherElements"} <= types  # the portable in-block merges are standard ops
    assert not {"ScatterElements", "ScatterND", "TopK", "NonZero"} & types  # TensorRT has no scatter-add; no sort
    meta = read_metadata(proto)
    assert meta["r"] == [str(R)] * 3 and meta["grouping"] == "local" and meta["prop_attn"]
    assert meta["tile"] == hmodel.tile and any(n.name == "vwt/tile_keys" for n in proto.graph.node) == bool(hmodel.tile)
    onnx.checker.check_model(make_portable(proto), full_check=True)


@pytest.mark.parametrize("form", ["library", "portable"])
def test_graph_equals_torch_with_a_dynamic_token_count(exported, op_library, form):
    hmodel, proto, x = exported
    graph = proto if form == "library" else make_portable(proto)
    counts = []
    for batch in (x[:1], x[1:4], x[4:]):
        result = check_against_torch(graph, hmodel, batch)
        assert result == {**result, "compared": len(batch), "near_ties": 0, "matches_differ": 0}
        assert result["max_rel_err"] < 1e-4
        counts.append(int(hmodel.last_block_tokens[:, 0].max()))
    assert len(set(counts)) > 1, "the batches should reach the blocks with different token counts"
    assert (hmodel.decision_margins(x) >= NEAR_TIE_EPS).all()


@pytest.mark.parametrize("form", ["library", "portable"])
def test_a_schedule_of_fraction_none_and_count_exports(hybrid_models, hybrid_vocabs, op_library, form):
    """The default rule is a fraction (BlockMerge's r / r_den), a block with rule 0 holds no BlockMerge, and a count
    is r alone: one graph holding all three equals torch."""
    model, vocab = hybrid_models["registers"], hybrid_vocabs["registers"]
    x = images_for(model, seed=4)
    hmodel = compress_hybrid(model, vocab, threshold=mixed_threshold(model, x, vocab), r=[0.25, 0, 2], tile=2)
    proto = export_hybrid(hmodel)
    merges = [{a.name: onnx.helper.get_attribute_value(a) for a in n.attribute} for n in proto.graph.node
              if n.op_type == ops.BLOCK_MERGE]
    assert [(m["r"], m["r_den"]) for m in merges] == [(1, 4), (2, 0)]
    result = check_against_torch(proto if form == "library" else make_portable(proto), hmodel, x)
    assert result == {**result, "compared": len(x), "near_ties": 0, "matches_differ": 0}
    assert result["max_rel_err"] < 1e-4


def test_export_check_compares_and_can_fail(exported, op_library):
    hmodel, proto, x = exported
    other = compress_hybrid(hmodel.model, hmodel.vwt.vocab, threshold=hmodel.threshold, r=R - 1)
    with pytest.raises(VWTError, match="differs from torch"):
        check_against_torch(proto, other, x)
    # an image whose in-block decisions sit within eps of a tie is counted and left out, never an error
    counted = check_against_torch(proto, other, x, eps=float("inf"))
    assert counted["compared"] == 0 and counted["near_ties"] == len(x)
    coarser = compress_hybrid(hmodel.model, hmodel.vwt.vocab, threshold=hmodel.threshold * 1.5, r=R)
    with pytest.raises(VWTError, match="patch matches differ"):
        check_against_torch(proto, coarser, x)


def test_stages_compose_to_the_one_graph(exported, op_library):
    """Cut at TokenMerge, the hybrid graph is a tokenize stage and a trunk that takes any padded token count:
    the length-aware runtime batches it as it batches VWT graphs."""
    hmodel, proto, x = exported
    tokenize, trunk = split_stages(make_portable(proto))
    merged, sizes, counts = create_session(tokenize).run(None, {"pixels": x.numpy()})
    whole = OrtRunner(proto).infer(x.numpy())
    staged = create_session(trunk).run(None, {"vwt/merged": merged, "vwt/sizes": sizes})[0]
    assert np.abs(staged - whole).max() <= 1e-5 * np.abs(whole).max()
    longest = int(counts.max())
    alone = [create_session(trunk).run(None, {"vwt/merged": merged[i:i + 1, :counts[i]],
                                              "vwt/sizes": sizes[i:i + 1, :counts[i]]})[0] for i in range(len(x))]
    assert longest == merged.shape[1] and np.abs(np.concatenate(alone) - whole).max() <= 1e-4 * np.abs(whole).max()


def test_int8_quantizes_the_weight_gemms_only(exported, op_library):
    from vwt_export.graph.quantize import quantize_int8

    hmodel, proto, x = exported
    int8 = quantize_int8(proto, [x[:3].numpy(), x[3:].numpy()])
    made_by = {o: n for n in int8.graph.node for o in n.output}
    weights = {i.name for i in int8.graph.initializer}
    for node in int8.graph.node:
        if node.op_type == "MatMul":
            dq = [made_by[i] for i in node.input if i in made_by and made_by[i].op_type == "DequantizeLinear"]
            from_weight = any(made_by.get(i) is not None and made_by[i].op_type == "DequantizeLinear"
                              and made_by[i].input[0] in weights for i in node.input)
            assert not dq or from_weight, f"{node.name}: an activation x activation product was quantized"
    assert any(n.op_type == "QuantizeLinear" for n in int8.graph.node)
    assert read_metadata(int8) == read_metadata(proto)
    f32 = OrtRunner(proto, extra_outputs={ops.KEYS_TENSOR: onnx.TensorProto.INT64}).infer_extras(x.numpy())
    q = OrtRunner(int8, extra_outputs={ops.KEYS_TENSOR: onnx.TensorProto.INT64}).infer_extras(x.numpy())
    assert np.array_equal(f32[1][ops.KEYS_TENSOR], q[1][ops.KEYS_TENSOR]), "the matching stays float: INT8 must not change a key"
    cos = (f32[0] * q[0]).sum(1) / np.linalg.norm(f32[0], axis=1) / np.linalg.norm(q[0], axis=1)
    assert q[0].shape == f32[0].shape and (cos > 0.9).all()


def test_fp16_is_refused(hybrid_models, hybrid_vocabs):
    import copy

    model = copy.deepcopy(hybrid_models["cls"]).half()
    with pytest.raises(VWTError, match="float32"):
        export_hybrid(compress_hybrid(model, hybrid_vocabs["cls"]))
