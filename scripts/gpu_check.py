#!/usr/bin/env python3
"""The Python side of the GPU check (scripts/gpu_check.sh runs it; README, "GPU check").

    versions               what this machine has; an absent package is a line saying so, never an error
    wheels DIR             which carried wheels in DIR this machine needs (paths on stdout, reasons on stderr)
    measure                idle power once, before any work; then torch-backend latency and NVML energy per
                           image of the FP32 baseline, VWT intra and VWT inter at batch 1 and 32
    kernels --library SO   the CUDA kernels of vwt::TokenMerge (op version 2) against the torch reference
    canary --library SO    an out-of-bounds write on purpose, for memcheck to find (proof that it looks)

The kernel cases drive the kernels the ways their two users do:
  - "ort":       phase 1, the length read back (the ONNX Runtime op's one host sync), phase 2 for that length;
  - "trt":       phase 1 and 2 with M read on the device, outputs sized for the bound P+N (the TensorRT plugin);
  - "trt-graph": the "trt" launches captured into a CUDA graph in global capture mode, so that any synchronising
                 call inside fails the capture, then replayed twice with different keys (new M on the device);
every run on a non-default stream, its scratch pre-filled with NaN bytes (0xFF) or random bytes, its outputs with
NaN; keys from five patterns (all distinct, one key, random, int64 extremes, a snake-shaped component) at DeiT-S
and stress shapes, float32 and float16, global and local grouping; plus two cases launched concurrently on two
streams, and a case past the 65535-block cap of the grid-stride kernels.

UNVERIFIED on a GPU: no GPU has run this yet. tests/test_gpu_check.py runs every case against the op library's
CPU kernel, the comparisons, and the energy arithmetic with a stand-in counter, on the CPU.
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import importlib
import inspect
import json
import math
import platform
import statistics
import sys
import time
import zlib
from pathlib import Path
from typing import Callable

import torch

# Where the kernels' buffers live. tests/test_gpu_check.py rehearses the kernel drivers on the CPU (a stand-in
# library with the same C interface, torch.cuda's streams and graphs stood in for) with DEVICE = "cpu".
DEVICE = "cuda"

# The first timm whose ViT blocks take attn_mask= (vwt_export/vwt/model.py passes it; timm 1.0.15's
# Block.forward(x) has no such argument).
TIMM_MIN = (1, 0, 16)

# ---- kernel cases ---------------------------------------------------------------------------------------------

KEY_PATTERNS = ("distinct", "one-key", "random", "extremes", "snake")
DTYPES = {"float32": torch.float32, "float16": torch.float16}
PATHS = ("ort", "trt", "trt-graph")

# (B, N, D, P, grid width). DeiT-S (196 patches, 384 wide), batch 8 with 5 prefix tokens, tiny and degenerate
# shapes (one patch, no patch, no image, D = 0), N = 300 (not a power of two, more than one scan block), the global
# sort steps (N > 2048: 6084, 16384), and a wide D.
FULL_SHAPES = [(1, 196, 384, 1, 14), (8, 196, 384, 1, 14), (8, 256, 64, 5, 16), (3, 16, 4, 0, 4), (2, 1, 8, 2, 1),
               (2, 16, 0, 1, 4), (2, 0, 4, 1, 1), (0, 4, 4, 1, 2), (2, 300, 8, 1, 20), (1, 78 * 78, 64, 1, 78),
               (2, 128 * 128, 16, 1, 128), (2, 196, 12288, 1, 14)]
QUICK_SHAPES = [(2, 196, 64, 1, 14), (3, 16, 4, 0, 4), (2, 1, 8, 2, 1), (2, 16, 0, 1, 4), (2, 0, 4, 1, 1),
                (0, 4, 4, 1, 2), (2, 300, 8, 1, 20), (1, 4096, 8, 1, 64)]
TINY_SHAPES = [(2, 196, 64, 1, 14), (2, 300, 8, 1, 20), (1, 4096, 8, 1, 64)]

# Past the cap: the grid-stride kernels launch at most 65535 blocks of 256 threads, and 65 images of 512 x 512
# patches hold 65 * 2^18 = 17,039,360 sort entries and patches > 65535 * 256 = 16,776,960.
GRID_CAP = (65, 512 * 512, 2, 1, 512)
GRID_CAP_THREADS = 65535 * 256


@dataclasses.dataclass(frozen=True)
class Case:
    B: int
    N: int
    D: int
    P: int
    grid_w: int
    keys: str
    dtype: str
    path: str
    shape_grid_w: int = 0  # the grid the keys are drawn on (snake), also when grid_w = 0
    shared_keys: bool = False  # every image has the same key structure (offset per image): one-image reference

    @property
    def name(self) -> str:
        return (f"B={self.B} N={self.N} D={self.D} P={self.P} grid_w={self.grid_w} {self.keys} {self.dtype}"
                f"{' shared-keys' if self.shared_keys else ''}")

    def inputs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(tokens [B, P+N, D] of this dtype, keys int64 [B, N]), on the CPU; the same on every path (seeded by
        the name, which leaves the path out)."""
        g = torch.Generator().manual_seed(zlib.crc32(self.name.encode()))
        if self.shared_keys:
            keys = make_keys(self.keys, 1, self.N, self.shape_grid_w, g)
            keys = keys + (torch.arange(self.B) * 2**40).unsqueeze(1)  # other values, the same groups
        else:
            keys = make_keys(self.keys, self.B, self.N, self.shape_grid_w, g)
        tokens = torch.randn(self.B, self.P + self.N, self.D, generator=g).to(DTYPES[self.dtype])
        return tokens, keys


