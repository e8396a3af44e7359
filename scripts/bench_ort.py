#!/usr/bin/env python3
"""ONNX Runtime CPU benchmark of the vwt ops (version 2), every figure measured side by side in one run.

    python scripts/bench_ort.py [--model deit_s] [--weights random] [--images DIR] [--reps 20]

Part 1, batch 1, the overhead of matching and merging when nothing merges (threshold 0: every token kept):
  baseline   model.onnx
  vwt        model.vwt.onnx with a --vocab-size word vocabulary: patch features, the similarity GEMM, ArgMax,
             TokenMerge (which keeps every token), the attention bias; the trunk is the baseline's.
  Timed interleaved in wall clock, and in kernel time (ONNX Runtime's profiler) with the vwt/ nodes' share.
  Target (issue 9): at most 3% of the baseline.
Part 2, TokenMerge alone at batch 32 on the scenes' real tokens and keys (threshold 0.1): the custom op vs its
  portable standard-op body, kernel time. Target: the custom op at least 5x faster.

Default inputs are the built-in synthetic scenes; pass --images for real ones.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import vwt_export as vx  # noqa: E402
from vwt_export.backends.onnxruntime import create_session, kernel_times  # noqa: E402
from vwt_export.check.latency import rotated  # noqa: E402
from vwt_export.data import iter_image_batches, list_images  # noqa: E402
from vwt_export.demo import write_demo_images  # noqa: E402
from vwt_export.graph import ops  # noqa: E402
from vwt_export.graph.export import export_model  # noqa: E402
from vwt_export.graph.surgery import apply_vwt  # noqa: E402
from vwt_export.models import embed_tokens, patch_tokens, transform  # noqa: E402


def per_input_median(runs: list[float], inputs: int) -> float:
    """Runs made as rounds over `inputs` inputs -> the mean over inputs of each input's median over rounds."""
    return statistics.fmean(statistics.median(runs[i::inputs]) for i in range(inputs))


