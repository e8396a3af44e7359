"""ONNX Runtime sessions for vwt-export models: registers the vwt op library when a graph needs it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import onnx

from ..errors import VWTError
from ..plugins import ort_library

VWT_DOMAIN = "vwt"


def needs_op_library(model: onnx.ModelProto) -> bool:
    """True when the graph has vwt nodes without portable function bodies."""
    functions = {(f.domain, f.name) for f in model.functions}
    return any(n.domain == VWT_DOMAIN and (n.domain, n.op_type) not in functions for n in model.graph.node)


def _load_proto(model: str | os.PathLike | onnx.ModelProto) -> onnx.ModelProto:
    if isinstance(model, onnx.ModelProto):
        return model
    path = Path(model)
    if not path.is_file():
        raise VWTError(f"{path}: no such model file")
    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as e:
        raise VWTError(f"{path}: not a readable ONNX model ({type(e).__name__}: {str(e)[:120]})") from None


def create_session(model: str | os.PathLike | onnx.ModelProto, providers: Sequence[str] | None = None,
                   threads: int | None = None):
    """An InferenceSession; the vwt op library is registered if (and only if) the graph needs it."""
    import onnxruntime as ort

    proto = _load_proto(model)
    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = threads
    so.log_severity_level = 3
    if needs_op_library(proto):
        lib = ort_library()
        try:
            so.register_custom_ops_library(str(lib))
        except Exception as e:
            raise VWTError(f"{lib}: onnxruntime {ort.__version__} refused the vwt op library: {e}") from None
    source = str(model) if not isinstance(model, onnx.ModelProto) else model.SerializeToString()
    try:
        return ort.InferenceSession(source, so, providers=list(providers or ["CPUExecutionProvider"]))
    except Exception as e:
        name = model if not isinstance(model, onnx.ModelProto) else "model"
        raise VWTError(f"{name}: onnxruntime cannot load it ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None


def runner(model: str | os.PathLike | onnx.ModelProto, providers: Sequence[str] | None = None,
           threads: int | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """f(pixels float32 [B, C, H, W]) -> first output as a numpy array."""
    session = create_session(model, providers, threads)
    name = session.get_inputs()[0].name

    def run(pixels: np.ndarray) -> np.ndarray:
        return session.run(None, {name: np.ascontiguousarray(pixels, dtype=np.float32)})[0]

    run.session = session  # type: ignore[attr-defined]
    return run
