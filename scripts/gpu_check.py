#!/usr/bin/env python3
"""Checks the CUDA kernels of vwt::TokenMerge (op version 2) against the reference, then measures latency and
energy on the GPU (see gpu_check.sh).

UNVERIFIED: written without a GPU in reach; it has not been run yet, and the figures it prints are the only
evidence. It exercises every CUDA path the ONNX Runtime CUDA op and the TensorRT plugin use:
  - "ort"  : phase 1, the length read back, phase 2 with M given (outputs [B, P+M, D]) -- the ONNX Runtime op;
  - "trt"  : phase 1 and 2 with M read on the device, outputs sized for the bound P+N, no host sync -- the plugin;
with keys giving M = N (all distinct) and M = 1 (one key), random keys anywhere in int64 (negative, huge), local
grouping (grid_w > 0), B in {1, 8}, float32 and float16, outputs poisoned with NaN (so an unwritten value shows),
large N (6084 and 16384 patches) and large D; then the ONNX Runtime CUDA EP on the op library where a GPU build
of onnxruntime is installed. `--kernels-only` stops there (what gpu_check.sh runs under compute-sanitizer).
"""

from __future__ import annotations

import argparse
import ctypes
import statistics
import sys

import numpy as np
import torch

import vwt_export as vx
from vwt_export.check import energy
from vwt_export.vwt.merge import token_merge


def load(path: str) -> ctypes.CDLL:
    lib = ctypes.CDLL(path)
    i64, p = ctypes.c_int64, ctypes.c_void_p
    lib.vwt_cuda_last_error.restype = ctypes.c_char_p
    lib.vwt_cuda_workspace_size.restype = ctypes.c_size_t
    lib.vwt_cuda_workspace_size.argtypes = [i64, i64]
    lib.vwt_cuda_token_merge_groups.argtypes = [p, i64, i64, i64, i64, p, p, p]
    lib.vwt_cuda_token_merge_rows.argtypes = [p, ctypes.c_int, i64, i64, i64, i64, i64, p, p, p, p]
    return lib


def call(lib, fn, *args) -> None:
    if getattr(lib, fn)(*args) != 0:
        raise RuntimeError(f"{fn}: {lib.vwt_cuda_last_error().decode()}")


def stream() -> int:
    return torch.cuda.current_stream().cuda_stream


def run_kernels(lib, tokens: torch.Tensor, keys: torch.Tensor, P: int, grid_w: int, path: str):
    """(merged, sizes, length) from the CUDA kernels on the device, the way `path` ("ort" or "trt") drives them."""
    B, N = keys.shape
    D = tokens.shape[2]
    half = int(tokens.dtype == torch.float16)
    ws = torch.empty(lib.vwt_cuda_workspace_size(B, N), dtype=torch.uint8, device="cuda")
    length = torch.full((1,), -7, dtype=torch.int64, device="cuda")
    tc, kc = tokens.cuda().contiguous(), keys.cuda().contiguous()
    call(lib, "vwt_cuda_token_merge_groups", kc.data_ptr(), B, N, P, grid_w, ws.data_ptr(), length.data_ptr(), stream())
    if path == "ort":
        L = int(length.item())  # the one host synchronisation of the ONNX Runtime op
        merged = torch.full((B, L, D), float("nan"), dtype=tokens.dtype, device="cuda")
        sizes = torch.full((B, L), float("nan"), device="cuda")
        call(lib, "vwt_cuda_token_merge_rows", tc.data_ptr(), half, B, N, P, D, L - P, ws.data_ptr(),
             merged.data_ptr(), sizes.data_ptr(), stream())
        torch.cuda.synchronize()
        return merged.cpu(), sizes.cpu(), L
    # TensorRT: buffers for the bound P+N, M on the device, the rows laid out with stride P+M
    merged = torch.full((B * (P + N) * D,), float("nan"), dtype=tokens.dtype, device="cuda")
    sizes = torch.full((B * (P + N),), float("nan"), device="cuda")
    call(lib, "vwt_cuda_token_merge_rows", tc.data_ptr(), half, B, N, P, D, -1, ws.data_ptr(), merged.data_ptr(),
         sizes.data_ptr(), stream())
    torch.cuda.synchronize()
    L = int(length.item())
    tail_untouched = bool(torch.isnan(merged[B * L * D:].float()).all() and torch.isnan(sizes[B * L:]).all())
    if not tail_untouched:
        raise RuntimeError("trt path wrote past B x length rows")
    return merged[: B * L * D].reshape(B, L, D).cpu(), sizes[: B * L].reshape(B, L).cpu(), L


