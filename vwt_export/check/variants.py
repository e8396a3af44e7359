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

from ..artefacts import Graph, Variant, find, in_order
from ..backends.base import Runner
from ..errors import VWTError
from ..graph import ops
from .accuracy import Accuracy, Fidelity, accuracy, fidelity


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


@dataclass(frozen=True)
class TokenStats:
    mean: float
    min: float
    max: float
    counts: list  # per image; a ToMe graph's mean over its blocks is fractional

    @classmethod
    def of(cls, counts: Sequence[float]) -> "TokenStats":
        c = [int(n) if float(n).is_integer() else float(n) for n in counts]
        return cls(statistics.fmean(c), min(c), max(c), c)


@dataclass(frozen=True)
class VariantResult:
    """One row of report.json's variants (its schema: check/report.py)."""

    file: str
    backend: str
    precision: str
    vwt: bool  # compressed
    method: str  # its method's variant name, or none
    batching: str  # padded | length-aware (TOKENIZE FILE + trunk)
    accuracy: Accuracy | None
    fidelity: Fidelity
    tokens: TokenStats | None
    latency: dict  # {batch: {p50_ms, p90_ms, p99_ms, mean_ms, runs, images_per_s}} (latency.py)
    energy: dict  # energy.py
    merge_share: float | None


def load_runner(candidate: Candidate) -> Runner:
    """The runner that serves every measurement of `candidate`; an ONNX graph of a compressed variant counts its
    tokens from the graph itself (an INT8 graph may match differently from torch)."""
    from ..backends.onnxruntime import OrtRunner
    from ..runtime import load

    if candidate.on_tensorrt:
        return load(candidate.path)
    return OrtRunner(candidate.path, count_tokens=candidate.variant.compressed)


def outputs(candidates: Sequence[Candidate], runners: dict[str, Runner], batches: Iterable[np.ndarray],
            progress: Callable[[int], None] | None = None) -> tuple[dict[str, np.ndarray], dict[str, list]]:
    """({label: logits [images, classes]}, {label: tokens per image, where its runner counts them})."""
    logits: dict[str, list[np.ndarray]] = {c.label: [] for c in candidates}
    tokens: dict[str, list] = {}
    for x in batches:
        for c in candidates:
            out, counted = runners[c.label].infer_tokens(x)
            logits[c.label].append(out)
            if counted is not None:
                tokens.setdefault(c.label, []).extend(counted.tolist())
        if progress:
            progress(len(x))
    return {k: np.concatenate(v) for k, v in logits.items()}, tokens


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


def measure_variants(run, graphs: list[Graph], engines: dict[Variant, Path]) -> dict[str, VariantResult]:
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
    uncompressed = TokenStats.of([sequence_length(run.model)] * len(images.files))
    out = {}
    for c in candidates:
        counted = tokens.get(c.label)
        out[c.label] = VariantResult(
            file=c.path.name, backend=c.backend, precision=c.variant.precision, vwt=c.variant.compressed,
            method=c.variant.method or "none",
            batching=f"length-aware ({length_aware[c.label]} + trunk)" if c.label in length_aware else "padded",
            accuracy=None if headless else accuracy(logits[c.label], images.labels),
            fidelity=fidelity(logits["fp32"], logits[c.label], headless=headless),
            tokens=(TokenStats.of(counted) if counted else None) if c.variant.compressed else uncompressed,
            latency=timing[c.label],
            energy=(energy.measure_gpu(lambda f=runners[c.label]: f(feeds[max(batches)]), max(batches))
                    if c.on_tensorrt else energy.measure_cpu_variant()),
            merge_share=merge_share(c.path, pixels[:4]) if c.variant.compressed and not c.on_tensorrt else None)
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
