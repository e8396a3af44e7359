#!/usr/bin/env python3
"""Serving benchmark (issue 12): images/s and p50/p99 latency through a real Triton server, FP32 baseline vs VWT.

    python scripts/bench_serving.py [--model deit_s] [--workdir DIR] [--requests 96] [--concurrency 1,8,32]
                                    [--protocol grpc] [--max-queue-delay-us 2000]

Needs the serving packages (make setup installs them; elsewhere scripts/install_serving.sh). The graphs are those of scripts/bench_batch.py: --model
with random weights, a vocabulary learned on built-in scenes (seed 1), threshold 0.1, model.onnx, model.vwt.onnx
and its tokenize + trunk stages; built in --workdir, or reused when they are there (bench_batch.py's --workdir
serves). The repository is vwt_export.serving.write_repository's with its production defaults (max_batch_size 32,
preferred 8/16/32, --max-queue-delay-us), and the two Python-backend models are served: baseline_python (the one
graph) and vwt_python (length-aware batching through vwt_export.runtime).

Each client sends one image per request (the built-in scenes, seed 0, whose token counts spread like real photos),
the next as soon as the answer comes; `concurrency` clients run at once, so the server's dynamic batcher sees up to
that many requests waiting. For each model and concurrency, after a short warm-up, --requests requests are timed:
images/s = requests / wall seconds; p50/p99 = the request latency percentiles seen by the clients. The cells run
in one pass, interleaved model by model within each concurrency. The clients share the machine's cores with the
server: on a small machine they take a real share, the same for both models. The mean batch the server formed is
read from its statistics (images / executions).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import vwt_export as vx  # noqa: E402
from vwt_export.data import iter_image_batches, list_images  # noqa: E402
from vwt_export.demo import write_demo_images  # noqa: E402
from vwt_export.models import transform  # noqa: E402
from vwt_export.serving import ServingSettings, write_repository  # noqa: E402
from vwt_export.serving.server import TritonServer  # noqa: E402

MODELS = ("baseline_python", "vwt_python")


def pixels_of(model, folder: Path) -> np.ndarray:
    return np.concatenate([b.numpy() for b, _ in iter_image_batches(list_images(folder), transform(model), 16)])


def build(args, work: Path) -> None:
    """model.onnx, model.vwt.onnx and its two stages, written once into `work` by vx.export (reused when there)."""
    if all((work / n).exists() for n in ("model.onnx", "model.vwt.onnx", "model.vwt.tokenize.onnx")):
        print(f"reusing the graphs in {work}", flush=True)
        return
    print("learning the vocabulary and exporting (vx.export) ...", flush=True)
    calib = work / "calib"
    if not calib.is_dir():
        write_demo_images(calib, args.calib, seed=1)
    vx.export(args.model, weights="random", calib=calib, vocab_size=args.vocab_size, threshold=args.threshold,
              skip_checks=True, skip_int8=True, out=work, progress=False,
              command=" ".join(["scripts/bench_serving.py", *sys.argv[1:]]))


def run_clients(url: str, model: str, images: np.ndarray, concurrency: int, requests: int) -> tuple[float, list]:
    """`concurrency` gRPC clients sending one image per request until `requests` are answered."""
    import tritonclient.grpc as grpcclient

    lock, latencies, errors = threading.Lock(), [], []
    counter = iter(range(requests))

    def client() -> None:
        c = grpcclient.InferenceServerClient(url)
        try:
            while True:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                x = images[i % len(images)][None]
                inp = grpcclient.InferInput("pixels", list(x.shape), "FP32")
                inp.set_data_from_numpy(x)
                t0 = time.perf_counter()
                c.infer(model, [inp]).as_numpy("logits")
                dt = time.perf_counter() - t0
                with lock:
                    latencies.append(dt)
        except Exception as e:  # reported, not hidden
            errors.append(e)
        finally:
            c.close()

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise RuntimeError(f"{model}: {len(errors)} clients failed, first: {errors[0]}")
    return wall, latencies


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="deit_s")
    ap.add_argument("--images", type=int, default=64, help="scenes sent (seed 0)")
    ap.add_argument("--calib", type=int, default=64, help="scenes for the vocabulary (seed 1)")
    ap.add_argument("--vocab-size", type=int, default=1000)
    ap.add_argument("--threshold", type=float, default=0.1)
    ap.add_argument("--requests", type=int, default=96, help="timed requests per model and concurrency")
    ap.add_argument("--warmup", type=int, default=8, help="untimed requests per model and concurrency first")
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument("--max-queue-delay-us", type=int, default=2000)
    ap.add_argument("--workdir", type=Path, default=None, help="build (or reuse) the graphs here")
    args = ap.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]

    tmp = None if args.workdir else tempfile.TemporaryDirectory(prefix="bench-serving-")
    work = args.workdir or Path(tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    model = vx.load_model(args.model, weights="random")
    build(args, work)
    scenes = work / "scenes"
    if not scenes.is_dir() or len(list_images(scenes)) < args.images:
        write_demo_images(scenes, args.images, seed=0)
    images = pixels_of(model, scenes)[: args.images]
    settings = ServingSettings(max_queue_delay_us=args.max_queue_delay_us)
    repo = write_repository(work, files=[work / n for n in ("model.onnx", "model.vwt.onnx", "model.vwt.tokenize.onnx",
                                                            "model.vwt.trunk.onnx")],
                            settings=settings, triton_dir=work / "triton")

    rows = {}
    with TritonServer(repo, models=list(MODELS)) as server:
        print(f"tritonserver ready at {server.grpc_url} (gRPC); {args.model}, {len(images)} scenes, "
              f"{args.requests} requests per cell", flush=True)
        for c in levels:
            for name in MODELS:
                run_clients(server.grpc_url, name, images, c, args.warmup)
                before = server.statistics(name)
                wall, lat = run_clients(server.grpc_url, name, images, c, args.requests)
                after = server.statistics(name)
                execs = after["execution_count"] - before["execution_count"]
                rows[name, c] = (args.requests / wall, np.percentile(lat, 50) * 1e3, np.percentile(lat, 99) * 1e3,
                                 (after["inference_count"] - before["inference_count"]) / max(execs, 1))
                print(f"  {name} x{c}: {rows[name, c][0]:.1f} images/s", flush=True)

    print()
    print("| model | clients | images/s | p50 ms | p99 ms | mean batch formed | vs baseline |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for c in levels:
        for name in MODELS:
            ips, p50, p99, batch = rows[name, c]
            ratio = ips / rows["baseline_python", c][0]
            print(f"| {name} | {c} | {ips:.1f} | {p50:.1f} | {p99:.1f} | {batch:.1f} | {ratio:.2f}x |")


if __name__ == "__main__":
    main()
