"""split_stages: tokenize + trunk compose to the one-graph VWT model (custom-op, portable and INT8 forms), equal the
torch model (FP32), keep the function body only where it is used, and take any sequence length in the trunk."""

import numpy as np
import onnx
import pytest
import torch

import vwt_export as vx
from vwt_export.backends.onnxruntime import create_session, needs_op_library
from vwt_export.errors import VWTError
from vwt_export.graph import ops
from vwt_export.graph.export import export_model
from vwt_export.graph.quantize import quantize_int8
from vwt_export.graph.stages import COUNTS, SIZES, TOKENS, split_stages, stage_files
from vwt_export.graph.surgery import apply_vwt, make_portable

from ..test_batching import BUSY, SIZE, THRESHOLD, colour_vocabulary, mixed_images


def rel_err(a, b):
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-6))


@pytest.fixture(scope="module")
def graphs():
    model = vx.load_model("vit_tiny_patch16_224", weights="random", img_size=SIZE, depth=2)
    vocab = colour_vocabulary()
    vwt = apply_vwt(export_model(model), "inter", vocab=vocab.words.numpy(), threshold=THRESHOLD,
                    pooling=model.global_pool)
    calib = [mixed_images(BUSY, seed=10), mixed_images(BUSY[::-1], seed=11)]
    forms = {"custom-op": vwt, "portable": make_portable(vwt), "int8": quantize_int8(vwt, calib)}
    return model, vocab, forms


def run_stages(tokenize, trunk, x):
    merged, sizes, counts = create_session(tokenize).run([TOKENS, SIZES, COUNTS], {"pixels": x})
    return create_session(trunk).run(None, {TOKENS: merged, SIZES: sizes})[0], merged, sizes, counts


@pytest.mark.parametrize("form", ["custom-op", "portable", "int8"])
def test_stages_compose_to_the_one_graph_model(graphs, form):
    _, _, forms = graphs
    one = forms[form]
    tokenize, trunk = split_stages(one)
    x = mixed_images(BUSY, seed=5)
    expected = create_session(one).run(None, {"pixels": x})[0]
    got, merged, sizes, counts = run_stages(tokenize, trunk, x)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())
    np.testing.assert_array_equal(counts, (sizes > 0).sum(1))  # counts = the real tokens, prefix included
    assert merged.shape[1] == counts.max()
    for b, c in enumerate(counts):  # real tokens first, then padding
        assert (sizes[b, :c] > 0).all() and (sizes[b, c:] == 0).all()
    # the trunk holds no vwt op (no library, no function body), and its token length is symbolic
    assert not any(n.domain == ops.DOMAIN for n in trunk.graph.node) and not trunk.functions
    assert ops.DOMAIN not in {o.domain for o in trunk.opset_import}
    dims = [[d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in trunk.graph.input]
    assert dims[0][1] == dims[1][1] and isinstance(dims[0][1], str)
    # the portable tokenize stage keeps its body and runs without the op library; the others need it
    assert needs_op_library(tokenize) == (form != "portable")
    assert len(tokenize.functions) == (1 if form == "portable" else 0)
    if form == "int8":  # every Q/DQ pair of the one-graph model is in one of the stages
        qdq = lambda m: sum(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in m.graph.node)  # noqa: E731
        assert qdq(tokenize) + qdq(trunk) == qdq(one) > 0 and qdq(trunk) > 0


def test_stages_equal_torch(graphs):
    """FP32: tokenize + trunk against vwt_export.vwt.compress(...)(x), given the graph's own keys (matching is a
    threshold: at a near tie the two may choose differently, see DESIGN.md), and the keys equal torch's."""
    model, vocab, forms = graphs
    tokenize, trunk = split_stages(forms["custom-op"])
    with_keys = onnx.ModelProto()
    with_keys.CopyFrom(tokenize)
    with_keys.graph.output.append(onnx.helper.make_tensor_value_info(ops.KEYS_TENSOR, onnx.TensorProto.INT64, None))
    x = mixed_images(BUSY, seed=6)
    merged, sizes, keys = create_session(with_keys).run([TOKENS, SIZES, ops.KEYS_TENSOR], {"pixels": x})
    got = create_session(trunk).run(None, {TOKENS: merged, SIZES: sizes})[0]
    cmodel = vx.compress(model, "inter", vocab=vocab, threshold=THRESHOLD)
    xt = torch.from_numpy(x)
    np.testing.assert_array_equal(keys, cmodel.match(xt).numpy())
    with torch.no_grad():
        expected = cmodel(xt).numpy()
    assert rel_err(got, expected) < 1e-4


def test_trunk_takes_any_length(graphs):
    """Each image's tokens sliced to its own count give the same logits as the padded batch: the trunk's T is
    dynamic and padding never reaches a real token."""
    _, _, forms = graphs
    tokenize, trunk = split_stages(forms["custom-op"])
    x = mixed_images(BUSY, seed=7)
    padded, merged, sizes, counts = run_stages(tokenize, trunk, x)
    assert len(set(counts.tolist())) > 3
    session = create_session(trunk)
    alone = np.concatenate([session.run(None, {TOKENS: merged[b : b + 1, :c], SIZES: sizes[b : b + 1, :c]})[0]
                            for b, c in enumerate(counts)])
    np.testing.assert_allclose(alone, padded, rtol=1e-5, atol=1e-5 * np.abs(padded).max())


def test_graphs_without_token_merge_are_refused(graphs):
    model, _, forms = graphs
    base = export_model(model)
    with pytest.raises(VWTError, match="one vwt::TokenMerge node, found 0"):
        split_stages(base)
    with pytest.raises(VWTError, match="intra graphs have a static length"):
        split_stages(apply_vwt(base, "intra", keep=8))


def test_stage_file_names():
    assert stage_files("model.vwt.onnx") == ("model.vwt.tokenize.onnx", "model.vwt.trunk.onnx")
    assert stage_files("model.vwt.int8.onnx") == ("model.vwt.int8.tokenize.onnx", "model.vwt.int8.trunk.onnx")
    with pytest.raises(VWTError, match="expected an .onnx file name"):
        stage_files("model.vwt.engine")
