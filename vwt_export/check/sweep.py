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


MARKERS = {"fp32": "s", "int8": "D", "vwt": "o", "intra": "^", "tome": "v", "hybrid": "P"}
DPI = 110
LABEL_RINGS_PT = (5, 12, 20, 30, 42, 56, 72)  # distances tried for a label from its point, nearest first
LABEL_DIRECTIONS = 16


def plot_tradeoff(rows: list[dict], quality_name: str, path: Path, heading: Heading | None = None,
                  target: float | None = None, chosen: str | None = None) -> None:
    """Quality against batch-1 latency, one marker per method, the Pareto front drawn, labels that never overlap;
    with `target` its line, with `chosen` that setting marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..atomic import atomic_path

    fig = tradeoff_figure(rows, quality_name, target, chosen, heading)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(fig)


def tradeoff_figure(rows: list[dict], quality_name: str, target: float | None = None, chosen: str | None = None,
                    heading: Heading | None = None):
    """The trade-off plot's figure (plot_tradeoff saves it): labels placed after the layout is fixed."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5), dpi=DPI)
    for method in dict.fromkeys(r["method"] for r in rows):
        pts = [r for r in rows if r["method"] == method]
        ax.scatter([r["latency_ms"] for r in pts], [r["quality"] for r in pts],
                   marker=MARKERS.get(method.split("+")[0], "o"), label=method, s=40, zorder=3)
    front = [r for r in sorted(rows, key=lambda r: r["latency_ms"]) if r.get("pareto")]
    ax.plot([r["latency_ms"] for r in front], [r["quality"] for r in front], "k--", lw=1, label="Pareto front")
    picked = [r for r in rows if r["label"] == chosen]
    if picked:
        ax.scatter([picked[0]["latency_ms"]], [picked[0]["quality"]], marker="*", s=320, facecolors="none",
                   edgecolors="crimson", linewidths=1.8, zorder=4, label=f"chosen: {chosen}")
    if target is not None:
        ax.axhline(target, color="0.2", lw=1.2, ls="-.", label=f"target {target:g}")
    ax.set_xlabel("p50 latency at batch 1 (ms)")
    ax.set_ylabel(quality_name)
    ax.grid(alpha=0.3)
    ax.margins(0.12)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    if heading:
        heading.apply(fig, "quality against batch-1 latency")
    fig.tight_layout()
    ax.set_xlim(ax.get_xlim())  # frozen: labels are placed in display space from here on
    ax.set_ylim(ax.get_ylim())
    place_labels(ax, [(r["latency_ms"], r["quality"]) for r in rows], [r["label"] for r in rows])
    return fig


def place_labels(ax, points: list[tuple[float, float]], labels: list[str], fontsize: float = 7) -> list:
    """Annotate each point with its label where the label overlaps no other label and no marker: greedy, points
    in order of crowding, trying offsets on rings of growing radius (a leader line beyond the first ring). A
    label with no free place inside the axes goes in a column left of the legend, with a leader line."""
    import numpy as np

    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    xy = ax.transData.transform(np.asarray(points, dtype=float).reshape(-1, 2))
    marker = 5 * fig.dpi / 72  # half a marker of size 40, in pixels
    taken = [_box(x - marker, y - marker, x + marker, y + marker) for x, y in xy]
    crowding = [sum(np.hypot(*(xy[j] - xy[i])) < 60 for j in range(len(xy))) for i in range(len(xy))]
    order = sorted(range(len(xy)), key=lambda i: -crowding[i])
    texts: list = [None] * len(xy)
    homeless = []
    for i in order:
        for dx, dy in _offsets():
            text = _annotate(ax, labels[i], points[i], (dx, dy), fontsize, leader=np.hypot(dx, dy) > 6)
            box = _extent(text, renderer)
            if _inside(box, frame) and not any(_overlap(box, t) for t in taken):
                taken.append(box)
                texts[i] = text
                break
            text.remove()
        else:
            homeless.append(i)
    # the column: right of the axes, under the legend, one line per label, top to bottom in the points' order
    legend = ax.get_legend()
    top = (legend.get_window_extent(renderer).y0 if legend else frame.y1) - 8
    for i in sorted(homeless, key=lambda i: -xy[i][1]):
        text = ax.annotate(labels[i], points[i], xycoords="data", xytext=(frame.x1 + 8, top),
                           textcoords="figure pixels", fontsize=fontsize, ha="left", va="top",
                           arrowprops=dict(arrowstyle="-", lw=0.5, color="0.5"))
        box = _extent(text, renderer)
        top = box[1] - 2
        taken.append(box)
        texts[i] = text
    return texts


def _offsets():
    import math

    for radius in LABEL_RINGS_PT:
        for k in range(LABEL_DIRECTIONS):
            a = math.pi / 4 + 2 * math.pi * k / LABEL_DIRECTIONS  # up and right first
            yield radius * math.cos(a), radius * math.sin(a)


def _annotate(ax, label, point, offset, fontsize, leader):
    dx, dy = offset
    ha = "left" if dx > 0.5 else "right" if dx < -0.5 else "center"
    va = "bottom" if dy > 0.5 else "top" if dy < -0.5 else "center"
    return ax.annotate(label, point, textcoords="offset points", xytext=offset, fontsize=fontsize, ha=ha, va=va,
                       arrowprops=dict(arrowstyle="-", lw=0.5, color="0.5", shrinkA=0, shrinkB=3) if leader else None)


def _extent(text, renderer) -> tuple[float, float, float, float]:
    """The label's box in pixels (x0, y0, x1, y1), its text only (not its leader line)."""
    from matplotlib.text import Text

    text.update_positions(renderer)
    b = Text.get_window_extent(text, renderer)  # an Annotation's own extent includes its arrow
    return _box(b.x0, b.y0, b.x1, b.y1)


def _box(x0, y0, x1, y1, pad: float = 2.0) -> tuple[float, float, float, float]:
    return x0 - pad, y0 - pad, x1 + pad, y1 + pad


def _overlap(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _inside(box, frame) -> bool:
    return box[0] >= frame.x0 and box[1] >= frame.y0 and box[2] <= frame.x1 and box[3] <= frame.y1


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
