"""INT8 with explicit Q/DQ: model.int8.onnx and model.vwt.int8.onnx.

onnxruntime.quantization's static QDQ quantizer, configured as TensorRT wants explicit quantization:
symmetric INT8 (zero point 0) activations and weights, per-channel weights, Q/DQ on the inputs of MatMul, Gemm
and Conv (the ops TensorRT fuses them into), float biases (TensorRT dequantizes no int32), MinMax calibration on
the --calib images. The same file runs on
ONNX Runtime's CPU provider today and is meant for TensorRT's strongly typed networks later.

nvidia-modelopt's ONNX PTQ was not used: it pins its own torch/onnxruntime requirements and does not install
beside the pinned stack on a machine without CUDA libraries; onnxruntime.quantization is already a dependency.

A VWT graph is calibrated as a VWT graph. Calibrating the baseline and cutting tokens afterwards is wrong: the
attention probabilities' INT8 range is learned over 197 keys, and with ~50 keys their values are ~4x larger and
saturate (measured: top-1 agreement with the FP32 VWT model fell to 0 on DeiT-S). Calibration runs the vwt ops
through their portable bodies, so no op library is needed for it.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import onnx

from . import ops

QUANTIZED_OPS = ["MatMul", "Gemm", "Conv"]


def quantize_int8(model: onnx.ModelProto, calib_batches: Iterable[np.ndarray], input_name: str = "pixels",
                  progress: Callable[[int], None] | None = None, portable: bool = False) -> onnx.ModelProto:
    """Return `model` with Q/DQ nodes, calibrated on `calib_batches` (float32 [B, C, H, W]). With `portable`,
    the vwt ops keep their standard-op bodies (as model.vwt.portable.onnx does)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

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
            quantize_static(
                str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, activation_type=QuantType.QInt8,
                weight_type=QuantType.QInt8, per_channel=True, op_types_to_quantize=QUANTIZED_OPS,
                # biases stay float: TensorRT dequantizes only 8-bit (and smaller) integers, not int32
                extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False},
            )
        finally:
            root.setLevel(level)
        out = onnx.load(str(dst))
    if not (had_functions or portable):
        del out.functions[:]
    out.ir_version = model.ir_version
    return out