def key_cases(g: torch.Generator, B: int, N: int) -> dict[str, torch.Tensor]:
    lo, hi = torch.iinfo(torch.int64).min, torch.iinfo(torch.int64).max
    extremes = torch.tensor([lo, -1, 0, 1, 2**53 + 1, hi])
    return {
        "M=N": torch.stack([torch.randperm(N, generator=g) * 7 - 2**40 for _ in range(B)]),
        "M=1": torch.full((B, N), -(2**61)),
        "random": torch.randint(-3, 4, (B, N), generator=g) * 2**50,
        "extremes": extremes[torch.randint(len(extremes), (B, N), generator=g)],
    }


def check_kernels(lib) -> list[str]:
    """Kernels vs reference; one line per case."""
    lines = []
    g = torch.Generator().manual_seed(0)
    shapes = [(1, 196, 384, 1, 14), (8, 196, 384, 1, 14), (8, 256, 64, 5, 16), (3, 16, 4, 0, 4), (2, 1, 8, 2, 1),
              (1, 78 * 78, 64, 1, 78), (2, 128 * 128, 16, 1, 128), (2, 196, 12288, 1, 14)]
    for B, N, D, P, gw in shapes:
        for name, keys in key_cases(g, B, N).items():
            for grid_w in (0, gw):
                for dtype in (torch.float32, torch.float16):
                    t = torch.randn(B, P + N, D, generator=g).to(dtype)
                    ref_m, ref_s = token_merge(t.float(), keys, P, grid_w)
                    for path in ("ort", "trt"):
                        merged, sizes, L = run_kernels(lib, t, keys, P, grid_w, path)
                        tol = 1e-5 if dtype == torch.float32 else 2e-3
                        ok = (L == ref_m.shape[1] and not torch.isnan(merged.float()).any()
                              and torch.allclose(merged.float(), ref_m, atol=tol, rtol=tol) and torch.equal(sizes, ref_s))
                        lines.append(f"B={B} N={N:5d} D={D:5d} P={P} grid_w={grid_w:3d} {name:8s} {str(dtype)[6:]:7s} "
                                     f"{path}: length {L} (ref {ref_m.shape[1]}), {'OK' if ok else 'MISMATCH'}")
    # B = 0: only the length (P), nothing else to write
    merged, sizes, L = run_kernels(lib, torch.zeros(0, 3, 4), torch.zeros(0, 2, dtype=torch.int64), 1, 0, "ort")
    lines.append(f"B=0: length {L} (ref 1), {'OK' if L == 1 and merged.shape == (0, 1, 4) else 'MISMATCH'}")
    return lines


def check_ort_cuda(library: str | None) -> list[str]:
    """The op library's CUDA EP kernel through ONNX Runtime, where a GPU build of onnxruntime is installed."""
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return ["ONNX Runtime CUDA EP: skipped (this onnxruntime has no CUDAExecutionProvider; pip install onnxruntime-gpu)"]
    from vwt_export.backends.onnxruntime import create_session
    from vwt_export.graph import ops

    lines = []
    g = torch.Generator().manual_seed(1)
    for B, N, D, P, gw in [(1, 196, 384, 1, 14), (8, 196, 384, 1, 14)]:
        for name, keys in key_cases(g, B, N).items():
            for grid_w in (0, gw):
                s = create_session(ops.single_op_model(ops.TOKEN_MERGE, num_prefix=P, grid_w=grid_w),
                                   providers=["CUDAExecutionProvider"])
                t = torch.randn(B, P + N, D, generator=g)
                merged, sizes, length = s.run(None, {"tokens": t.numpy(), "keys": keys.numpy()})
                ref_m, ref_s = token_merge(t, keys, P, grid_w)
                ok = (int(length) == ref_m.shape[1] and np.allclose(merged, ref_m.numpy(), atol=1e-5, rtol=1e-5)
                      and np.array_equal(sizes, ref_s.numpy()))
                lines.append(f"ORT CUDA EP B={B} N={N} grid_w={grid_w} {name}: {'OK' if ok else 'MISMATCH'}")
    return lines


