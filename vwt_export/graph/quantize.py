"""INT8 with explicit Q/DQ: model.int8.onnx and model.vwt.int8.onnx.

onnxruntime.quantization's static QDQ quantizer, configured as TensorRT wants explicit quantization:
symmetric INT8 (zero point 0) activations and weights, per-channel weights, float biases (TensorRT dequantizes
no int32), calibrated on the --calib images (MinMax by default; entropy or percentile on request). The same file
runs on ONNX Runtime's CPU provider and builds strongly typed TensorRT engines.

What is quantized: by default the weight GEMMs (every MatMul/Gemm with a weight initializer: qkv, proj, MLP,
head) and the patch Conv. Attention's two activation x activation products (Q.K^T and softmax.V) stay float:
post-softmax probabilities are the textbook case where symmetric per-tensor INT8 fails (most of them round to
zero), and quantizing them cost real weights the most fidelity (issue 11: DINOv2-S/14 feature cosine to FP32
0.948 with them quantized, 0.988 without, still 1.9x faster than FP32 on ONNX Runtime CPU).
`quantize_attention=True` quantizes them too, for TensorRT's fused INT8 attention.

nvidia-modelopt's ONNX PTQ was not used: it pins its own torch/onnxruntime requirements and does not install
beside the pinned stack on a machine without CUDA libraries; onnxruntime.quantization is already a dependency.

A VWT graph is calibrated as a VWT graph. Calibrating the baseline and cutting tokens afterwards is wrong: the
attention probabilities' INT8 range is learned over 197 keys, and with ~50 keys their values are ~4x larger and
saturate (measured: top-1 agreement with the FP32 VWT model fell to 0 on DeiT-S). Calibration runs the vwt ops
through their portable bodies, so no op library is needed for it.

Matching stays float by default. The word-similarity MatMul ("vwt/similarity") is excluded from quantization
unless `quantize_similarity=True`, and the matching reads the float pixels rather than the INT8 round trip the
quantizer puts in front of the patch Conv. Otherwise the keys change. Measured with
`python scripts/bench_similarity.py deit_t` (and `deit_s`): random weights, 64 demo images (32 calibrate the
vocabulary and the INT8 ranges, 32 are measured = 6272 keys), a ~1000-word image-space vocabulary, threshold
0.1, ~42% of the patches matched:
  similarity float (default):  0 keys changed against FP32 (deit_t, deit_s); logits cosine to FP32 0.9987
  similarity quantized:        40 to 55 keys changed (0.64% to 0.88%) over three runs (deit_t 53 and 40, deit_s
                               55; k-means gave 996 to 998 words); in the run that counted, 1 of the 40 was at a
                               near tie, so these are real changes of match; logits cosine 0.9986
  matching on the INT8 round trip of the pixels (before this module rerouted it): 17 keys changed (0.27%) with
  the similarity float, 613 (9.8%) with it quantized
The whole-graph batch-1 timings favoured the quantized similarity by 10 to 27% (e.g. 42 vs 48 ms on deit_t), but
they were taken on a loaded, shared 2-core CPU and are indicative only; the default keeps the matches.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import onnx

from . import ops
from .surgery import SIMILARITY_NODE

QUANTIZED_OPS = ["MatMul", "Gemm", "Conv"]
CALIBRATIONS = ("minmax", "entropy", "percentile")
# Entropy calibration's histogram: quantize_static passes no bin counts to its calibrator, whose defaults (128
# bins, 128 quantized bins) leave the KL search one candidate, the whole range, so "entropy" gave MinMax's
# file byte for byte. TensorRT's entropy calibrator's counts: 2048 bins searched for the best 128-bin threshold.
ENTROPY_BINS, ENTROPY_QUANTIZED_BINS = 2048, 128


def activation_products(model: onnx.ModelProto) -> list[str]:
    """Names of the MatMul nodes that multiply two activations (attention's Q.K^T and softmax.V): neither input
    is a weight (an initializer or a Constant)."""
    weights = {i.name for i in model.graph.initializer}
    weights |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    return [n.name for n in model.graph.node if n.op_type == "MatMul" and not any(i in weights for i in n.input)]


def quantize_int8(model: onnx.ModelProto, calib_batches: Iterable[np.ndarray], input_name: str = "pixels",
                  progress: Callable[[int], None] | None = None, portable: bool = False,
                  quantize_similarity: bool = False, quantize_attention: bool = False,
                  calibration: str = "minmax") -> onnx.ModelProto:
    """Return `model` with Q/DQ nodes, calibrated on `calib_batches` (float32 [B, C, H, W]). With `portable`,
    the vwt ops keep their standard-op bodies (as model.vwt.portable.onnx does). The word-similarity MatMul
    ("vwt/similarity") stays float unless `quantize_similarity`, attention's activation products unless
    `quantize_attention` (see the module docstring for why)."""
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)

    from ..errors import VWTError

    if calibration not in CALIBRATIONS:
        raise VWTError(f"unknown INT8 calibration '{calibration}' (use one of {', '.join(CALIBRATIONS)})")
    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[calibration]
    excluded = ([] if quantize_similarity else [SIMILARITY_NODE]) + \
        ([] if quantize_attention else activation_products(model))

    had_functions = len(model.functions) > 0
    with_bodies = onnx.ModelProto()  # calibration runs the vwt ops through their portable bodies
    with_bodies.CopyFrom(model)
    ops.add_portable_functions(with_bodies)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(calib_batches)

        def get_next(self):
            batch = next(self.batches, None)
            if batch is None:
                return None
            if progress:
                progress(len(batch))
            return {input_name: np.ascontiguousarray(batch, dtype=np.float32)}

    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        onnx.save(with_bodies, str(src))
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)  # the quantizer's advice to pre-process is about CNNs, not these graphs
        try:
            reader, cache = Reader(), None
            if method == CalibrationMethod.Entropy:  # ranges computed here, with real bin counts (ENTROPY_BINS)
                cache, reader = _entropy_ranges(src, reader, Path(tmp)), None
            quantize_static(
                str(src), str(dst), reader, quant_format=QuantFormat.QDQ, activation_type=QuantType.QInt8,
                weight_type=QuantType.QInt8, per_channel=True, op_types_to_quantize=QUANTIZED_OPS,
                nodes_to_exclude=excluded, calibrate_method=method,
                **({"calibration_cache_path": str(cache)} if cache else {}),
                # biases stay float: TensorRT dequantizes only 8-bit (and smaller) integers, not int32
                extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False},
            )
        finally:
            root.setLevel(level)
        out = onnx.load(str(dst))
    _keep_matching_float(out, quantize_similarity)
    if not (had_functions or portable):
        del out.functions[:]
    out.ir_version = model.ir_version
    return out


def _entropy_ranges(model_path: Path, reader, tmp: Path) -> Path:
    """Entropy calibration's tensor ranges, in the calibration cache file quantize_static reads."""
    import inspect

    from onnxruntime.quantization import CalibrationMethod, create_calibrator, quantize_static
    from onnxruntime.quantization import calibrate

    from ..errors import VWTError

    if "calibration_cache_path" not in inspect.signature(quantize_static).parameters:
        import onnxruntime

        raise VWTError(f"--int8-calibration entropy needs an onnxruntime whose quantizer reads a calibration cache "
                       f"(1.31 does; this is {onnxruntime.__version__}): upgrade it, or use minmax or percentile")
    save_tensors_data = calibrate.save_tensors_data

    calibrator = create_calibrator(model_path, QUANTIZED_OPS, augmented_model_path=str(tmp / "augmented.onnx"),
                                   calibrate_method=CalibrationMethod.Entropy,
                                   extra_options={"num_bins": ENTROPY_BINS,
                                                  "num_quantized_bins": ENTROPY_QUANTIZED_BINS})
    with contextlib.redirect_stdout(io.StringIO()):  # its histogram collector prints bin counts
        calibrator.collect_data(reader)
        ranges = calibrator.compute_data()
    cache = tmp / "entropy-ranges.json"
    save_tensors_data(ranges, cache)
    return cache


def _keep_matching_float(model: onnx.ModelProto, quantize_similarity: bool) -> None:
    """The vwt nodes (patch features, normalisation, similarity, keys) read float tensors, not their INT8
    round trips: the quantizer puts Q/DQ on the pixels for the patch Conv, and the image-space features would
    otherwise read the dequantized pixels and change matches. Only the similarity MatMul, when it is quantized,
    keeps its own Q/DQ inputs."""
    made_by = {o: n for n in model.graph.node for o in n.output}

    def float_source(name: str) -> str:
        dq = made_by.get(name)
        if dq is None or dq.op_type != "DequantizeLinear":
            return name
        q = made_by.get(dq.input[0])
        return q.input[0] if q is not None and q.op_type == "QuantizeLinear" else name

    for node in model.graph.node:
        if node.name.startswith("vwt/") and not (quantize_similarity and node.name == SIMILARITY_NODE):
            for i, name in enumerate(node.input):
                node.input[i] = float_source(name)
    _drop_unused_nodes(model)


def _drop_unused_nodes(model: onnx.ModelProto) -> None:
    """Remove the Q/DQ pairs that nothing reads any more (subgraphs' reads of outer names count as reads)."""

    def reads(graph: onnx.GraphProto) -> set[str]:
        names = set()
        for node in graph.node:
            names.update(node.input)
            for attr in node.attribute:
                for sub in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs):
                    names |= reads(sub)
        return names

    while True:
        used = reads(model.graph) | {o.name for o in model.graph.output}
        dead = [n for n in model.graph.node
                if n.op_type in ("QuantizeLinear", "DequantizeLinear") and not any(o in used for o in n.output)]
        if not dead:
            return
        for node in dead:
            model.graph.node.remove(node)
