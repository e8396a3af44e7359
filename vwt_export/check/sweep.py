"""The trade-off sweep: many compression settings measured on the same images, ranked, and plotted.

    --sweep threshold=0.05,0.1,0.2 --sweep grouping=global,local --sweep keep=0.5,0.75 --sweep r=8,16

Each key belongs to the methods that list it among their sweep keys (vwt_export.methods: threshold and grouping
to inter, every combination of the two; keep to intra; r to ToMe). Every setting becomes one graph
(OUT/sweep/model.<setting>.onnx), verified against its torch model (export_settings), then measured with the
run's variants in their one evaluation pass and their one interleaved timing run (check/variants.py), so the
ranking's FP32 and INT8 rows repeat the main table's figures: quality (top-1 accuracy with labels, else the
cosine of the outputs to FP32's), tokens, batch-1 latency (rank_settings). The Pareto front is the settings no
other setting beats on both quality and latency.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from ..artefacts import Graph, Variant, find
from .plots import Heading

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


@dataclass(frozen=True)
class Setting:
    """One sweep setting exported and verified, waiting for the run's one evaluation pass and timing run."""

    candidate: "Candidate"  # noqa: F821 (check/variants.py)
    group: str  # its method's sweep group (vwt, intra, tome)


def export_settings(run, graphs: list[Graph], vocab) -> list[Setting]:
    """--sweep: every setting exported (OUT/sweep/) and verified against its torch model. measure_variants then
    runs them with the variants, in the same evaluation pass and the same interleaved timing run."""
    import onnx

    from .. import methods
    from ..graph.export import save_model
    from .variants import Candidate

    cfg = run.cfg
    base = onnx.load(str(find(graphs, Variant("", "fp32")).path))
    specs = methods.sweep_specs(cfg.checks.sweep, cfg.compression.spec)
    out = []
    for i, spec in enumerate(specs, 1):  # a line each (export and verification log lines would break a bar)
        method = methods.get(spec.method)
        label = method.label({k: spec.values[k] for k in method.sweep_keys})
        log.info("sweep: exporting %s (%d of %d)", label, i, len(specs))
        reference = method.build(run.model, spec, vocab)
        path = save_model(method.graph(base, reference, spec), cfg.out / "sweep" / file_name(label))
        run.written.append(path)
        run.verify(path, reference, "fp32", key=f"sweep/{path.name}")
        out.append(Setting(Candidate(label, Variant(method.variant, "fp32"), path), method.sweep_group or method.name))
    return out


def rank_settings(run, graphs: list[Graph], settings: list[Setting], measured) -> dict:
    """The sweep's ranking, with the Pareto front, and its plot, from `measured` (check/variants.py's Measured):
    the run's FP32 and INT8 graphs and every setting, read from the one evaluation pass and the one timing run
    that the report's main table comes from."""
    from ..models import is_headless, sequence_length
    from .accuracy import accuracy, fidelity

    cfg, images = run.cfg, run.images
    baselines = [(v.name, v.precision, find(graphs, v).path) for v in (Variant("", "fp32"), Variant("", "int8"))
                 if find(graphs, v) and v.name in measured.timing]
    entries = baselines + [(s.candidate.label, s.group, s.candidate.path) for s in settings]
    use_accuracy = images.labels is not None and not is_headless(run.model)
    tokens_in = sequence_length(run.model)
    rows = []
    for label, group, path in entries:
        logits = measured.logits[label]
        quality = (accuracy(logits, images.labels).top1 if use_accuracy
                   else fidelity(measured.logits["fp32"], logits, headless=True).cosine_similarity)
        counts = measured.tokens.get(label)
        compressed = group not in ("fp32", "int8")
        rows.append(Row(label, group, str(path.relative_to(cfg.out)), quality,
                        (sum(counts) / len(counts)) if counts else None if compressed else tokens_in,
                        measured.timing[label][1]["p50_ms"]))
    result = {"images": len(images.files), "quality": "top-1 accuracy" if use_accuracy else
              "cosine of the outputs to FP32", "ranked": [asdict(r) for r in rank(rows)], "plot": "plots/tradeoff.png"}
    plot_tradeoff(result["ranked"], result["quality"], cfg.out / result["plot"], Heading.of_run(run))
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


def plot_tradeoff(rows: list[dict], quality_name: str, path: Path, heading: Heading | None = None) -> None:
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
    if heading:
        heading.apply(fig, "trade-off sweep: quality against batch-1 latency")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def markdown(sweep: dict) -> list[str]:
    """report.md's ranking table."""
    lines = [f"## Trade-off sweep ({sweep['images']} images, quality = {sweep['quality']})", "",
             "Every setting was run in the main table's evaluation pass and timed in its interleaved run: the FP32 and "
             "INT8 rows repeat its figures at batch 1.", "",
             "| rank | setting | quality | tokens | p50 ms @1 | Pareto |", "|---|---|---|---|---|---|"]
    for i, r in enumerate(sweep["ranked"], 1):
        tokens = "n/a" if r.get("tokens") is None else f"{r['tokens']:.1f}"
        lines.append(f"| {i} | {r['label']} | {r['quality']:.4f} | {tokens} | {r['latency_ms']:.1f} | "
                     f"{'yes' if r['pareto'] else ''} |")
    return lines + ["", f"![tradeoff]({sweep['plot']})", ""]
