"""INT8 and the matching: the similarity MatMul stays float unless asked, and the matching reads float inputs,
so an INT8 VWT graph makes the same matches as the FP32 one."""

import numpy as np
import onnx
import pytest
import torch

import vwt_export as vx
from vwt_export.backends.onnxruntime import create_session
from vwt_export.graph import ops
from vwt_export.graph.export import export_model
from vwt_export.graph.quantize import quantize_int8
from vwt_export.graph.surgery import SIMILARITY_NODE, apply_vwt, make_portable

from ..conftest import blocky_images


@pytest.fixture(scope="module")
def graphs():
    model = vx.load_model("vit_tiny_patch16_224", weights="random", img_size=64, depth=2)
    x = blocky_images(16, 64, cells=4, seed=1, noise=0.05).numpy()
    vocab = vx.learn_vocabulary(model, [torch.from_numpy(x[:8])], size=16, progress=False)
    vwt = apply_vwt(export_model(model), "inter", vocab=vocab.words.numpy(), threshold=0.05)
    vwt.graph.output.append(onnx.helper.make_tensor_value_info(ops.KEYS_TENSOR, onnx.TensorProto.INT64, None))
    calib = [x[:4], x[4:8]]
    return x[8:], vwt, {q: quantize_int8(vwt, calib, quantize_similarity=q) for q in (False, True)}


def producers(model):
    return {o: n for n in model.graph.node for o in n.output}


def test_similarity_is_float_by_default_and_quantized_when_asked(graphs):
    _, _, int8 = graphs
    for q, model in int8.items():
        made_by = producers(model)
        sim = next(n for n in model.graph.node if n.name == SIMILARITY_NODE)
        inputs = [made_by[i].op_type if i in made_by else "initializer" for i in sim.input]
        assert ("DequantizeLinear" in inputs) == q, inputs
        assert any(n.op_type == "QuantizeLinear" for n in model.graph.node)  # the rest is INT8 either way
        # the patch features read the float pixels, not their INT8 round trip (the Conv's)
        reshape = next(n for n in model.graph.node if n.name == "vwt/patches_reshape")
        assert reshape.input[0] == "pixels"


def test_int8_keeps_the_fp32_matches(graphs):
    x, vwt, int8 = graphs
    keys = {}
    for name, model in (("fp32", vwt), ("float", int8[False]), ("quantized", int8[True])):
        keys[name] = create_session(make_portable(model)).run(None, {"pixels": x})[1]
    assert (keys["fp32"] < 16).mean() > 0.2, "the test should match patches"
    np.testing.assert_array_equal(keys["float"], keys["fp32"])  # the same float ops on the same inputs
