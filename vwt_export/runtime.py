"""Production loading: one call for any artefact vwt-export writes.

    f = vwt_export.runtime.load("out/model.vwt.onnx")
    logits = f(pixels)            # numpy float32 [B, 3, H, W] -> numpy [B, classes]; f.infer(pixels) the same

With model.vwt.tokenize.onnx + model.vwt.trunk.onnx beside it (vwt-export writes them), that load batches
length-aware (below): the same logits, in the input order, faster at batch > 1 on images of mixed length.
`load(path, stages=False)` runs the one graph (padded batches); loading the .tokenize.onnx file runs the pair.

Length-aware batching. The one-graph model pads every image of a batch to the longest one, so one busy image makes
the whole batch cost as much as the uncompressed model. The two-stage graphs (vwt_export.graph.stages) let the
runtime tokenize the batch once, order the images by token count, run the trunk on sub-batches of similar length,
each sliced to its own longest count (an image's real tokens are its first counts[b] positions), and put the logits
back in the input order. Padding never changes a real token (the sizes-derived attention bias), so every image's
logits equal those of running it alone.

Where to cut the sorted batch is chosen by a cost model, in units of "one image-token through the trunk":

    cost(sub-batch) = call_overhead + images x longest count in the sub-batch

minimised exactly by dynamic programming over the sorted counts (O(B^2); an optimal partition of a sorted list under
this cost is contiguous). `call_overhead` is what one more trunk call costs beyond its token work, in image-tokens.
On a CPU it is mostly the weights: every call streams all of them through the cache whatever its size (DeiT-S, 88 MB
in FP32: a [1, 2, D] trunk call takes 4.7 ms, 3.5 ms of it in MatMul, while a token costs ~200 us at batch >= 2).
CALL_OVERHEAD_TOKENS is that ratio for DeiT-S on ONNX Runtime CPU (time = a + b * images * tokens, a / b = 22 to 26
image-tokens in four fits on a shared 2-core machine; scripts/bench_batch.py prints the fit: rerun it on the target
machine). INT8 weights are 4x smaller, a GPU's per-call cost (launches, an under-filled GPU at small batches) is
larger: pass their own value. call_overhead=0 cuts at every distinct count; a huge value runs one padded batch.

On the built-in scenes with DeiT-S (11% to 100% of the tokens kept, mean 61%) the trunk work, in image-tokens
relative to the ideal (every image at its own length), is 1.56x (batch 8) and 1.62x (batch 32) for the padded
one-graph model, and 1.03x for length-aware batching with 4.75 and 10 trunk calls per batch (call_overhead 24).
With the calls' overhead the modelled trunk cost is ~1.15x the ideal at batch 8, so sub-batching reaches ~87% of
the trunk alone at the mean length, before the tokenize stage (~8% of the trunk, paid by the one-graph model too).

Packing several images into one sequence with a block-diagonal bias (the alternative) would save the extra calls'
weight streaming (one call per batch), but needs a different trunk graph: a [B, 1, T, T] bias from segment ids in
every attention, and pooling per segment (the class token of each image). Not built; see the issue note.

The stages are plain callables, so a TensorRT trunk engine (an optimisation profile over T) can replace the
ONNX Runtime one: `LengthAwareRunner(tokenize, trunk_engine_runner)`.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .backends.base import Runner
from .errors import VWTError
from .graph.ops import TOKENIZE_SUFFIX, TRUNK_SUFFIX  # the stage files' naming rule

CALL_OVERHEAD_TOKENS = 24.0  # default per-call overhead of the trunk, in image-tokens (see the module docstring)

# stage runners: tokenize(pixels) -> (tokens [B,T,D], sizes f32 [B,T], counts i64 [B]); trunk(tokens, sizes) -> logits
Tokenize = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]]
Trunk = Callable[[np.ndarray, np.ndarray], np.ndarray]


def load(path: str | os.PathLike, providers: Sequence[str] | None = None, threads: int | None = None,
         call_overhead: float = CALL_OVERHEAD_TOKENS, stages: bool | None = None) -> Runner:
    """A runner for a .onnx file (the vwt op library is registered automatically when the graph needs it), a
    .engine file (its JSON sidecar is checked against the running TensorRT, GPU and plugin library first), or a
    *.tokenize.onnx file: length-aware batching with the *.trunk.onnx beside it (see the module docstring).
    `runner(pixels)` returns the logits; every runner has the interface of backends/base.py.

    `stages`, for X.onnx: None (default) runs X.tokenize.onnx + X.trunk.onnx length-aware when both lie beside it,
    written by the same run as X.onnx (its output folder's manifest), else the one graph; True requires the pair;
    False runs the one graph. The pair was split from the one graph: equal logits for float graphs; an INT8 pair
    is its own measured graph (report.md gives both its cosines)."""
    path = Path(path)
    if stages is not False and path.suffix == ".onnx" and not path.name.endswith(TOKENIZE_SUFFIX):
        tokenize = stages_beside(path, required=bool(stages))
        if tokenize is not None:
            return load(tokenize, providers, threads, call_overhead)
    if path.name.endswith(TRUNK_SUFFIX):
        raise VWTError(f"{path}: a trunk stage takes tokens, not pixels; load "
                       f"{path.name[: -len(TRUNK_SUFFIX)]}{TOKENIZE_SUFFIX} (length-aware batching) instead")
    if path.suffix not in (".onnx", ".engine"):
        raise VWTError(f"{path}: unknown model format (expected .onnx or .engine)")
    if path.is_dir():
        raise VWTError(f"{path}: a folder, not a model file")
    if not path.is_file():
        raise VWTError(f"{path}: no such model file")
    warn_if_not_as_written(path)
    # Files ONNX Runtime cannot load, and graphs it loads but vwt-export cannot call, are VWTError lines from the
    # backends; anything else (a bug, memory, a provider) propagates as itself.
    if path.name.endswith(TOKENIZE_SUFFIX):
        tokenize, trunk = ort_stages(path, providers, threads)
        return LengthAwareRunner(tokenize, trunk, call_overhead, name=str(path))
    if path.suffix == ".onnx":
        from .backends.onnxruntime import OrtRunner

        return OrtRunner(path, providers, threads)
    from .backends.tensorrt import EngineRunner

    return EngineRunner(path)


def stages_beside(path: Path, required: bool = False) -> Path | None:
    """X.tokenize.onnx when it and X.trunk.onnx lie beside X.onnx and belong with it (none of the three differs
    from the manifest of the run that wrote them), else None (a VWTError when `required`)."""
    tokenize = path.with_name(path.name[: -len(".onnx")] + TOKENIZE_SUFFIX)
    pair = (tokenize, trunk_path(tokenize))
    missing = [p.name for p in pair if not p.is_file()]
    if missing:
        if required:
            raise VWTError(f"{path}: no stage pair beside it ({', '.join(missing)} missing); load it with "
                           "stages=False, or rerun vwt-export, which writes both stages of an inter-mode graph")
        return None
    from .outdir import manifest_problems

    problems = manifest_problems([path, *pair])
    if problems:
        if required:
            raise VWTError(f"{path}: its stage pair may not belong to it: {problems[0]}")
        import logging

        logging.getLogger(__name__).warning("%s: running the one graph, not the stage pair beside it: %s", path.name,
                                            problems[0])
        return None
    return tokenize


def warn_if_not_as_written(path: str | os.PathLike) -> list[str]:
    """Warn (logger vwt_export.runtime) where `path`, or a file loaded with it (the trunk beside a tokenize stage,
    an engine's sidecar), differs from the vwt-export manifest of its output folder, or comes from a run that did
    not complete (vwt_export.outdir.manifest_problems). Returns the warnings."""
    import logging

    from .outdir import manifest_problems

    path = Path(path)
    related = [path]
    if path.name.endswith(TOKENIZE_SUFFIX):
        related.append(trunk_path(path))
    if path.suffix == ".engine":
        related.append(Path(f"{path}.json"))
    problems = manifest_problems(related)
    for line in problems:
        logging.getLogger(__name__).warning("%s", line)
    return problems


def trunk_path(tokenize_path: str | os.PathLike) -> Path:
    """model.vwt.tokenize.onnx -> model.vwt.trunk.onnx (same folder)."""
    p = Path(tokenize_path)
    if not p.name.endswith(TOKENIZE_SUFFIX):
        raise VWTError(f"{p}: a tokenize stage's name ends in {TOKENIZE_SUFFIX}")
    return p.with_name(p.name[: -len(TOKENIZE_SUFFIX)] + TRUNK_SUFFIX)


def stage_session(path: str | os.PathLike, providers: Sequence[str] | None = None, threads: int | None = None,
                  spinning: bool = True):
    """An ONNX Runtime session for one stage. `spinning=False` lets its idle intra-op threads sleep instead of
    spinning: the tokenize stage's pool is idle while the trunk runs, and spinning threads would take cores from
    the trunk's."""
    from .backends.onnxruntime import create_session

    return create_session(path, providers, threads, spinning=spinning)


def ort_stages(tokenize_path: str | os.PathLike, providers: Sequence[str] | None = None,
               threads: int | None = None, spinning: bool = True) -> tuple[Tokenize, Trunk]:
    """ONNX Runtime runners for a tokenize file and the trunk file beside it. The tokenize session never spins
    (see stage_session); `spinning` is the trunk's."""
    from .backends.onnxruntime import OrtRunner
    from .graph.stages import COUNTS, SIZES, TOKENS

    tokenize_path = Path(tokenize_path)
    trunk_file = trunk_path(tokenize_path)
    for p, what in ((tokenize_path, "tokenize"), (trunk_file, "trunk")):
        if not p.is_file():
            raise VWTError(f"{p}: the {what} stage of {tokenize_path.name[: -len(TOKENIZE_SUFFIX)]}.onnx is missing; "
                           "write both stages with vwt_export.graph.stages.split_stages (vwt-export writes them)")
    tokenize = OrtRunner(tokenize_path, providers, threads, spinning=False)
    trunk = OrtRunner(trunk_file, providers, threads, spinning=spinning)
    if trunk.inputs != [TOKENS, SIZES]:
        raise VWTError(f"{trunk_file}: not a trunk stage (inputs {trunk.inputs}, expected {TOKENS}, {SIZES})")
    return functools.partial(tokenize.run, outputs=(TOKENS, SIZES, COUNTS)), trunk


def plan_batches(counts: np.ndarray, call_overhead: float = CALL_OVERHEAD_TOKENS) -> list[np.ndarray]:
    """Sub-batches (arrays of indices into `counts`, shortest images first) minimising
    sum(call_overhead + images x longest count) over the sub-batches; see the module docstring."""
    if call_overhead < 0:
        raise VWTError(f"call_overhead must be >= 0 (image-tokens), got {call_overhead}")
    counts = np.asarray(counts).reshape(-1)
    order = np.argsort(counts, kind="stable")
    s = counts[order].astype(np.float64)
    n = len(s)
    best = np.zeros(n + 1)  # best[j]: the cheapest plan for the j shortest images
    cut = np.zeros(n + 1, dtype=np.int64)  # where that plan's last sub-batch starts
    for j in range(1, n + 1):
        costs = best[:j] + call_overhead + (j - np.arange(j)) * s[j - 1]
        cut[j] = int(np.argmin(costs))
        best[j] = costs[cut[j]]
    groups, j = [], n
    while j > 0:
        groups.append(order[cut[j]:j])
        j = int(cut[j])
    return groups[::-1]


class LengthAwareRunner(Runner):
    """runner(pixels [B, C, H, W]) -> logits [B, ...] in the input order: tokenize once, run the trunk per
    sub-batch of similar length (plan_batches), each sliced to its longest count. The stages are any callables
    (ONNX Runtime runners, a TensorRT trunk engine); `plan(pixels)` returns the sub-batches."""

    kind = "length-aware"

    def __init__(self, tokenize: Tokenize, trunk: Trunk, call_overhead: float = CALL_OVERHEAD_TOKENS,
                 name: str = "stages"):
        if call_overhead < 0:
            raise VWTError(f"call_overhead must be >= 0 (image-tokens), got {call_overhead}")
        super().__init__(name)
        self.tokenize, self.trunk, self.call_overhead = tokenize, trunk, call_overhead

    def infer(self, pixels: np.ndarray) -> np.ndarray:
        return self.infer_tokens(pixels)[0]

    def infer_tokens(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        pixels = np.ascontiguousarray(pixels, dtype=np.float32)
        if pixels.ndim != 4:
            raise VWTError(f"expected pixels [B, C, H, W], got shape {list(pixels.shape)}")
        merged, sizes, counts = self.tokenize(pixels)
        groups = plan_batches(counts, self.call_overhead)
        if len(groups) <= 1:  # one sub-batch (batch 1, an empty batch, equal counts): no gather needed
            longest = int(counts.max()) if len(counts) else merged.shape[1]
            if longest == merged.shape[1]:
                return self.trunk(merged, sizes), counts
        out = None
        for idx in groups:
            longest = int(counts[idx].max())
            part = self.trunk(np.ascontiguousarray(merged[idx, :longest]), np.ascontiguousarray(sizes[idx, :longest]))
            if out is None:
                out = np.empty((len(counts), *part.shape[1:]), dtype=part.dtype)
            out[idx] = part
        return out, counts

    def plan(self, pixels: np.ndarray) -> list[np.ndarray]:
        return plan_batches(self.tokenize(np.ascontiguousarray(pixels, dtype=np.float32))[2], self.call_overhead)

    @property
    def metadata(self) -> dict:
        return {**super().metadata, "call_overhead": self.call_overhead}


def length_aware(tokenize: Tokenize, trunk: Trunk, call_overhead: float = CALL_OVERHEAD_TOKENS) -> LengthAwareRunner:
    """A LengthAwareRunner over any two stage callables."""
    return LengthAwareRunner(tokenize, trunk, call_overhead)
