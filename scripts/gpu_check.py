#!/usr/bin/env python3
"""Checks the CUDA kernels against the reference, then measures latency and energy on the GPU (see gpu_check.sh).

Written without a GPU in reach: it has not been run yet, and the figures it prints are the only evidence.
"""

from __future__ import annotations

import argparse
import ctypes
import statistics
import sys

import torch
import torch.nn.functional as F

import vwt_export as vx
from vwt_export.check import energy
from vwt_export.vwt.inter import normalized_words, word_labels
from vwt_export.vwt.merge import token_merge


def load(path: str) -> ctypes.CDLL:
    lib = ctypes.CDLL(path)
    i64, f32, p = ctypes.c_int64, ctypes.c_float, ctypes.c_void_p
    lib.vwt_cuda_last_error.restype = ctypes.c_char_p
    lib.vwt_cuda_word_labels.argtypes = [p, p, i64, i64, i64, i64, f32, p, p]
    lib.vwt_cuda_token_merge.argtypes = [p, ctypes.c_int, p, i64, i64, i64, i64, i64, p, p, p]
    lib.vwt_cuda_token_merge_dds.argtypes = [p, ctypes.c_int, p, i64, i64, i64, i64, p, p, p, p]
    return lib


def call(lib, fn, *args) -> None:
    if getattr(lib, fn)(*args) != 0:
        raise RuntimeError(f"{fn}: {lib.vwt_cuda_last_error().decode()}")


def stream() -> int:
    return torch.cuda.current_stream().cuda_stream


def check_kernels(lib) -> list[str]:
    """Kernels vs reference; returns one line per case. Outputs are poisoned first so unwritten values show."""
    lines = []
    g = torch.Generator(device="cpu").manual_seed(0)
    cases = [(1, 196, 768, 1000, 384, 1, 0.1), (32, 196, 768, 1000, 384, 1, 0.1), (8, 256, 588, 500, 384, 5, 0.2),
             (3, 16, 8, 5, 4, 0, 0.3), (2, 1, 768, 10, 64, 2, 2.0)]
    for B, N, Fd, V, D, P, thr in cases:
        w = torch.randn(V, Fd, generator=g)
        f = w[torch.randint(V, (B, N), generator=g)] + 0.3 * torch.randn(B, N, Fd, generator=g)
        ref_labels = word_labels(f, normalized_words(w), thr)
        labels = torch.full((B, N), -7, dtype=torch.int64, device="cuda")
        fc, wc = f.cuda().contiguous(), w.cuda().contiguous()
        call(lib, "vwt_cuda_word_labels", fc.data_ptr(), wc.data_ptr(), B, N, Fd, V, thr, labels.data_ptr(), stream())
        torch.cuda.synchronize()
        same = torch.equal(labels.cpu(), ref_labels)
        # labels may legitimately differ where a distance sits within float rounding of the threshold or a tie
        d = (1 - F.normalize(f, dim=-1) @ normalized_words(w).T).min(-1).values
        near = ((d - thr).abs() < 1e-5).sum().item()
        for dtype in (torch.float32, torch.float16):
            t = torch.randn(B, P + N, D, generator=g).to(dtype)
            ref_m, ref_s = token_merge(t.float(), ref_labels, P)
            M = ref_m.shape[1] - P
            for dds in (False, True):
                merged = torch.full((B, P + (N if dds else M), D), float("nan"), dtype=dtype, device="cuda")
                sizes = torch.full((B, P + (N if dds else M)), float("nan"), device="cuda")
                tc, lc = t.cuda().contiguous(), ref_labels.cuda().contiguous()
                if dds:
                    m = torch.full((1,), -1, dtype=torch.int64, device="cuda")
                    call(lib, "vwt_cuda_token_merge_dds", tc.data_ptr(), int(dtype == torch.float16), lc.data_ptr(),
                         B, N, P, D, m.data_ptr(), merged.data_ptr(), sizes.data_ptr(), stream())
                    torch.cuda.synchronize()
                    got_m = int(m.item())
                    flat = merged.reshape(-1)[: B * (P + got_m) * D].reshape(B, P + got_m, D)
                    flat_s = sizes.reshape(-1)[: B * (P + got_m)].reshape(B, P + got_m)
                else:
                    call(lib, "vwt_cuda_token_merge", tc.data_ptr(), int(dtype == torch.float16), lc.data_ptr(),
                         B, N, P, D, M, merged.data_ptr(), sizes.data_ptr(), stream())
                    torch.cuda.synchronize()
                    got_m, flat, flat_s = M, merged, sizes
                tol = 1e-5 if dtype == torch.float32 else 2e-3
                ok = (got_m == M and torch.allclose(flat.float().cpu(), ref_m, atol=tol, rtol=tol)
                      and torch.equal(flat_s.cpu(), ref_s))
                lines.append(f"B={B:2d} N={N:3d} F={Fd:3d} V={V:4d} D={D:3d} P={P} {str(dtype)[6:]:8s} "
                             f"{'dds ' if dds else 'sync'}: labels {'exact' if same else f'DIFFER ({near} near threshold)'}"
                             f", merge {'OK' if ok else 'MISMATCH'}")
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
    model = vx.load_model(model_name, weights=weights, device="cuda")
    import numpy as np

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
        if e.get("available"):
            ej, er, wt = f"{e['j_per_image_net']:.4f}", f"{e['j_per_image_net'] / ebase[b]['j_per_image_net']:.2f}x", f"{e['mean_w']:.0f}"
        else:
            ej, er, wt = "n/a", "n/a", e.get("reason", "")[:40]
        print(f"| {n} | {b} | {tok:.1f} | {ms:.2f} | {ms / base[b]:.2f}x | {ej} | {er} | {wt} |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--library", required=True)
    ap.add_argument("--model", default="deit_s")
    ap.add_argument("--weights", default="random")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("error: no CUDA GPU visible; run this on the GPU machine")
    lib = load(args.library)
    lines = check_kernels(lib)
    print("CUDA kernels vs reference:")
    print("\n".join("  " + line for line in lines))
    bad = [line for line in lines if "MISMATCH" in line]
    measure(args.model, args.weights)
    if bad:
        sys.exit(f"error: {len(bad)} kernel checks failed")


if __name__ == "__main__":
    main()