def make_keys(pattern: str, B: int, N: int, grid_w: int, g: torch.Generator) -> torch.Tensor:
    lo, hi = torch.iinfo(torch.int64).min, torch.iinfo(torch.int64).max
    if pattern == "distinct":  # M = N
        if B == 0:
            return torch.zeros(0, N, dtype=torch.int64)
        return torch.stack([torch.randperm(N, generator=g) * 7 - 2**40 for _ in range(B)])
    if pattern == "one-key":  # M = 1
        return torch.full((B, N), -(2**61), dtype=torch.int64)
    if pattern == "random":
        return torch.randint(-3, 4, (B, N), generator=g) * 2**50
    if pattern == "extremes":
        extremes = torch.tensor([lo, -1, 0, 1, 2**53 + 1, hi])
        return extremes[torch.randint(len(extremes), (B, N), generator=g)]
    if pattern == "snake":
        return snake_keys(B, N, grid_w)
    raise ValueError(f"unknown key pattern {pattern!r}")


# The reference's label propagation takes about one round per step along a row of the snake, so snakes stay
# within SNAKE_ROWS rows, on grids of at most SNAKE_MAX_N patches (78 x 78 is the widest shape that gets one).
SNAKE_ROWS = 16
SNAKE_MAX_N = 8192


def snake_keys(B: int, N: int, grid_w: int) -> torch.Tensor:
    """A long serpentine component of key 0 (the even rows of the first SNAKE_ROWS, joined at alternating ends)
    in key 1: the longest chains for the union-find links; below it, keys 2..6 scattered. Odd images get the
    mirror image."""
    if B == 0 or N == 0 or grid_w == 0:
        return torch.zeros(B, N, dtype=torch.int64)
    rows = N // grid_w
    k = 2 + (torch.arange(N) * 2654435761 // 128 % 5).reshape(rows, grid_w)
    snake = min(rows, SNAKE_ROWS)
    k[:snake] = 1
    k[0:snake:2] = 0
    for r in range(1, snake, 2):
        k[r, -1 if (r // 2) % 2 == 0 else 0] = 0
    k = k.reshape(N)
    return torch.stack([k if b % 2 == 0 else k.flip(0) for b in range(B)])


def kernel_cases(subset: str) -> list[Case]:
    """The cases of one pass: "full" (the correctness pass), "quick" (under memcheck), "tiny" (racecheck and
    synccheck), each with every path it runs on."""
    if subset == "tiny":
        return [Case(B, N, D, P, g, k, "float32", path, gw)
                for B, N, D, P, gw in TINY_SHAPES for k in ("distinct", "random") for g in (0, gw)
                for path in ("ort", "trt")]
    if subset == "quick":
        runs = [("float32", "ort"), ("float32", "trt-graph"), ("float16", "trt")]
        return [Case(B, N, D, P, g, k, dt, path, gw)
                for B, N, D, P, gw in QUICK_SHAPES for k in ("distinct", "random", "snake") for g in (0, gw)
                for dt, path in runs]
    if subset != "full":
        raise ValueError(f"unknown subset {subset!r}")
    cases = [Case(B, N, D, P, g, k, dt, path, gw)
             for B, N, D, P, gw in FULL_SHAPES for k in KEY_PATTERNS if k != "snake" or N <= SNAKE_MAX_N
             for g in (0, gw) for dt in DTYPES for path in PATHS]
    B, N, D, P, gw = GRID_CAP
    cases += [Case(B, N, D, P, g, "random", "float32", path, gw, shared_keys=True)
              for g in (0, gw) for path in ("ort", "trt")]
    return cases


def reference(case: Case, tokens: torch.Tensor, keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(merged, sizes) by the executable spec, vwt_export.vwt.merge.token_merge, in float32."""
    from vwt_export.vwt.merge import token_merge

    t = tokens.float()
    if not case.shared_keys:
        return token_merge(t, keys, case.P, case.grid_w)
    # Every image has the same groups, and a mean is per feature: merging the images side by side along D as one
    # image is the same arithmetic as merging each image (and 65 times cheaper for the grid-cap case).
    B, T, D = t.shape
    merged, sizes = token_merge(t.permute(1, 0, 2).reshape(1, T, B * D), keys[:1], case.P, case.grid_w)
    merged = merged.reshape(merged.shape[1], B, D).permute(1, 0, 2).contiguous()
    return merged, sizes.expand(B, -1).contiguous()


def compare(case: Case, merged: torch.Tensor, sizes: torch.Tensor, length: int, ref_merged: torch.Tensor,
            ref_sizes: torch.Tensor) -> tuple[bool, str, float]:
    """(ok, what differs, max |error|) of one implementation's outputs (on the CPU) against the reference.
    float32: within 1e-5 (abs + rel); float16: within 1e-3 of the reference rounded to float16 (one half-ulp of
    rounding apart at most)."""
    ref_length = ref_merged.shape[1]
    if length != ref_length:
        return False, f"length {length} (reference {ref_length})", math.nan
    if tuple(merged.shape) != tuple(ref_merged.shape) or tuple(sizes.shape) != tuple(ref_sizes.shape):
        return False, f"shapes {tuple(merged.shape)}/{tuple(sizes.shape)} (reference {tuple(ref_merged.shape)})", math.nan
    got = merged.float()
    if torch.isnan(got).any() or torch.isnan(sizes).any():
        bad = int(torch.isnan(got).sum()) + int(torch.isnan(sizes).sum())
        return False, f"{bad} values left unwritten or NaN", math.nan
    if not torch.equal(sizes.float(), ref_sizes.float()):
        return False, f"sizes differ at {int((sizes.float() != ref_sizes.float()).sum())} positions", math.nan
    if case.dtype == "float16":
        want, tol = ref_merged.to(torch.float16).float(), 1e-3
    else:
        want, tol = ref_merged.float(), 1e-5
    err = float((got - want).abs().max()) if got.numel() else 0.0
    if not torch.allclose(got, want, atol=tol, rtol=tol):
        return False, f"merged differs, max |error| {err:.3g}", err
    return True, "", err


def tail_untouched(merged_flat: torch.Tensor, sizes_flat: torch.Tensor, B: int, length: int, D: int) -> bool:
    """The TensorRT path's buffers are sized for the bound P+N: nothing past B x length rows may be written."""
    return bool(torch.isnan(merged_flat[B * length * D:].float()).all() and torch.isnan(sizes_flat[B * length:]).all())


# ---- the CUDA kernels through their C interface ---------------------------------------------------------------

class CheckError(RuntimeError):
    pass


class Kernels:
    """libvwt_cuda.so (gpu_check.sh builds it from plugins/common) driven on torch's device pointers."""

    def __init__(self, path: str):
        lib = ctypes.CDLL(path)
        i64, p = ctypes.c_int64, ctypes.c_void_p
        lib.vwt_cuda_last_error.restype = ctypes.c_char_p
        lib.vwt_cuda_workspace_size.restype = ctypes.c_size_t
        lib.vwt_cuda_workspace_size.argtypes = [i64, i64]
        lib.vwt_cuda_token_merge_groups.argtypes = [p, i64, i64, i64, i64, p, p, p]
        lib.vwt_cuda_token_merge_rows.argtypes = [p, ctypes.c_int, i64, i64, i64, i64, i64, p, p, p, p]
        self.lib = lib
        self.poison_count = 0

    def _call(self, fn: str, *args) -> None:
        if getattr(self.lib, fn)(*args) != 0:
            raise CheckError(f"{fn}: {self.lib.vwt_cuda_last_error().decode()}")

    def workspace(self, B: int, N: int) -> torch.Tensor:
        return torch.empty(self.lib.vwt_cuda_workspace_size(B, N), dtype=torch.uint8, device=DEVICE)

    def poison(self, ws: torch.Tensor) -> None:
        """Scratch as a careless allocator leaves it: all 0xFF bytes (NaN floats, -1 integers) or random bytes,
        alternately."""
        self.poison_count += 1
        if self.poison_count % 2:
            ws.fill_(0xFF)
        else:
            ws.random_(0, 256)

    def groups(self, keys, B, N, P, grid_w, ws, length, stream: int) -> None:
        self._call("vwt_cuda_token_merge_groups", keys.data_ptr(), B, N, P, grid_w, ws.data_ptr(),
                   length.data_ptr(), stream)

    def rows(self, tokens, B, N, P, D, M, ws, merged, sizes, stream: int) -> None:
        half = int(tokens.dtype == torch.float16)
        self._call("vwt_cuda_token_merge_rows", tokens.data_ptr(), half, B, N, P, D, M, ws.data_ptr(),
                   merged.data_ptr(), sizes.data_ptr(), stream)


Result = tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]  # keys used, merged, sizes, length (on the CPU)


def on_device(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return tuple(t.to(DEVICE, copy=True) for t in tensors)  # copies, also where DEVICE is the CPU


def to_host(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return tuple(t.to("cpu", copy=True) for t in tensors)  # copies: the graph path replays into the same buffers


def nan_like(shape, dtype) -> torch.Tensor:
    return torch.full(shape, float("nan"), dtype=dtype, device=DEVICE)


def run_ort(k: Kernels, case: Case, tokens: torch.Tensor, keys: torch.Tensor, stream) -> list[Result]:
    B, N, D, P = case.B, case.N, case.D, case.P
    with torch.cuda.stream(stream):
        tc, kc = on_device(tokens, keys)
        ws = k.workspace(B, N)
        k.poison(ws)
        length = torch.full((1,), -7, dtype=torch.int64, device=DEVICE)
        k.groups(kc, B, N, P, case.grid_w, ws, length, stream.cuda_stream)
        L = int(length.item())  # the ONNX Runtime op's one host synchronisation
        if not P <= L <= P + N:
            raise CheckError(f"phase 1 returned length {L}, outside [P, P+N] = [{P}, {P + N}]")
        merged, sizes = nan_like((B, L, D), tokens.dtype), nan_like((B, L), torch.float32)
        k.rows(tc, B, N, P, D, L - P, ws, merged, sizes, stream.cuda_stream)
        stream.synchronize()
        return [(keys, *to_host(merged, sizes), L)]


def read_trt(case: Case, merged: torch.Tensor, sizes: torch.Tensor, length: torch.Tensor) -> tuple:
    B, N, D, P = case.B, case.N, case.D, case.P
    L = int(length.item())
    if not P <= L <= P + N:
        raise CheckError(f"length {L} outside [P, P+N] = [{P}, {P + N}]")
    if not tail_untouched(merged, sizes, B, L, D):
        raise CheckError(f"wrote past B x length = {B} x {L} rows of the buffers sized for P+N = {P + N}")
    return (*to_host(merged[: B * L * D].reshape(B, L, D), sizes[: B * L].reshape(B, L)), L)


def run_trt(k: Kernels, case: Case, tokens: torch.Tensor, keys: torch.Tensor, stream) -> list[Result]:
    B, N, D, P = case.B, case.N, case.D, case.P
    with torch.cuda.stream(stream):
        tc, kc = on_device(tokens, keys)
        ws = k.workspace(B, N)
        k.poison(ws)
        length = torch.full((1,), -7, dtype=torch.int64, device=DEVICE)
        merged, sizes = nan_like((B * (P + N) * D,), tokens.dtype), nan_like((B * (P + N),), torch.float32)
        k.groups(kc, B, N, P, case.grid_w, ws, length, stream.cuda_stream)  # no host sync between the phases
        k.rows(tc, B, N, P, D, -1, ws, merged, sizes, stream.cuda_stream)
        stream.synchronize()
        return [(keys, *read_trt(case, merged, sizes, length))]


def run_trt_graph(k: Kernels, case: Case, tokens: torch.Tensor, keys: torch.Tensor, stream) -> list[Result]:
    """The TensorRT path captured into a CUDA graph in global mode: a synchronising call inside (a host read of
    the length, a stream or device sync) fails the capture. Replayed with the case's keys, then with the keys
    reversed along N (other groups, another M read on the device), scratch and outputs poisoned before each."""
    B, N, D, P = case.B, case.N, case.D, case.P
    with torch.cuda.stream(stream):
        tc, kc = on_device(tokens, keys)
        ws = k.workspace(B, N)
        length = torch.full((1,), -7, dtype=torch.int64, device=DEVICE)
        merged, sizes = nan_like((B * (P + N) * D,), tokens.dtype), nan_like((B * (P + N),), torch.float32)
    stream.synchronize()
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph, stream=stream, capture_error_mode="global"):
            s = torch.cuda.current_stream().cuda_stream
            k.groups(kc, B, N, P, case.grid_w, ws, length, s)
            k.rows(tc, B, N, P, D, -1, ws, merged, sizes, s)
    except RuntimeError as e:  # CheckError too: a launch refused during the capture
        raise CheckError(f"CUDA-graph capture failed (a synchronising call inside?): {str(e).splitlines()[0]}")
    results = []
    for replay_keys in (keys, keys.flip(1)):
        with torch.cuda.stream(stream):
            kc.copy_(replay_keys)
            k.poison(ws)
            merged.fill_(float("nan"))
            sizes.fill_(float("nan"))
            length.fill_(-7)
            graph.replay()
            stream.synchronize()
            results.append((replay_keys, *read_trt(case, merged, sizes, length)))
    del graph
    return results


RUNNERS = {"ort": run_ort, "trt": run_trt, "trt-graph": run_trt_graph}


class References:
    """The reference of the last case's inputs, for each set of keys: consecutive cases differ only in the path
    that runs them (the inputs depend on the rest of the case alone)."""

    def __init__(self):
        self.name, self.found = None, {}

    def __call__(self, case: Case, tokens: torch.Tensor, keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if case.name != self.name:
            self.name, self.found = case.name, {}
        key = keys.numpy().tobytes()
        if key not in self.found:
            self.found[key] = reference(case, tokens, keys)
        return self.found[key]


def check_case(k: Kernels, case: Case, stream, refs: Callable = reference) -> list[tuple[bool, str, float]]:
    tokens, keys = case.inputs()
    out = []
    for used_keys, merged, sizes, L in RUNNERS[case.path](k, case, tokens, keys, stream):
        out.append(compare(case, merged, sizes, L, *refs(case, tokens, used_keys)))
    return out


def check_two_streams(k: Kernels, rounds: int = 4) -> tuple[bool, str]:
    """Two cases launched alternately on two streams with no synchronisation between them (the TensorRT path):
    kernels that shared hidden state, or launched on the legacy default stream, would mix them up."""
    cases = (Case(8, 196, 384, 1, 14, "random", "float32", "trt", 14),
             Case(2, 78 * 78, 64, 1, 78, "snake", "float16", "trt", 78))
    inputs = {c: c.inputs() for c in cases}
    refs = {c: reference(c, *inputs[c]) for c in cases}
    streams = (torch.cuda.Stream(), torch.cuda.Stream())
    problems = []
    for r in range(rounds):
        state = []
        for case, s in zip(cases if r % 2 == 0 else cases[::-1], streams):
            B, N, D, P = case.B, case.N, case.D, case.P
            with torch.cuda.stream(s):
                tc, kc = on_device(*inputs[case])
                ws = k.workspace(B, N)
                k.poison(ws)
                length = torch.full((1,), -7, dtype=torch.int64, device=DEVICE)
                merged, sizes = nan_like((B * (P + N) * D,), tc.dtype), nan_like((B * (P + N),), torch.float32)
            state.append((case, s, tc, kc, ws, length, merged, sizes))
        torch.cuda.synchronize()  # inputs ready; from here on nothing waits until both streams are done
        for case, s, tc, kc, ws, length, merged, sizes in state:
            k.groups(kc, case.B, case.N, case.P, case.grid_w, ws, length, s.cuda_stream)
        for case, s, tc, kc, ws, length, merged, sizes in state:
            k.rows(tc, case.B, case.N, case.P, case.D, -1, ws, merged, sizes, s.cuda_stream)
        torch.cuda.synchronize()
        for case, s, tc, kc, ws, length, merged, sizes in state:
            ok, why, _ = compare(case, *read_trt(case, merged, sizes, length), *refs[case])
            if not ok:
                problems.append(f"round {r}, {case.name}: {why}")
    return not problems, "; ".join(problems[:3])


def check_ort_cuda() -> str:
    """The op library's CUDA EP kernel through ONNX Runtime, where both exist; else one line saying why not."""
    try:
        import onnxruntime as ort
    except ImportError:
        return "ONNX Runtime CUDA EP: skipped (onnxruntime is not installed)"
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return (f"ONNX Runtime CUDA EP: skipped (onnxruntime {ort.__version__} has no CUDAExecutionProvider; "
                "the kernels it would run are the ones checked above)")
    from vwt_export.backends.onnxruntime import create_session
    from vwt_export.graph import ops

    failures, total = [], 0
    for case in kernel_cases("tiny"):
        if case.path != "ort":
            continue
        total += 1
        tokens, keys = case.inputs()
        try:
            s = create_session(ops.single_op_model(ops.TOKEN_MERGE, num_prefix=case.P, grid_w=case.grid_w),
                               providers=["CUDAExecutionProvider"])
            merged, sizes, length = s.run(None, {"tokens": tokens.numpy(), "keys": keys.numpy()})
        except Exception as e:  # the library missing or not built with CUDA: say so once
            return f"ONNX Runtime CUDA EP: skipped ({type(e).__name__}: {str(e).splitlines()[0][:160]})"
        ok, why, _ = compare(case, torch.from_numpy(merged), torch.from_numpy(sizes), int(length),
                             *reference(case, tokens, keys))
        if not ok:
            failures.append(f"{case.name}: {why}")
    return f"ONNX Runtime CUDA EP: {total - len(failures)}/{total} OK" + "".join(f"\n  MISMATCH {f}" for f in failures)


def context_broken() -> bool:
    """After an error: can this process still run CUDA work? (An illegal address leaves the context unusable.)"""
    try:
        torch.cuda.synchronize()
        return False
    except RuntimeError:
        return True


def run_kernels(args) -> int:
    if not torch.cuda.is_available():
        print("error: no CUDA GPU visible to torch; run the kernel checks on the GPU machine")
        return 2
    k = Kernels(args.library)
    log = open(args.log, "w", buffering=1) if args.log else None  # line by line: a timeout loses no line

    def record(line: str) -> None:
        if log:
            log.write(line + "\n")

    stream = torch.cuda.Stream()  # every case on a non-default stream
    cases = kernel_cases(args.subset)
    counts = {p: {"ok": 0, "bad": 0, "float32": 0.0, "float16": 0.0} for p in PATHS}
    failures: list[str] = []
    cap = [0, 0]  # ok, bad: the runs past the 65535-block cap
    print(f"kernels vs the torch reference: {len(cases)} runs ({args.subset}), each on a second stream, scratch "
          "poisoned, outputs NaN-filled")
    t0 = time.perf_counter()
    broken = False
    refs = References()
    for case in cases:
        try:
            results = check_case(k, case, stream, refs)
        except (CheckError, RuntimeError) as e:  # RuntimeError: a CUDA error that torch saw
            results = [(False, f"ERROR {type(e).__name__}: {str(e).splitlines()[0][:200]}", math.nan)]
            broken = context_broken()
        for i, (ok, why, err) in enumerate(results):
            tag = case.path + (f" replay {i + 1}" if case.path == "trt-graph" else "")
            line = f"{case.name} {tag}: " + (f"OK (max |error| {err:.3g})" if ok else
                                              why if why.startswith("ERROR") else f"MISMATCH {why}")
            record(line)
            c = counts[case.path]
            if case.shared_keys:
                cap[0 if ok else 1] += 1
            if ok:
                c["ok"] += 1
                c[case.dtype] = max(c[case.dtype], err)
            else:
                c["bad"] += 1
                failures.append(line)
                if len(failures) <= args.show:
                    print(f"  {line}", flush=True)
        if broken:
            print("  the CUDA context is broken by the error above: the remaining checks cannot run in this process")
            failures.append("CUDA context broken")
            break
    for p, c in counts.items():
        if c["ok"] + c["bad"]:
            print(f"  {p:9s}: {c['ok'] + c['bad']} checks, {c['ok']} OK, {c['bad']} failed; max |error| float32 "
                  f"{c['float32']:.3g}, float16 {c['float16']:.3g}")
    extra = []
    if not broken and args.subset != "tiny":
        try:
            ok, why = check_two_streams(k)
        except (CheckError, RuntimeError) as e:
            ok, why = False, f"ERROR {str(e).splitlines()[0][:200]}"
        extra.append(("two streams, no sync between them", ok, why))
    for what, ok, why in extra:
        line = f"{what}: {'OK' if ok else 'MISMATCH ' + why}"
        print(f"  {line}")
        record(line)
        if not ok:
            failures.append(line)
    if cap[0] + cap[1]:  # a summary of case lines counted above
        B, N = GRID_CAP[0], GRID_CAP[1]
        print(f"  past the 65535-block cap (B={B} N={N}: {B * N:,} patches and {B * N:,} sort entries > "
              f"{GRID_CAP_THREADS:,} threads): {cap[0]}/{cap[0] + cap[1]} OK")
    if args.subset == "full" and not broken:
        line = check_ort_cuda()
        print("  " + line)
        record(line)
        if "MISMATCH" in line:
            failures.append(line)
    if len(failures) > args.show:
        print(f"  ... {len(failures) - args.show} more failures{' in ' + args.log if args.log else ''}")
    print(f"kernels: {'all passed' if not failures else f'{len(failures)} FAILED'} "
          f"({time.perf_counter() - t0:.0f} s)")
    if log:
        log.close()
    return 0 if not failures else 1


def run_canary(args) -> int:
    """For memcheck only: phase 2 told one row more than its outputs hold, so it writes past their end on
    purpose. gpu_check.sh expects memcheck to report it: a sanitizer that reports nothing here (a kernel filter
    matching none of our kernels, say) proves nothing by its silence elsewhere."""
    if not torch.cuda.is_available():
        print("error: no CUDA GPU visible to torch; run the canary on the GPU machine")
        return 2
    k = Kernels(args.library)
    case = Case(2, 196, 64, 1, 0, "distinct", "float32", "ort", 14)
    B, N, D, P = case.B, case.N, case.D, case.P
    tokens, keys = case.inputs()
    tc, kc = on_device(tokens, keys)
    ws = k.workspace(B, N)
    length = torch.full((1,), -7, dtype=torch.int64, device=DEVICE)
    s = torch.cuda.current_stream().cuda_stream
    k.groups(kc, B, N, P, case.grid_w, ws, length, s)
    L = int(length.item())
    merged, sizes = nan_like((B, L, D), torch.float32), nan_like((B, L), torch.float32)
    k.rows(tc, B, N, P, D, L - P + 1, ws, merged, sizes, s)  # one row too many: B x D floats past the end
    try:
        torch.cuda.synchronize()
    except RuntimeError as e:  # memcheck stops the kernel at the first bad access
        print(f"canary: the launch failed as it should under memcheck ({str(e).splitlines()[0][:120]})")
    print(f"canary: wrote past a [{B}, {L}, {D}] output on purpose")
    return 0


# ---- energy: NVML's counter, idle once, gross and net per image -------------------------------------------------

class NvmlCounter:
    """NVML's total energy counter of one GPU: integer millijoules since the driver loaded (Volta and newer)."""

    def __init__(self, read_mj: Callable[[], int], name: str = ""):
        self.read_mj = read_mj
        self.name = name

    @classmethod
    def open(cls, index: int = 0) -> "NvmlCounter | str":
        """The counter, or one line saying why there is none."""
        try:
            import pynvml
        except ImportError:
            return "pynvml is not installed (pip install nvidia-ml-py)"
        try:
            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
            name = pynvml.nvmlDeviceGetName(handle)
        except Exception as e:  # no driver, or a GPU without the counter
            return f"NVML cannot read a GPU energy counter ({type(e).__name__}: {e})"
        return cls(lambda: int(pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)),
                   name.decode() if isinstance(name, bytes) else str(name))


@dataclasses.dataclass
class Idle:
    """The idle GPU, measured once before any work, from the counter's own update edges."""
    watts: float
    sd_watts: float  # spread of the idle power over segments of about one second
    window_s: float
    update_period_s: float  # median time between counter changes
    step_mj: int  # smallest change seen
    updates: int
    poll_s: float  # median time between two reads of the counter
    watts_err: float = 0.0  # what the timing of the window's first and last update leaves uncertain
    reason: str = ""

    @property
    def ok(self) -> bool:
        return not self.reason


class Reader:
    """Reads of a counter, each bracketed by the clock: a change seen by one read happened after the previous
    read began and before this one ended, so its time is known to within half that span."""

    def __init__(self, counter: NvmlCounter, clock: Callable[[], float]):
        self.counter, self.clock = counter, clock
        self.begun = self.ended = clock()
        self.value = counter.read_mj()

    def read(self) -> tuple[bool, float, float]:
        """(changed, when, +- how much)."""
        before, last = self.begun, self.value
        self.begun = self.clock()
        self.value = self.counter.read_mj()
        self.ended = self.clock()
        return self.value != last, (before + self.ended) / 2, (self.ended - before) / 2


def measure_idle(counter: NvmlCounter, window_s: float = 6.0, poll_s: float = 0.001, segment_s: float = 1.0,
                 clock: Callable[[], float] = time.perf_counter, sleep: Callable[[float], None] = time.sleep) -> Idle:
    r = Reader(counter, clock)
    t_start = r.begun
    changes: list[tuple[float, int]] = []
    spreads: list[float] = []
    reads = [t_start]
    while r.ended - t_start < window_s:
        sleep(poll_s)
        changed, when, spread = r.read()
        reads.append(r.begun)
        if changed:
            changes.append((when, r.value))
            spreads.append(spread)
    poll = statistics.median(b - a for a, b in zip(reads, reads[1:]))
    if len(changes) < 3:
        return Idle(math.nan, math.nan, window_s, math.nan, 0, len(changes), poll,
                    reason=f"the energy counter changed {len(changes)} times in {window_s:.0f} s")
    (t0, e0), (t1, e1) = changes[0], changes[-1]
    watts = (e1 - e0) / 1e3 / (t1 - t0)
    segments, (ts, es) = [], changes[0]
    for t, e in changes[1:]:
        if t - ts >= segment_s:
            segments.append((e - es) / 1e3 / (t - ts))
            ts, es = t, e
    period = statistics.median(b[0] - a[0] for a, b in zip(changes, changes[1:]))
    step = min(b[1] - a[1] for a, b in zip(changes, changes[1:]))
    sd = statistics.pstdev(segments) if len(segments) >= 2 else 0.0
    err = (watts * (spreads[0] + spreads[-1]) + 2e-3) / (t1 - t0)
    return Idle(watts, sd, t1 - t0, period, step, len(changes), poll, err)


def wait_for_update(counter: NvmlCounter, timeout_s: float, poll_s: float, clock, sleep
                    ) -> tuple[float, float, int, bool]:
    """(time, +- how much, value, seen) of the counter's next change, so that a window starts and ends on fresh
    values (a read between updates is stale by up to one update period)."""
    r = Reader(counter, clock)
    t_start = r.begun
    while r.ended - t_start < timeout_s:
        sleep(poll_s)
        changed, when, spread = r.read()
        if changed:
            return when, spread, r.value, True
    return r.ended, 0.0, r.value, False


@dataclasses.dataclass
class Energy:
    images: int
    seconds: float
    joules: float
    idle_w: float
    noise_j: float  # what idle drift, edge timing and counter steps can account for over this window
    aligned: bool

    @property
    def gross(self) -> float:
        return self.joules / self.images

    @property
    def net(self) -> float:
        return (self.joules - self.idle_w * self.seconds) / self.images

    @property
    def noise(self) -> float:
        return self.noise_j / self.images

    @property
    def mean_w(self) -> float:
        return self.joules / self.seconds

    @property
    def under_noise(self) -> bool:
        """A net figure this small is no evidence of anything (not of a saving either)."""
        return not self.net > self.noise

    def as_dict(self) -> dict:
        return {**dataclasses.asdict(self), "j_per_image_gross": self.gross, "j_per_image_net": self.net,
                "j_per_image_noise": self.noise, "mean_w": self.mean_w, "net_under_noise": self.under_noise}


def measure_energy(counter: NvmlCounter, work: Callable[[], None], images_per_call: int, idle: Idle,
                   window_s: float = 4.0, sync: Callable[[], None] = lambda: None,
                   clock: Callable[[], float] = time.perf_counter, sleep: Callable[[float], None] = time.sleep,
                   ) -> Energy:
    """Energy of `work` over a window of at least window_s that starts and ends on counter updates.

    The joules between two updates are exact (to the counter's mJ); the idle draw subtracted for the net figure is
    idle W x the time between them, known to within the reads around each edge. So noise = 2 x idle spread x time
    (the idle draw drifts) + the idle figure's own uncertainty x time + idle W x the edges' uncertainty + 2 mJ;
    a window whose edges were not seen adds two update periods of mean power (a read between updates is that
    stale)."""
    sync()
    edge_timeout = max(1.0, 5 * idle.update_period_s) if idle.ok else 1.0
    t0, h0, e0, seen0 = wait_for_update(counter, edge_timeout, idle.poll_s, clock, sleep)
    calls = 0
    while clock() - t0 < window_s:
        work()
        calls += 1
    sync()
    t1, h1, e1, seen1 = wait_for_update(counter, edge_timeout, idle.poll_s, clock, sleep)
    seconds, joules = t1 - t0, (e1 - e0) / 1e3
    mean_w = joules / seconds if seconds > 0 else 0.0
    noise = (2 * idle.sd_watts + idle.watts_err) * seconds + idle.watts * (h0 + h1) + 2e-3
    aligned = seen0 and seen1
    if not aligned:
        noise += 2 * (idle.update_period_s if idle.ok else 1.0) * mean_w
    return Energy(calls * images_per_call, seconds, joules, idle.watts, noise, aligned)


def energy_cells(e: Energy | None, base: Energy | None) -> tuple[str, str, str, str]:
    """(gross J/image, net J/image, net vs baseline, mean W) for the table; a net figure under the noise is said
    to be so, never printed as a number (nor as a saving)."""
    if e is None:
        return "n/a", "n/a", "n/a", "n/a"
    gross, watts = f"{e.gross:.4f}", f"{e.mean_w:.0f}"
    if e.under_noise:
        return gross, f"under noise (< {e.noise:.4f})", "n/a", watts
    net = f"{e.net:.4f} ± {e.noise:.4f}"
    if base is None or base.under_noise:
        return gross, net, "n/a", watts
    return gross, net, f"{e.net / base.net:.2f}x", watts


def describe_counter(idle: Idle) -> str:
    if not idle.ok:
        return f"NVML energy counter: {idle.reason}"
    return (f"idle {idle.watts:.1f} W (once, before any work, over {idle.window_s:.1f} s; spread {idle.sd_watts:.2f} W "
            f"over ~1 s segments); NVML total energy counter: integer mJ, smallest step seen {idle.step_mj} mJ, "
            f"updates every ~{idle.update_period_s * 1e3:.0f} ms ({idle.updates} changes seen), read every "
            f"~{idle.poll_s * 1e3:.1f} ms")


# ---- torch-backend latency and energy ------------------------------------------------------------------------

def timm_status() -> tuple[bool, str]:
    """(usable, one line): timm's ViT blocks must take attn_mask= (first in timm 1.0.16)."""
    try:
        import timm
        from timm.models.vision_transformer import Block
    except Exception as e:
        return False, f"timm cannot be imported ({type(e).__name__}: {e})"
    if "attn_mask" not in inspect.signature(Block.forward).parameters:
        need = ".".join(map(str, TIMM_MIN))
        return False, f"timm {timm.__version__} is too old: its ViT blocks take no attn_mask= (needs >= {need})"
    return True, f"timm {timm.__version__} (ViT blocks take attn_mask=)"


def build_variants(model_name: str, weights: str, device: str, images: int = 64, vocab_size: int = 1000,
                   image_size: int = 256) -> tuple[dict[str, torch.nn.Module], torch.Tensor]:
    """The torch variants side by side and their inputs: FP32 baseline, VWT intra (keep half), VWT inter (a
    vocabulary learned on half of the images, threshold 0.1), on built-in synthetic scenes."""
    import numpy as np

    import vwt_export as vx
    from vwt_export.demo import draw_scene
    from vwt_export.models import transform

    model = vx.load_model(model_name, weights=weights, device=device)
    rng = np.random.default_rng(0)
    tf = transform(model)
    pixels = torch.stack([tf(draw_scene(rng, image_size)) for _ in range(images)]).to(device)
    calib = images // 2
    vocab = vx.learn_vocabulary(model, [pixels[:calib].cpu()], size=vocab_size, progress=False)
    variants = {"baseline": vx.compress(model, "none"), "vwt-intra": vx.compress(model, "intra", keep=0.5),
                "vwt-inter": vx.compress(model, "inter", vocab=vocab, threshold=0.1)}
    for v in variants.values():
        v.to(device)
    return variants, pixels[calib:]


def time_ms(fn, reps: int) -> list[float]:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    out = []
    for _ in range(reps):
        start.record()
        fn()
        end.record()
        end.synchronize()
        out.append(start.elapsed_time(end))
    return out


def run_measure(args) -> int:
    if not torch.cuda.is_available():
        print("error: no CUDA GPU visible to torch; run the measurements on the GPU machine")
        return 2
    figures: dict = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__}

    def write() -> None:
        if args.figures:
            Path(args.figures).write_text(json.dumps(figures, indent=1, default=str))

    usable, line = timm_status()
    figures["timm"] = line
    if not usable:
        print(f"torch-backend timings skipped: {line}; carry a newer timm wheel in .whl/ (README, GPU check)")
        write()
        return 3
    counter = NvmlCounter.open()
    torch.cuda.synchronize()  # the CUDA context exists; no kernel has run in this process
    if isinstance(counter, str):
        idle = None
        print(f"energy: not measured ({counter})")
        figures["energy"] = counter
    else:
        idle = measure_idle(counter, window_s=args.idle_s)
        print(describe_counter(idle))
        figures["idle"] = dataclasses.asdict(idle)
    write()
    with torch.no_grad():
        variants, pixels = build_variants(args.model, args.weights, DEVICE, images=args.images)
        print(f"{figures['device']}, torch {torch.__version__}, {args.model} ({args.weights} weights), synthetic "
              f"scenes; latency: median of {args.rounds} x {args.reps} interleaved CUDA-event timings; energy: NVML "
              f"counter over >= {args.window_s:g} s per row, net = gross - idle W x time, shown only above its noise")
        print("| variant | batch | tokens | ms / batch | vs baseline | J / image gross | J / image net | "
              "net vs baseline | mean W |")
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        rows = []
        for batch in (1, 32):
            x = pixels[:batch]
            calls = {n: (lambda v=v: v(x)) for n, v in variants.items()}
            for f in calls.values():
                f()
                f()  # warm up
            torch.cuda.synchronize()
            samples = {n: [] for n in variants}
            for _ in range(args.rounds):  # interleaved, so that clock and thermal drift hit every variant alike
                for n, f in calls.items():
                    samples[n] += time_ms(f, args.reps)
            base = None
            for n, f in calls.items():  # the baseline first
                f()
                tokens = float(variants[n].last_token_counts.float().mean())
                e = None
                if idle is not None and idle.ok:
                    e = measure_energy(counter, f, batch, idle, window_s=args.window_s, sync=torch.cuda.synchronize)
                row = {"variant": n, "batch": batch, "tokens": tokens, "ms_median": statistics.median(samples[n]),
                       "ms_p10": _quantile(samples[n], 0.1), "ms_p90": _quantile(samples[n], 0.9), "energy": e}
                base = base or row
                rows.append(row)
                figures["rows"] = [{**r, "energy": r["energy"].as_dict() if r["energy"] else None} for r in rows]
                write()
                gross, net, vs, watts = energy_cells(e, base["energy"])
                print(f"| {n} | {batch} | {tokens:.1f} | {row['ms_median']:.2f} | "
                      f"{row['ms_median'] / base['ms_median']:.2f}x | {gross} | {net} | {vs} | {watts} |", flush=True)
    return 0


def _quantile(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


# ---- versions and carried wheels -------------------------------------------------------------------------------

def _version(module: str) -> str:
    try:
        m = importlib.import_module(module)
    except Exception as e:
        return f"absent ({type(e).__name__})"
    return str(getattr(m, "__version__", "present"))


def run_versions(args) -> int:
    print(f"python {platform.python_version()} ({sys.executable})")
    cuda = f", CUDA {torch.version.cuda}" if torch.version.cuda else ""
    print(f"torch {torch.__version__}{cuda}, GPU visible: {torch.cuda.is_available()}")
    print(timm_status()[1])
    ort = _version("onnxruntime")
    try:
        import onnxruntime

        ort += f" (providers: {', '.join(onnxruntime.get_available_providers())})"
    except Exception:
        pass
    print(f"onnxruntime {ort}")
    for name, module in (("numpy", "numpy"), ("onnx", "onnx"), ("cupy", "cupy"), ("nvidia-ml-py", "pynvml")):
        print(f"{name} {_version(module)}")
    try:
        import vwt_export

        print(f"vwt_export {vwt_export.__version__} imports")
    except Exception as e:
        print(f"vwt_export does not import: {type(e).__name__}: {e}")
        return 1
    return 0


def wheel_name_version(path: Path) -> tuple[str, str]:
    name, version = path.name.split("-")[:2]
    return name.lower().replace("_", "-"), version


def needed_wheels(folder: Path, installed: Callable[[str], str | None], timm_ok: Callable[[], bool]
                  ) -> list[tuple[Path, str]]:
    """(wheel, why) for each carried wheel this machine needs: timm when its ViT blocks lack attn_mask=, any other
    package when it is absent. `installed(name)` is the installed version or None."""
    out = []
    for whl in sorted(folder.glob("*.whl")):
        name, version = wheel_name_version(whl)
        have = installed(name)
        if have is None:
            out.append((whl, f"{name} is not installed"))
        elif name == "timm" and not timm_ok():
            out.append((whl, f"timm {have} lacks attn_mask= on ViT blocks; using the carried timm {version}"))
    return out


def _installed(name: str) -> str | None:
    from importlib import metadata

    for n in (name, name.replace("-", "_")):
        try:
            return metadata.version(n)
        except metadata.PackageNotFoundError:
            pass
    return None


def run_wheels(args) -> int:
    folder = Path(args.folder)
    for whl, why in needed_wheels(folder, _installed, lambda: timm_status()[0]):
        print(f"carried wheel needed: {whl.name} ({why})", file=sys.stderr)
        print(whl)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    sub.add_parser("versions", help="what this machine has")
    w = sub.add_parser("wheels", help="the carried wheels this machine needs")
    w.add_argument("folder")
    m = sub.add_parser("measure", help="idle power, then torch-backend latency and energy per image")
    m.add_argument("--model", default="deit_s")
    m.add_argument("--weights", default="random")
    m.add_argument("--images", type=int, default=64, help="synthetic scenes: half learn the vocabulary, half are timed")
    m.add_argument("--idle-s", type=float, default=6.0)
    m.add_argument("--window-s", type=float, default=4.0, help="energy window per variant and batch")
    m.add_argument("--rounds", type=int, default=5)
    m.add_argument("--reps", type=int, default=20)
    m.add_argument("--figures", help="write every figure here (JSON)")
    k = sub.add_parser("kernels", help="the CUDA kernels against the torch reference")
    k.add_argument("--library", required=True, help="the kernels with their C interface (gpu_check.sh builds it)")
    k.add_argument("--subset", choices=("full", "quick", "tiny"), default="full")
    k.add_argument("--log", help="write one line per check here")
    k.add_argument("--show", type=int, default=15, help="mismatch lines printed at most (all go to --log)")
    c = sub.add_parser("canary", help="write past an output on purpose (run under memcheck only)")
    c.add_argument("--library", required=True)
    args = ap.parse_args(argv)
    run = {"versions": run_versions, "wheels": run_wheels, "measure": run_measure, "kernels": run_kernels,
           "canary": run_canary}
    return run[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
