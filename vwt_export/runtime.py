"""Production loading: one call for any artefact vwt-export writes.

    f = vwt_export.runtime.load("out/model.vwt.onnx")
    logits = f(pixels)            # numpy float32 [B, 3, H, W] -> numpy [B, classes]
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .errors import VWTError


def load(path: str | os.PathLike, providers: Sequence[str] | None = None,
         threads: int | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """A callable for a .onnx file (the vwt op library is registered automatically when the graph needs it) or a
    .engine file (its JSON sidecar is checked against the running TensorRT, GPU and plugin library first)."""
    path = Path(path)
    if path.suffix == ".onnx":
        from .backends.onnxruntime import runner

        return runner(path, providers, threads)
    if path.suffix == ".engine":
        from .backends.tensorrt import load_engine

        return load_engine(path)
    raise VWTError(f"{path}: unknown model format (expected .onnx or .engine)")
