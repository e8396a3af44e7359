import pytest
import torch
from onnx import numpy_helper

import vwt_export as vx
from vwt_export.backends.onnxruntime import create_session
from vwt_export.check.accuracy import cosine_similarity
from vwt_export.graph.export import export_model
from vwt_export.graph.quantize import quantize_int8
from vwt_export.graph.surgery import apply_vwt

from ..conftest import blocky_images


def _initializers(model):
    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}


def test_int8_is_symmetric_per_channel_qdq_and_close_to_fp32(op_library):
    model = vx.load_model("vit_tiny_patch16_224", weights="random", img_size=64, depth=2)
    x = blocky_images(8, 64, cells=4, seed=1).numpy()
    vocab = vx.learn_vocabulary(model, [torch.from_numpy(x)], size=8, progress=False)
    base = export_model(model)
    vwt = apply_vwt(base, "inter", vocab=vocab.words.numpy(), threshold=0.3)
    for fp32 in (base, vwt):
        q = quantize_int8(fp32, [x[:4], x[4:]])
        inits = _initializers(q)
        qnodes = [n for n in q.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
        assert qnodes, "no Q/DQ nodes"
        for n in qnodes:  # symmetric: every zero point is 0
            if len(n.input) > 2 and n.input[2] in inits:
                assert not inits[n.input[2]].any()
        per_channel = [n for n in qnodes if n.op_type == "DequantizeLinear" and inits.get(n.input[1]) is not None
                       and inits[n.input[1]].ndim == 1 and inits[n.input[1]].size > 1]
        assert per_channel, "weights should have one scale per output channel"
        assert {n.op_type for n in q.graph.node if n.domain == "vwt"} == (
            {"TokenMerge"} if fp32 is vwt else set())
        assert not q.functions  # the custom-op graph stays a custom-op graph
        ref = create_session(fp32).run(None, {"pixels": x})[0]
        got = create_session(q).run(None, {"pixels": x})[0]
        assert cosine_similarity(ref, got) > 0.95


def _quantized_matmuls(q):
    made = {o: n for n in q.graph.node for o in n.output}
    return {n.name for n in q.graph.node if n.op_type == "MatMul"
            and any(made.get(i) is not None and made[i].op_type == "DequantizeLinear" for i in n.input)}


def test_int8_quantizes_weight_gemms_and_keeps_attention_products_float_unless_asked():
    from vwt_export.graph.quantize import activation_products

    model = vx.load_model("vit_tiny_patch16_224", weights="random", img_size=64, depth=2)
    x = blocky_images(8, 64, cells=4, seed=2).numpy()
    base = export_model(model)
    products = set(activation_products(base))
    assert len(products) == 2 * 2  # Q.K^T and softmax.V in each of the 2 blocks
    default = _quantized_matmuls(quantize_int8(base, [x]))
    assert default and not (default & products)  # weight GEMMs quantized, attention products float
    everything = _quantized_matmuls(quantize_int8(base, [x], quantize_attention=True))
    assert products <= everything and default <= everything
    with pytest.raises(vx.VWTError, match="unknown INT8 calibration 'magic'"):
        quantize_int8(base, [x], calibration="magic")
    entropy = quantize_int8(base, [x], calibration="entropy")
    ref = create_session(base).run(None, {"pixels": x})[0]
    assert cosine_similarity(ref, create_session(entropy).run(None, {"pixels": x})[0]) > 0.95


def _activation_scales(q) -> dict:
    """{tensor: scale} of the activations' QuantizeLinear nodes (weights are stored quantized, not quantized here)."""
    inits = _initializers(q)
    return {n.input[0]: float(inits[n.input[1]]) for n in q.graph.node
            if n.op_type == "QuantizeLinear" and n.input[0] not in inits and inits[n.input[1]].size == 1}


def test_entropy_calibration_clips_ranges_that_minmax_keeps_whole():
    """Entropy calibration searches for a threshold below a tensor's largest value (KL divergence between the
    float and the quantized histograms); it once gave MinMax's ranges byte for byte (too few bins to search).
    Images with a few extreme pixels give long-tailed activations, where the two must differ."""
    model = vx.load_model("vit_tiny_patch16_224", weights="random", img_size=64, depth=2)
    x = blocky_images(8, 64, cells=4, seed=3).numpy()
    x[:, :, :2, :2] *= 40.0  # a few outliers: the tail MinMax must cover and entropy may clip
    base = export_model(model)
    minmax = _activation_scales(quantize_int8(base, [x], calibration="minmax"))
    entropy = _activation_scales(quantize_int8(base, [x], calibration="entropy"))
    assert minmax.keys() == entropy.keys() and minmax
    clipped = [k for k in minmax if entropy[k] < minmax[k] * (1 - 1e-3)]
    assert len(clipped) >= len(minmax) // 2, (len(clipped), len(minmax))
    assert all(entropy[k] <= minmax[k] * (1 + 1e-6) for k in minmax)  # never wider than the observed range
