"""Run every built variant over the same images: outputs, tokens, fidelity to FP32, accuracy, merge share.

Each variant's runner is loaded once and serves the outputs pass, the timing and the energy measurement.
Tokens are measured per variant from its own graph (the sizes TokenMerge returns, or the length of the
intra selection), not copied from the torch path: an INT8 graph may match differently.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import onnx

from ..artefacts import Variant
from ..data import iter_image_batches
from ..graph import ops
from .accuracy import accuracy, fidelity

# the graph tensors a compressed variant's tokens are read from: TokenMerge's sizes (inter), the selection (intra)
TOKEN_PROBES = {ops.SIZES_TENSOR: onnx.TensorProto.FLOAT, ops.SELECTED_TENSOR: onnx.TensorProto.FLOAT}


@dataclass(frozen=True)
class Candidate:
    """A variant as built for one backend: what the report's rows are."""

    label: str  # fp32, vwt+int8, trt:vwt, ...
    variant: Variant
    path: Path
    backend: str = "onnxruntime-cpu"  # or "tensorrt"

    @property
    def on_tensorrt(self) -> bool:
        return self.backend == "tensorrt"


def load_runner(candidate: Candidate) -> Callable:
    """The callable that serves every measurement of `candidate`; for ONNX graphs of compressed variants the same
    session also returns a tensor the tokens are counted from (f.with_extras)."""
    from ..runtime import load

    if candidate.on_tensorrt or not candidate.variant.compressed:
        return load(candidate.path)
    from ..backends.onnxruntime import load_proto, runner
    from ..graph.tome_export import read_schedule

    proto = load_proto(candidate.path)
    schedule = read_schedule(proto)
    if schedule is not None:  # ToMe: the same tokens for every image, by construction (mean over the blocks)
        f = load(candidate.path)
        f.fixed_tokens = schedule["mean_tokens"]
        return f
    produced = {o for n in proto.graph.node for o in n.output}
    probe = {k: v for k, v in TOKEN_PROBES.items() if k in produced}
    f = runner(candidate.path, extra_outputs=probe)
    f.counts_tokens = bool(probe)
    return f


def _real_tokens(probe: np.ndarray) -> np.ndarray:
    """Tokens per image from a probe tensor: sizes [B, T] count the real (size > 0) ones; a selection
    [B, T, D] keeps all T."""
    return (probe > 0).sum(axis=1) if probe.ndim == 2 else np.full(len(probe), probe.shape[1])


def outputs(candidates: Sequence[Candidate], runners: dict[str, Callable], files: Sequence[Path], transform,
            batch_size: int, progress: Callable[[int], None] | None = None
            ) -> tuple[dict[str, np.ndarray], dict[str, list[int]], list[Path]]:
    """({label: logits [images, classes]}, {label: tokens per image}, the files decoded); images are decoded once
    for all. A file that cannot be decoded is skipped (with a warning), so the files decoded can be fewer."""
    logits: dict[str, list[np.ndarray]] = {c.label: [] for c in candidates}
    tokens: dict[str, list[int]] = {}
    used: list[Path] = []
    for pixels, paths in iter_image_batches(files, transform, batch_size, progress=progress):
        used += paths
        x = pixels.numpy()
        for c in candidates:
            f = runners[c.label]
            if getattr(f, "counts_tokens", False):
                out, probe = f.with_extras(x)
                logits[c.label].append(out)
                tokens.setdefault(c.label, []).extend(int(n) for n in _real_tokens(probe))
            elif hasattr(f, "fixed_tokens"):
                logits[c.label].append(f(x))
                tokens.setdefault(c.label, []).extend([f.fixed_tokens] * len(x))
            else:
                logits[c.label].append(f(x))
    return {k: np.concatenate(v) for k, v in logits.items()}, tokens, used


def evaluate(candidates: Sequence[Candidate], logits: dict[str, np.ndarray], labels: np.ndarray | None,
             headless: bool, reference: str = "fp32") -> dict[str, dict]:
    ref = logits[reference]
    return {c.label: {"accuracy": None if headless else accuracy(logits[c.label], labels),
                      "fidelity": fidelity(ref, logits[c.label], headless=headless)} for c in candidates}


def merge_share(path: Path, pixels: np.ndarray, reps: int = 5) -> float | None:
    """Fraction of kernel time spent in the nodes graph surgery added (features, matching, merging, attention
    bias, pooling: every node named vwt/...), one image at a time (ONNX Runtime's profiler)."""
    from ..backends.onnxruntime import create_session, kernel_times, load_proto

    if not any(n.domain == ops.DOMAIN for n in load_proto(path).graph.node):
        return None
    session = create_session(path, profile=True)
    name = session.get_inputs()[0].name
    for _ in range(reps + 1):
        for i in range(len(pixels)):
            session.run(None, {name: pixels[i : i + 1]})
    runs = kernel_times(session, by="node")[len(pixels):]  # the first pass over the images warms up
    total = sum(sum(r.values()) for r in runs)
    ours = sum(t for r in runs for node, t in r.items() if node.startswith(ops.NODE_PREFIX))
    return ours / total if total else None


def token_stats(counts: Sequence[int]) -> dict:
    c = [int(n) if float(n).is_integer() else float(n) for n in counts]  # ToMe's mean over blocks is fractional
    return {"mean": statistics.fmean(c), "min": min(c), "max": max(c), "counts": c}
