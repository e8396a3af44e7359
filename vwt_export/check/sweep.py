"""The trade-off sweep: many compression settings measured on the same images, ranked, and plotted.

    --sweep threshold=0.05,0.1,0.2 --sweep grouping=global,local --sweep keep=0.5,0.75 --sweep r=8,16

Each key belongs to the methods that list it among their sweep keys (vwt_export.methods: threshold and grouping
to inter, every combination of the two; keep to intra; r to ToMe). Every setting becomes one graph (OUT/sweep/model.<setting>.onnx), verified against its
torch model, then measured with the run's own FP32 and INT8 graphs in one interleaved timing run: quality (top-1
accuracy with labels, else the cosine of the outputs to FP32's), tokens, batch-1 latency. The Pareto front is
the settings no other setting beats on both quality and latency.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from ..artefacts import Graph, Variant, find

log = logging.getLogger("vwt_export")



@dataclass(frozen=True)
class Row:
    """One setting measured (report.json's sweep.ranked)."""

    label: str
    method: str  # fp32, int8, or the setting's method's sweep group (vwt, intra, tome)
    file: str
    quality: float  # top-1 accuracy with labels, else the cosine of the outputs to FP32's
    tokens: float | None  # mean per image
    latency_ms: float  # p50 at batch 1
    pareto: bool = False


def file_name(label: str) -> str:
    """A setting's graph file: "vwt global t=0.05" -> model.vwt-global-t0.05.onnx."""
    return "model." + label.replace(" ", "-").replace("=", "") + ".onnx"


def run_sweep(run, graphs: list[Graph], vocab) -> dict:
    """--sweep: every setting exported, verified and measured with the run's FP32 and INT8 graphs on the same
    images, in one interleaved timing run; ranked, with the Pareto front, and plotted."""
    import onnx

    from .. import methods
    from ..graph.export import save_model
    from ..models import is_headless, sequence_length
    from . import latency
    from .accuracy import accuracy, fidelity
    from .variants import Candidate, load_runner, outputs

    cfg, images = run.cfg, run.images
    base = onnx.load(str(find(graphs, Variant("", "fp32")).path))
    baselines = [v for v in (Variant("", "fp32"), Variant("", "int8")) if find(graphs, v)]
    candidates = [Candidate(v.name, v, find(graphs, v).path) for v in baselines]
    groups = {v.name: v.precision for v in baselines}
    for spec in methods.sweep_specs(cfg.checks.sweep, cfg.compression.spec):
        method = methods.get(spec.method)
        label = method.label({k: spec.values[k] for k in method.sweep_keys})
        log.info("sweep: exporting %s", label)
        reference = method.build(run.model, spec, vocab)
        path = save_model(method.graph(base, reference, spec), cfg.out / "sweep" / file_name(label))
        run.written.append(path)
        run.verify(path, reference, "fp32", key=f"sweep/{path.name}")
        candidates.append(Candidate(label, Variant(method.variant, "fp32"), path))
        groups[label] = method.sweep_group or method.name
    runners = {cd.label: load_runner(cd) for cd in candidates}
    logits, tokens = outputs(candidates, runners, images.batches(cfg.data.batch_size))
    use_accuracy = images.labels is not None and not is_headless(run.model)
    first = images.pixels[:8]
    per_image = {name: (lambda _x, f=f: [f(first[i : i + 1]) for i in range(len(first))]) for name, f in runners.items()}
    timing = latency.measure(per_image, {1: first[:1]}, warmup=2, reps=cfg.checks.reps)
    tokens_in = sequence_length(run.model)
    rows = []
    for cd in candidates:
        quality = (accuracy(logits[cd.label], images.labels).top1 if use_accuracy
                   else fidelity(logits["fp32"], logits[cd.label], headless=True).cosine_similarity)
        counts = tokens.get(cd.label)
        rows.append(Row(cd.label, groups[cd.label], str(cd.path.relative_to(cfg.out)), quality,
                        (sum(counts) / len(counts)) if counts else tokens_in if not cd.variant.compressed else None,
                        timing[cd.label][1]["p50_ms"] / len(first)))
    result = {"images": len(run.inputs.check_files), "quality": "top-1 accuracy" if use_accuracy else
              "cosine of the outputs to FP32", "ranked": [asdict(r) for r in rank(rows)], "plot": "plots/tradeoff.png"}
    plot_tradeoff(result["ranked"], result["quality"], cfg.out / result["plot"])
    run.written.append(cfg.out / result["plot"])
    return result


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points (latency, quality) that no other point beats on both (lower latency, higher
    quality), in order of latency."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], float("-inf")
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def rank(rows: list[Row]) -> list[Row]:
    """Rows sorted by quality, best first; each marked `pareto`."""
    front = set(pareto_front([(r.latency_ms, r.quality) for r in rows]))
    marked = [replace(r, pareto=i in front) for i, r in enumerate(rows)]
    return sorted(marked, key=lambda r: (-r.quality, r.latency_ms))


MARKERS = {"fp32": "s", "int8": "D", "vwt": "o", "intra": "^", "tome": "v"}


def plot_tradeoff(rows: list[dict], quality_name: str, path: Path) -> None:
    """Quality against batch-1 latency, one marker per method, the Pareto front drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..atomic import atomic_path

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for method in dict.fromkeys(r["method"] for r in rows):
        pts = [r for r in rows if r["method"] == method]
        ax.scatter([r["latency_ms"] for r in pts], [r["quality"] for r in pts], marker=MARKERS.get(method, "o"),
                   label=method, s=40)
        for r in pts:
            ax.annotate(r["label"], (r["latency_ms"], r["quality"]), textcoords="offset points", xytext=(4, 4),
                        fontsize=7)
    front = [r for r in sorted(rows, key=lambda r: r["latency_ms"]) if r.get("pareto")]
    ax.plot([r["latency_ms"] for r in front], [r["quality"] for r in front], "k--", lw=1, label="Pareto front")
    ax.set_xlabel("p50 latency at batch 1 (ms)")
    ax.set_ylabel(quality_name)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def markdown(sweep: dict) -> list[str]:
    """report.md's ranking table."""
    lines = [f"## Trade-off sweep ({sweep['images']} images, quality = {sweep['quality']})", "",
             "| rank | setting | quality | tokens | p50 ms @1 | Pareto |", "|---|---|---|---|---|---|"]
    for i, r in enumerate(sweep["ranked"], 1):
        tokens = "n/a" if r.get("tokens") is None else f"{r['tokens']:.1f}"
        lines.append(f"| {i} | {r['label']} | {r['quality']:.4f} | {tokens} | {r['latency_ms']:.1f} | "
                     f"{'yes' if r['pareto'] else ''} |")
    return lines + ["", f"![tradeoff]({sweep['plot']})", ""]
