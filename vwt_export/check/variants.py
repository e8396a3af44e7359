"""Run every built variant over the same images: outputs, fidelity to FP32, accuracy, merge share."""

from __future__ import annotations

import json
import statistics
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..backends.onnxruntime import needs_op_library
from ..data import iter_image_batches
from .accuracy import accuracy, fidelity

VWT_OPS = ("WordLabels", "TokenMerge")


@dataclass
class Variant:
    name: str  # fp32, int8, vwt, vwt+int8
    path: Path
    precision: str  # fp32 | int8
    vwt: bool
    backend: str = "onnxruntime-cpu"


def outputs(variants: Sequence[Variant], files: Sequence[Path], transform, batch_size: int,
            progress: Callable[[int], None] | None = None) -> dict[str, np.ndarray]:
    """{variant: logits [images, classes]}; the images are decoded once and fed to every variant."""
    from ..runtime import load

    runners = {v.name: load(v.path) for v in variants}
    results: dict[str, list[np.ndarray]] = {v.name: [] for v in variants}
    for pixels, _ in iter_image_batches(files, transform, batch_size, progress=progress):
        x = pixels.numpy()
        for name, run in runners.items():
            results[name].append(run(x))
    return {name: np.concatenate(r) for name, r in results.items()}


def evaluate(variants: Sequence[Variant], logits: dict[str, np.ndarray], labels: np.ndarray | None,
             reference: str = "fp32") -> dict[str, dict]:
    ref = logits[reference]
    return {v.name: {"accuracy": accuracy(logits[v.name], labels), "fidelity": fidelity(ref, logits[v.name])}
            for v in variants}


def merge_share(path: Path, pixels: np.ndarray, reps: int = 5) -> float | None:
    """Fraction of kernel time spent in WordLabels + TokenMerge (ONNX Runtime's profiler), one image at a time."""
    import onnx
    import onnxruntime as ort

    from ..plugins import ort_library

    model = onnx.load(str(path), load_external_data=False)
    if not any(n.op_type in VWT_OPS for n in model.graph.node):
        return None
    so = ort.SessionOptions()
    so.enable_profiling = True
    so.profile_file_prefix = str(Path(tempfile.mkdtemp()) / "vwt")
    if needs_op_library(model):
        so.register_custom_ops_library(str(ort_library()))
    session = ort.InferenceSession(str(path), so)
    name = session.get_inputs()[0].name
    for _ in range(reps + 1):
        for i in range(len(pixels)):
            session.run(None, {name: pixels[i : i + 1]})
    events = json.loads(Path(session.end_profiling()).read_text())
    runs = sorted(e["ts"] for e in events if e.get("cat") == "Session" and e.get("name") == "model_run")
    after_warmup = runs[len(pixels)] if len(runs) > len(pixels) else 0  # the first pass over the images warms up
    ours = total = 0.0
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= after_warmup:
            total += e["dur"]
            if e.get("args", {}).get("op_name") in VWT_OPS:
                ours += e["dur"]
    return ours / total if total else None


def token_stats(counts: Sequence[int]) -> dict:
    c = list(map(int, counts))
    return {"mean": statistics.fmean(c), "min": min(c), "max": max(c), "counts": c}
