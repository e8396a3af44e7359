"""Latency: every variant timed in the same run, interleaved so that drift (thermal, other load) hits all alike."""

from __future__ import annotations

import time
from typing import Callable, Collection, Mapping, Sequence

import numpy as np


def percentiles(samples_s: list[float]) -> dict[str, float]:
    ms = np.asarray(samples_s) * 1e3
    return {"p50_ms": float(np.percentile(ms, 50)), "p90_ms": float(np.percentile(ms, 90)),
            "p99_ms": float(np.percentile(ms, 99)), "mean_ms": float(ms.mean()), "min_ms": float(ms.min()),
            "runs": int(len(ms))}


def rotated(names: list[str], k: int) -> list[str]:
    """The run order for round k: each variant goes first, second, ... equally often, so that neither cache
    state nor clock drift favours one."""
    if not names:
        return names
    k %= len(names)
    return names[k:] + names[:k]


def measure(runners: dict[str, Callable[[np.ndarray], object]],
            inputs: Mapping[int, np.ndarray | Sequence[np.ndarray]], warmup: int = 3, reps: int = 20,
            progress: Callable[[int], None] | None = None,
            only: Mapping[str, Collection[int]] | None = None) -> dict[str, dict[int, dict[str, float]]]:
    """{variant: {batch: percentiles + throughput}} for each runner and each batch size.

    `inputs[batch]` is one array, or several (e.g. one image each at batch 1: a compressed variant's latency
    depends on the image), each run once per repetition and each a sample. One repetition runs every (batch,
    input, variant) once, in a rotating order; `warmup` repetitions are discarded. `only[name]`, where given,
    limits a runner to those batch sizes.
    """
    names = list(runners)
    feeds = {b: [x] if isinstance(x, np.ndarray) else list(x) for b, x in inputs.items()}
    timed = {b: [n for n in names if only is None or n not in only or b in only[n]] for b in feeds}
    samples: dict[tuple[str, int], list[float]] = {(n, b): [] for b in feeds for n in timed[b]}
    for rep in range(warmup + reps):
        for b, xs in feeds.items():
            for i, x in enumerate(xs):
                for name in rotated(timed[b], rep + i):
                    t0 = time.perf_counter()
                    runners[name](x)
                    dt = time.perf_counter() - t0
                    if rep >= warmup:
                        samples[name, b].append(dt)
        if progress:
            progress(1)
    out: dict[str, dict[int, dict[str, float]]] = {n: {} for n in names}
    for (name, b), s in samples.items():
        stats = percentiles(s)
        stats["images_per_s"] = b / (stats["p50_ms"] / 1e3)
        out[name][b] = stats
    return out


def per_image_ms(runners: dict[str, Callable[[np.ndarray], object]], images: np.ndarray, reps: int, warmup: int = 2,
                 progress: Callable[[int], None] | None = None) -> dict[str, float]:
    """{variant: p50 ms per image at batch 1}: each runner over `images` one at a time (per-image token counts
    differ), every runner in the same interleaved run."""
    loops = {name: (lambda _x, f=f: [f(images[i : i + 1]) for i in range(len(images))]) for name, f in runners.items()}
    timing = measure(loops, {1: images[:1]}, warmup=warmup, reps=reps, progress=progress)
    return {name: t[1]["p50_ms"] / len(images) for name, t in timing.items()}