def kernel_time_ms(model, feeds: dict, reps: int) -> float:
    """Median kernel time of one graph on one input, after 3 warm-up runs."""
    session = create_session(model, profile=True)
    for _ in range(3 + reps):
        session.run(None, feeds)
    return statistics.median(sum(run.values()) for run in kernel_times(session)[3:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="deit_s")
    ap.add_argument("--weights", default="random")
    ap.add_argument("--images", type=Path, default=None)
    ap.add_argument("--vocab-size", type=int, default=1000)
    ap.add_argument("--count", type=int, default=16, help="images timed at batch 1")
    ap.add_argument("--reps", type=int, default=20)
    args = ap.parse_args()

    folder = args.images or write_demo_images(Path(tempfile.mkdtemp(prefix="vwt-bench-")) / "scenes", count=32)
    model = vx.load_model(args.model, weights=args.weights)
    pixels = torch.cat([b for b, _ in iter_image_batches(list_images(folder)[:32], transform(model), 32)])
    vocab = vx.learn_vocabulary(model, folder, size=args.vocab_size, progress=False)
    base = export_model(model)
    kept = apply_vwt(base, "inter", vocab=vocab.words.numpy(), threshold=0.0, pooling=model.global_pool)
    x = pixels.numpy()
    n_img = min(args.count, len(x))

    # ---- part 1: batch 1, nothing merges, interleaved ------------------------------------------------------
    graphs = {"baseline": base, "vwt": kept}
    sessions = {name: create_session(g) for name, g in graphs.items()}
    with torch.no_grad():
        cm = vx.compress(model, "inter", vocab=vocab, threshold=0.0)
        cm(pixels[:n_img])
    all_kept = bool((cm.last_token_counts == cm.tokens_in).all())
    for i in range(3):
        for s in sessions.values():
            s.run(None, {"pixels": x[i : i + 1]})
    wall = {name: [[] for _ in range(n_img)] for name in graphs}
    for rep in range(args.reps):
        for i in range(n_img):
            for name in rotated(list(graphs), rep + i):
                t = time.perf_counter()
                sessions[name].run(None, {"pixels": x[i : i + 1]})
                wall[name][i].append(time.perf_counter() - t)
    wall_ms = {name: statistics.fmean(statistics.median(t) for t in per) * 1e3 for name, per in wall.items()}
    paired = statistics.median(statistics.median(v / b for v, b in zip(wall["vwt"][i], wall["baseline"][i]))
                               for i in range(n_img))

    profiled = {name: create_session(g, profile=True) for name, g in graphs.items()}
    k_img = min(8, n_img)
    rounds = max(5, args.reps // 2)
    for rep in range(1 + rounds):  # the first round warms up
        for i in range(k_img):
            for name in rotated(list(profiled), rep + i):
                profiled[name].run(None, {"pixels": x[i : i + 1]})
    by_node = {name: kernel_times(s, by="node")[k_img:] for name, s in profiled.items()}
    kernel = {name: per_input_median([sum(r.values()) for r in runs], k_img) for name, runs in by_node.items()}
    ours = per_input_median([sum(t for n, t in r.items() if n.startswith(ops.NODE_PREFIX)) for r in by_node["vwt"]],
                            k_img)

    # ---- part 2: TokenMerge at batch 32 ---------------------------------------------------------------------
    b32 = torch.from_numpy(np.concatenate([x] * (32 // len(x) + 1))[:32])
    with torch.no_grad():
        tokens = embed_tokens(model, patch_tokens(model, b32)).numpy()
        cm = vx.compress(model, "inter", vocab=vocab, threshold=0.1)
        keys = cm.match(b32).numpy()
    feeds = {"tokens": tokens, "keys": keys}
    attrs = {"num_prefix": model.num_prefix_tokens}
    merge_ms = {form: kernel_time_ms(ops.single_op_model(ops.TOKEN_MERGE, portable=form == "portable", **attrs),
                                     feeds, args.reps) for form in ("custom", "portable")}
    groups = [len(np.unique(k)) for k in keys]

    # ---- report ---------------------------------------------------------------------------------------------
    import onnxruntime as ort

    print(f"ONNX Runtime {ort.__version__} CPU, {args.model} ({args.weights} weights), {n_img} images from "
          f"{args.images or 'built-in synthetic scenes'}, vocabulary {vocab.size} words, {args.reps} interleaved "
          "repetitions, medians")
    print(f"\npart 1: batch 1, threshold 0 (every token kept: {all_kept})")
    print("| batch 1 | wall ms / image | vs baseline | kernel ms / image | vs baseline |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name in graphs:
        print(f"| {name} | {wall_ms[name]:.2f} | {wall_ms[name] / wall_ms['baseline']:.3f}x | {kernel[name]:.2f} "
              f"| {kernel[name] / kernel['baseline']:.3f}x |")
    print(f"\noverhead of matching + merging when nothing merges: wall clock {paired - 1:+.1%} (median over images of "
          f"the paired ratio), kernel time {kernel['vwt'] / kernel['baseline'] - 1:+.1%}; the vwt/ nodes alone "
          f"{ours:.2f} ms = {ours / kernel['baseline']:.1%} of the baseline (target: at most 3%)")
    print(f"\npart 2: TokenMerge at batch 32, threshold 0.1 ({min(groups)}-{max(groups)} groups of "
          f"{keys.shape[1]} patches per image), kernel time")
    print("| batch 32 | custom ms | portable ms | portable / custom |")
    print("| --- | ---: | ---: | ---: |")
    c, p = merge_ms["custom"], merge_ms["portable"]
    print(f"| TokenMerge | {c:.2f} | {p:.2f} | {p / c:.1f}x |")
    print(f"\nTokenMerge: custom op {p / c:.1f}x faster than the portable form (target: at least 5x)")


if __name__ == "__main__":
    main()
