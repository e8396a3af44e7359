"""Run every built variant over the same images: outputs, tokens, fidelity to FP32, accuracy, merge share.

Each variant's runner is loaded once and serves the outputs pass, the timing and the energy measurement.
Tokens are measured per variant from its own graph (the sizes TokenMerge returns, or the length of the
intra selection), not copied from the torch path: an INT8 graph may match differently.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import onnx

from ..artefacts import Graph, Variant, find, in_order
from ..errors import VWTError
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


def outputs(candidates: Sequence[Candidate], runners: dict[str, Callable], batches: Iterable[np.ndarray],
            progress: Callable[[int], None] | None = None) -> tuple[dict[str, np.ndarray], dict[str, list[int]]]:
    """({label: logits [images, classes]}, {label: tokens per image}) over batches of pixels."""
    logits: dict[str, list[np.ndarray]] = {c.label: [] for c in candidates}
    tokens: dict[str, list[int]] = {}
    for x in batches:
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
        if progress:
            progress(len(x))
    return {k: np.concatenate(v) for k, v in logits.items()}, tokens


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


def measure_variants(run, graphs: list[Graph], engines: dict[Variant, Path]) -> dict[str, dict]:
    """Every variant over the run's check images: fidelity to FP32, accuracy with labels, tokens, latency, energy.
    One runner per variant serves every measurement."""
    from tqdm.auto import tqdm

    from ..models import is_headless, sequence_length
    from ..runtime import load as load_runtime
    from . import energy, latency

    cfg, images = run.cfg, run.images
    # ONNX Runtime's CPU provider runs float16 slower than float32: FP16 is timed on TensorRT only
    ort_graphs = {g.variant: g.path for g in graphs if not (g.portable or g.stage) and g.variant.precision != "fp16"}
    candidates = [Candidate(v.label("ort"), v, ort_graphs[v]) for v in in_order(ort_graphs)]
    if engines:
        try:
            from ..backends.tensorrt import current_gpu

            if cfg.engines.trt_target:
                raise VWTError(f"engines were built ahead of time for {cfg.engines.trt_target.upper()}; run them "
                               "there (vwt_export.runtime.load checks that the GPU matches)")
            current_gpu()
            candidates += [Candidate(v.label("trt"), v, engines[v], "tensorrt") for v in in_order(engines)]
        except VWTError as e:
            run.note("TensorRT engines (accuracy, latency)", f"not run: {e}")
    runners = {c.label: load_runner(c) for c in candidates}
    headless = is_headless(run.model)
    with tqdm(total=len(images.files), desc="evaluating variants", unit="img", disable=not cfg.progress) as bar:
        logits, tokens = outputs(candidates, runners, images.batches(cfg.data.batch_size), progress=bar.update)
    results = evaluate(candidates, logits, images.labels, headless)
    batches = cfg.checks.batches
    pixels = images.pixels[: max(batches)]
    feeds = {b: np.resize(pixels, (b, *pixels.shape[1:])) for b in batches}
    timed = dict(runners)
    length_aware = {}  # variants whose batches > 1 run through the two stages (runtime.load on the tokenize graph)
    for c in candidates:
        tokenize = find(graphs, c.variant, stage="tokenize") if not c.on_tensorrt else None
        if tokenize is not None:
            length_aware[c.label] = tokenize.path.name
            timed[c.label] = lambda x, one=runners[c.label], staged=load_runtime(tokenize.path): (
                one(x) if len(x) == 1 else staged(x))
    with tqdm(total=3 + cfg.checks.reps, desc="timing (interleaved)", unit="rep", disable=not cfg.progress) as bar:
        timing = latency.measure(timed, feeds, warmup=3, reps=cfg.checks.reps, progress=bar.update)
    tokens_in = sequence_length(run.model)
    out = {}
    for c in candidates:
        if c.variant.compressed:
            measured = tokens.get(c.label)
            counts = token_stats(measured) if measured else None
        else:
            counts = token_stats([tokens_in] * len(images.files))
        r = results[c.label]
        r["tokens"] = counts
        r["latency"] = timing[c.label]
        if c.on_tensorrt:
            r["energy"] = energy.measure_gpu(lambda f=runners[c.label]: f(feeds[max(batches)]), max(batches))
        else:
            r["energy"] = energy.measure_cpu_variant()
        r["merge_share"] = merge_share(c.path, pixels[:4]) if c.variant.compressed and not c.on_tensorrt else None
        out[c.label] = {"file": c.path.name, "backend": c.backend, "precision": c.variant.precision,
                        "vwt": c.variant.compressed, "method": c.variant.method or "none",
                        "batching": f"length-aware ({length_aware[c.label]} + trunk)" if c.label in length_aware
                        else "padded", **r}
    if any(c.on_tensorrt and c.variant.compressed for c in candidates):
        run.note("tokens of the TensorRT engines", "an engine returns logits only")
    run.note("FP16 variants on ONNX Runtime CPU", "CPUs without native float16 arithmetic run float16 graphs slower "
             "than float32 (DeiT-S batch 1 on this project's CI machine: 72 ms vs 53 ms), so FP16 is timed on "
             "TensorRT only; --backend trt writes and verifies model.fp16.onnx and model.vwt.fp16.onnx")
    run.note("energy", energy.measure_cpu_variant()["reason"])
    if headless:
        run.note("accuracy and top-k agreement", "the model has no classifier head (num_classes=0): its outputs are "
                 "features, so fidelity is their cosine to FP32")
    elif images.labels is None:
        run.note("accuracy", f"{cfg.data.check_folder} has no labels (class subfolders or a labels file); fidelity "
                 "to FP32 is reported instead")
    return out
