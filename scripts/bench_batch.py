#!/usr/bin/env python3
"""Length-aware batching benchmark (issue 10): images/s per batch size, every variant interleaved in one run.

    python scripts/bench_batch.py [--model deit_s] [--images 64] [--reps 5] [--batches 1,8,32] [--workdir DIR]
                                  [--no-spin] [--threads N] [--call-overhead TOKENS]

Variants (ONNX Runtime, CPU, the same session settings for all: threads, and with --no-spin no spinning threads; the
tokenize stages never spin, as runtime.ort_stages makes them):
  fp32              model.onnx, the uncompressed baseline
  int8              model.int8.onnx (Q/DQ)
  vwt padded        model.vwt.onnx, one graph: every image padded to the batch's longest
  vwt length-aware  runtime.load(model.vwt.tokenize.onnx): tokenize, sub-batches of similar length, trunk
  vwt+int8 l-a      the same with model.vwt.int8.tokenize.onnx / model.vwt.int8.trunk.onnx
  ideal             model.vwt.trunk.onnx alone on a [B, mean count of the batch, D] tensor: what the trunk would
                    cost if every image of the batch had the mean length (no tokenize, no padding)
  ideal+tokenize    the tokenize stage on the batch, then the ideal: the best a two-stage runner could do

Inputs: the built-in scenes (vwt_export.demo, seed 0), --model with random weights, a vocabulary learned on a
disjoint set of scenes (seed 1), threshold 0.1. Each repetition runs each batch size once per variant in a
rotating order (vwt_export.check.latency.rotated), on the next `batch` images of the set, so every variant sees the
same images. images/s = images run / seconds spent, over the timed repetitions.

Printed: the token distribution of the scenes, the table, the issue's ratios (length-aware / fp32 at batch 8,
target >= 1.3x; length-aware / ideal at batch 8, target >= 85%; length-aware / padded at batch 1, target >= ~1),
the trunk cost fit behind runtime.CALL_OVERHEAD_TOKENS, and the largest difference between length-aware and
per-image logits. Graphs are built in --workdir (a temporary folder by default; pass one to reuse the graphs).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import vwt_export as vx  # noqa: E402
from vwt_export import runtime  # noqa: E402
from vwt_export.check.latency import rotated  # noqa: E402
from vwt_export.data import iter_image_batches, list_images  # noqa: E402
from vwt_export.demo import write_demo_images  # noqa: E402
from vwt_export.models import transform  # noqa: E402


def pixels_of(model, folder: Path) -> np.ndarray:
    return np.concatenate([b.numpy() for b, _ in iter_image_batches(list_images(folder), transform(model), 16)])


def build(args, work: Path) -> dict[str, Path]:
    """The graphs, written once into `work` by vx.export (reused when already there): the vocabulary and the INT8
    ranges come from the calibration scenes."""
    files = {k: work / k for k in ("model.onnx", "model.int8.onnx", "model.vwt.onnx", "model.vwt.int8.onnx")}
    if not all(p.exists() for p in files.values()):
        print("learning the vocabulary, exporting, quantizing (vx.export) ...", flush=True)
        vx.export(args.model, weights="random", calib=work / "calib", vocab_size=args.vocab_size,
                  threshold=args.threshold, skip_checks=True, out=work, progress=False,
                  command=" ".join(["scripts/bench_batch.py", *sys.argv[1:]]))
    return files


def fit_overhead(trunk, dim: int, full: int, reps: int) -> tuple[float, float]:
    """Least-squares fit (relative errors) of trunk seconds = a + b * images * tokens over B in {1, 8} and
    T in {2, full/4, full/2, full} (the fastest of `reps` runs of each, against other load; T = 2 pins down a);
    returns (a / b in image-tokens, b in microseconds per image-token): runtime.CALL_OVERHEAD_TOKENS is a / b."""
    cells = [(b, t) for b in (1, 8) for t in (2, max(full // 4, 3), full // 2, full)]
    best = {c: np.inf for c in cells}
    for _ in range(reps):
        for b, t in cells:
            x, s = np.random.randn(b, t, dim).astype(np.float32), np.ones((b, t), np.float32)
            t0 = time.perf_counter()
            trunk(x, s)
            best[b, t] = min(best[b, t], time.perf_counter() - t0)
    times = np.array([best[c] for c in cells])
    rows = np.array([[1.0, b * t] for b, t in cells]) / times[:, None]  # relative errors: small calls count too
    (a, slope), *_ = np.linalg.lstsq(rows, np.ones(len(cells)), rcond=None)
    return a / slope, slope * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="deit_s")
    ap.add_argument("--images", type=int, default=64, help="scenes to run (seed 0)")
    ap.add_argument("--calib", type=int, default=64, help="scenes for the vocabulary and INT8 calibration (seed 1)")
    ap.add_argument("--vocab-size", type=int, default=1000)
    ap.add_argument("--threshold", type=float, default=0.1)
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads (default: its own)")
    ap.add_argument("--call-overhead", type=float, default=runtime.CALL_OVERHEAD_TOKENS,
                    help="the cost model's per-call overhead in image-tokens (runtime.plan_batches)")
    ap.add_argument("--no-spin", action="store_true",
                    help="every session's idle threads sleep (allow_spinning=0), for a machine shared with other work")
    ap.add_argument("--workdir", type=Path, default=None, help="build (or reuse) the graphs here")
    args = ap.parse_args()
    batches = [int(b) for b in args.batches.split(",")]

    tmp = None if args.workdir else tempfile.TemporaryDirectory(prefix="bench-batch-")
    work = args.workdir or Path(tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    model = vx.load_model(args.model, weights="random")
    images = pixels_of(model, write_demo_images(work / "scenes", args.images, seed=0))
    calib = pixels_of(model, write_demo_images(work / "calib", args.calib, seed=1))
    files = build(args, work)

    th, spin = args.threads, not args.no_spin
    tok, trunk = runtime.ort_stages(work / "model.vwt.tokenize.onnx", threads=th, spinning=spin)
    tok8, trunk8 = runtime.ort_stages(work / "model.vwt.int8.tokenize.onnx", threads=th, spinning=spin)

    def one_graph(path: Path):  # as runtime.load(path), with the same session settings as the stages
        session = runtime.stage_session(path, threads=th, spinning=spin)
        name = session.get_inputs()[0].name
        return lambda x: session.run(None, {name: x})[0]

    counts = np.concatenate([tok(images[i : i + 16])[2] for i in range(0, len(images), 16)])
    dim = tok(images[:1])[0].shape[2]
    full = model.patch_embed.num_patches + model.num_prefix_tokens

    # the ideals get sessions of their own: a variant sharing a session (its threads, its weights in the cache) with
    # the one timed just before it would be favoured
    ideal_stages = [runtime.ort_stages(work / "model.vwt.tokenize.onnx", threads=th, spinning=spin) for _ in range(2)]

    def ideal(x: np.ndarray, at: int, tokenize: bool) -> np.ndarray:  # at: where x starts in `images`
        b = len(x)
        mean = int(round(float(counts[at : at + b].mean())))
        tokenize_stage, trunk_stage = ideal_stages[tokenize]
        if tokenize:
            tokenize_stage(x)
        return trunk_stage(ideal_tokens[b][mean], np.ones((b, mean), np.float32))

    rng = np.random.default_rng(0)  # the ideal's inputs, made before timing (the batches start at multiples of b)
    ideal_tokens = {b: {} for b in batches}
    for b in batches:
        for a in range(0, len(images) - b + 1, b):
            mean = int(round(float(counts[a : a + b].mean())))
            ideal_tokens[b][mean] = rng.standard_normal((b, mean, dim)).astype(np.float32)
    runners = {
        "fp32": one_graph(files["model.onnx"]),
        "int8": one_graph(files["model.int8.onnx"]),
        "vwt padded": one_graph(files["model.vwt.onnx"]),
        "vwt length-aware": runtime.length_aware(tok, trunk, args.call_overhead),
        "vwt+int8 l-a": runtime.length_aware(tok8, trunk8, args.call_overhead),
        "ideal": None,  # these two need the batch's position: called below
        "ideal+tokenize": None,
    }
    names = list(runners)

    print(f"\n{args.model} (random weights), {len(images)} scenes, vocabulary of {args.vocab_size} learned on "
          f"{len(calib)} other scenes, threshold {args.threshold}")
    q = np.percentile(counts, [0, 10, 50, 90, 100])
    print(f"tokens kept of {full}: min {q[0]:.0f}, p10 {q[1]:.0f}, median {q[2]:.0f}, mean {counts.mean():.1f}, "
          f"p90 {q[3]:.0f}, max {q[4]:.0f} ({counts.min() / full:.0%} to {counts.max() / full:.0%}, "
          f"mean {counts.mean() / full:.0%})")
    for b in batches:  # noise-free: the trunk work each variant plans, in image-tokens, relative to the ideal
        starts = range(0, len(images) - b + 1, b)
        ideal_work = sum(counts[a : a + b].sum() for a in starts)
        padded_work = sum(b * counts[a : a + b].max() for a in starts)
        plans = [runtime.plan_batches(counts[a : a + b], args.call_overhead) for a in starts]
        la_work = sum(len(g) * counts[a : a + b][g].max() for a, plan in zip(starts, plans) for g in plan)
        print(f"batch {b:>2}: trunk work / ideal: padded {padded_work / ideal_work:.2f}x, length-aware "
              f"{la_work / ideal_work:.2f}x in {np.mean([len(p) for p in plans]):.2f} trunk calls per batch")
    b8 = min(8, len(images))
    la = runners["vwt length-aware"](images[:b8])
    alone = np.concatenate([runners["vwt padded"](images[i : i + 1]) for i in range(b8)])
    plan = [len(g) for g in runners["vwt length-aware"].plan(images[:b8])]
    print(f"length-aware vs per-image logits (batch {b8}): max abs diff {np.abs(la - alone).max():.1e} "
          f"(|logits| max {np.abs(alone).max():.2f}); sub-batches {plan}")

    spent = {(n, b): 0.0 for n in names for b in batches}
    done = {(n, b): 0 for n in names for b in batches}
    cursor = {b: 0 for b in batches}
    print(f"timing: {args.warmup} warm-up + {args.reps} repetitions ...", flush=True)
    for rep in range(args.warmup + args.reps):
        for b in batches:
            at = cursor[b] if cursor[b] + b <= len(images) else 0
            cursor[b] = at + b
            x = np.ascontiguousarray(images[at : at + b])
            for name in rotated(names, rep):
                t0 = time.perf_counter()
                if name.startswith("ideal"):
                    ideal(x, at, tokenize=name == "ideal+tokenize")
                else:
                    runners[name](x)
                dt = time.perf_counter() - t0
                if rep >= args.warmup:
                    spent[name, b] += dt
                    done[name, b] += b

    ips = {k: done[k] / spent[k] for k in spent}
    print(f"\nimages/s (ONNX Runtime CPU, threads={th or 'default'}, spinning={'off' if args.no_spin else 'on'} "
          f"(tokenize: off), call_overhead={args.call_overhead:g} tokens)")
    print(f"{'variant':<18}" + "".join(f"{'batch ' + str(b):>12}" for b in batches))
    for n in names:
        print(f"{n:<18}" + "".join(f"{ips[n, b]:>12.1f}" for b in batches))
    print()
    for b in batches:
        print(f"batch {b:>2}: length-aware / fp32 {ips['vwt length-aware', b] / ips['fp32', b]:.2f}x, "
              f"/ padded {ips['vwt length-aware', b] / ips['vwt padded', b]:.2f}x, "
              f"/ ideal {ips['vwt length-aware', b] / ips['ideal', b]:.0%}, "
              f"/ ideal+tokenize {ips['vwt length-aware', b] / ips['ideal+tokenize', b]:.0%}; "
              f"vwt+int8 l-a / fp32 {ips['vwt+int8 l-a', b] / ips['fp32', b]:.2f}x")
    if 8 in batches:
        r_fp32 = ips["vwt length-aware", 8] / ips["fp32", 8]
        r_ideal = ips["vwt length-aware", 8] / ips["ideal", 8]
        print(f"done-when, batch 8: length-aware / fp32 = {r_fp32:.3f}x (target >= 1.3x: "
              f"{'met' if r_fp32 >= 1.3 else 'missed'}), length-aware / ideal = {r_ideal:.1%} (target >= 85%: "
              f"{'met' if r_ideal >= 0.85 else 'missed'}); / ideal+tokenize = "
              f"{ips['vwt length-aware', 8] / ips['ideal+tokenize', 8]:.0%}")
    if 1 in batches:
        r1 = ips["vwt length-aware", 1] / ips["vwt padded", 1]
        print(f"batch 1: length-aware / one-graph model.vwt.onnx = {r1:.2f}x (target: no slower, ~1.00x)")
    overhead, per_token = fit_overhead(trunk, dim, full, reps=3)
    print(f"trunk cost fit: {per_token:.1f} us per image-token, per-call overhead = {overhead:.0f} image-tokens "
          f"(runtime.CALL_OVERHEAD_TOKENS = {runtime.CALL_OVERHEAD_TOKENS:g})")
    if tmp:
        tmp.cleanup()


if __name__ == "__main__":
    main()