def time_ms(fn, x, reps=50) -> list[float]:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    out = []
    for _ in range(reps):
        start.record()
        fn(x)
        end.record()
        end.synchronize()
        out.append(start.elapsed_time(end))
    return out


@torch.no_grad()
def measure(model_name: str, weights: str) -> None:
    """Torch backend, side by side: FP32 baseline vs VWT intra and inter (TensorRT INT8 engines are measured by
    the pipeline's own checks with --backend trt on the GPU machine)."""
    model = vx.load_model(model_name, weights=weights, device="cuda")
    from vwt_export.demo import draw_scene  # real-looking inputs: the built-in synthetic scenes
    from vwt_export.models import transform

    rng = np.random.default_rng(0)
    tf = transform(model)
    pixels = torch.stack([tf(draw_scene(rng, 256)) for _ in range(64)]).cuda()
    vocab = vx.learn_vocabulary(model, [pixels[:32].cpu()], size=1000, progress=False)
    variants = {"baseline": vx.compress(model, "none"), "vwt-intra": vx.compress(model, "intra", keep=0.5),
                "vwt-inter": vx.compress(model, "inter", vocab=vocab, threshold=0.1)}
    for v in variants.values():
        v.to("cuda")
    rows = []
    for batch in (1, 32):
        x = pixels[32 : 32 + batch]
        for v in variants.values():
            v(x)  # warm up
        samples = {n: [] for n in variants}
        for _ in range(5):  # interleaved rounds
            for n, v in variants.items():
                samples[n] += time_ms(v, x, reps=20)
        for n, v in variants.items():
            v(x)
            tokens = float(v.last_token_counts.float().mean())
            e = energy.measure_gpu(lambda: v(x), batch, window_s=5.0, synchronize=torch.cuda.synchronize)
            rows.append((n, batch, statistics.median(samples[n]), tokens, e))
    base = {b: next(r[2] for r in rows if r[0] == "baseline" and r[1] == b) for b in (1, 32)}
    ebase = {b: next(r[4] for r in rows if r[0] == "baseline" and r[1] == b) for b in (1, 32)}
    print(f"\n{torch.cuda.get_device_name(0)}, torch {torch.__version__}, {model_name} ({weights} weights), "
          "synthetic scenes; latency = median of interleaved CUDA-event timings; energy = NVML counter over 5 s, "
          "idle draw subtracted")
    print("| variant | batch | tokens | ms / batch | vs baseline | J / image (net) | vs baseline | mean W |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for n, b, ms, tok, e in rows:
        if e.get("available") and ebase[b].get("available"):
            ej, er, wt = f"{e['j_per_image_net']:.4f}", f"{e['j_per_image_net'] / ebase[b]['j_per_image_net']:.2f}x", f"{e['mean_w']:.0f}"
        else:
            ej, er, wt = "n/a", "n/a", e.get("reason", "")[:40]
        print(f"| {n} | {b} | {tok:.1f} | {ms:.2f} | {ms / base[b]:.2f}x | {ej} | {er} | {wt} |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--library", required=True, help="the kernels with their C interface (gpu_check.sh builds it)")
    ap.add_argument("--model", default="deit_s")
    ap.add_argument("--weights", default="random")
    ap.add_argument("--kernels-only", action="store_true", help="check the kernels, skip ONNX Runtime and timing")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("error: no CUDA GPU visible; run this on the GPU machine")
    lib = load(args.library)
    lines = check_kernels(lib)
    if not args.kernels_only:
        lines += check_ort_cuda(args.library)
    print("CUDA kernels vs reference:")
    print("\n".join("  " + line for line in lines))
    bad = [line for line in lines if "MISMATCH" in line]
    if not args.kernels_only:
        measure(args.model, args.weights)
    if bad:
        sys.exit(f"error: {len(bad)} kernel checks failed")
    print(f"all {len(lines)} kernel checks passed")


if __name__ == "__main__":
    main()
