"""report.json (schema below), report.md (one table a person reads at a glance) and plots.

report.json, version 1:
  schema, version, created, command          what produced it
  model        name, timm_name, weights, weights_meaningful, headless, num_prefix_tokens, num_patches, tokens_in
  settings     mode, threshold / keep, space, prop_attn, vocab
  environment  python, platform, processor, cpu_count, versions of torch / timm / onnx / onnxruntime / vwt_export
  images       check folder, count, labelled; calibration folder, count
  variants     {name: {file, backend, precision, vwt, accuracy {top1, top5} | null,
                fidelity {top1_agreement, top5_overlap, kl_divergence, cosine_similarity} vs fp32
                  (the first three null for a headless model: its outputs are features, not class scores),
                tokens {mean, min, max, counts}, merge_share | null, batching (padded | length-aware (...)),
                latency {batch: {p50_ms, p90_ms, p99_ms, mean_ms, runs, images_per_s}},
                energy {available, reason | j_per_image_gross, j_per_image_net, ...}}}
  verification {file: {verified, max_rel_err | reason, patches, near_ties, images_with_near_ties, matches_differ}}
  not_measured [{what, why}]
  polygraphy   {inputs, outputs: {file: reference}, commands}
  sweep        (with --sweep) {images, quality, plot, ranked: [{label, method, file, quality, tokens, latency_ms,
               pareto}]}
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..atomic import atomic_path, write_text
from ..errors import VWTError

SCHEMA, VERSION = "vwt-export/report", 1
REQUIRED = ("schema", "version", "created", "model", "settings", "environment", "images", "variants", "not_measured")
VARIANT_REQUIRED = ("file", "backend", "precision", "vwt", "accuracy", "fidelity", "tokens", "latency", "energy")


def validate(report: dict) -> None:
    """Raise ValueError if `report` does not follow the schema above."""
    missing = [k for k in REQUIRED if k not in report]
    if missing or report.get("schema") != SCHEMA:
        raise ValueError(f"report lacks {missing or 'the schema tag'}")
    for name, v in report["variants"].items():
        gaps = [k for k in VARIANT_REQUIRED if k not in v]
        if gaps:
            raise ValueError(f"variant {name} lacks {gaps}")
        if not v["energy"].get("available") and not v["energy"].get("reason"):
            raise ValueError(f"variant {name}: unavailable energy needs a reason")


NO_HEAD = "n/a (no classifier head)"


def _fmt(x: Any, spec: str, missing: str = "–") -> str:
    return missing if x is None else format(x, spec)


def markdown(report: dict) -> str:
    m, s = report["model"], report["settings"]
    lines = [f"# vwt-export report: {m['name']} ({m['timm_name']})", ""]
    if not m["weights_meaningful"]:
        lines += ["> **Random weights**: accuracy and fidelity figures say nothing about a trained model; they only "
                  "show that every variant runs and agrees with its reference.", ""]
    imgs = report["images"]
    lines += [f"Mode **{s['mode']}**" + _describe(s) + f". {imgs['count']} check images from `{imgs['folder']}` ({'labelled' if imgs['labelled'] else 'no labels: fidelity only'}).",
              f"Backend: ONNX Runtime {report['environment']['onnxruntime']} CPU, {report['environment']['cpu_count']} cores; "
              "all variants timed in one interleaved run.", ""]
    batches = sorted({int(b) for v in report["variants"].values() for b in v["latency"]})
    head = ["variant", "top-1", "top-5", "agree (top-1)", "KL", "cosine", "tokens"] + [f"p50 ms @{b}" for b in batches] + \
           [f"img/s @{batches[-1]}" if batches else "img/s", "J/img"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, v in report["variants"].items():
        acc, fid, lat = v["accuracy"] or {}, v["fidelity"], v["latency"]
        na = NO_HEAD if m.get("headless") else "–"
        row = [f"**{name}**", _fmt(acc.get("top1"), ".1%", na), _fmt(acc.get("top5"), ".1%", na),
               _fmt(fid["top1_agreement"], ".1%", na), _fmt(fid["kl_divergence"], ".3g", na),
               _fmt(fid["cosine_similarity"], ".4f"), _fmt((v["tokens"] or {}).get("mean"), ".1f", "n/a")]
        row += [_fmt((lat.get(b) or lat.get(str(b)) or {}).get("p50_ms"), ".1f") for b in batches]
        last = lat.get(batches[-1]) or lat.get(str(batches[-1])) or {} if batches else {}
        row += [_fmt(last.get("images_per_s"), ".1f"),
                _fmt(v["energy"].get("j_per_image_net"), ".3f", "n/a")]
        lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    staged = [n for n, v in report["variants"].items() if v.get("batching", "padded") != "padded"]
    if staged and batches and batches[-1] > 1:
        lines.append(f"At batch > 1, {', '.join(staged)} run with length-aware batching: the batch is tokenized once, "
                     "ordered by token count and run through the trunk in sub-batches of similar length "
                     "(`vwt_export.runtime.load` on the `.tokenize.onnx` graph); batch 1 runs the one graph.")
        lines.append("")
    shares = {n: v["merge_share"] for n, v in report["variants"].items() if v.get("merge_share") is not None}
    if shares:
        lines.append("Share of run time spent labelling and merging (batch 1, ONNX Runtime profiler): "
                     + ", ".join(f"{n} {x:.1%}" for n, x in shares.items()) + ".")
        lines.append("")
    if report.get("sweep"):
        from .sweep import markdown as sweep_markdown

        lines += sweep_markdown(report["sweep"])
    checked = report.get("verification") or {}
    if checked:
        lines += ["Graphs verified against torch on the same images (matches compared exactly except at near-ties, "
                  "where two words or the threshold are within a hair; those are counted, never errors):", ""]
        for file, c in checked.items():
            if c["verified"]:
                ties = (f"; {c['near_ties']} near-tie patches in {c['images_with_near_ties']} images, "
                        f"{c['matches_differ']} matched differently" if c.get("patches") else "")
                lines.append(f"- `{file}`: max relative error {c['max_rel_err']:.1e}{ties}")
            else:
                lines.append(f"- `{file}`: not verified: {c['reason']}")
        lines.append("")
    lines += ["Not measured:", ""] + [f"- {x['what']}: {x['why']}" for x in report["not_measured"]] + [""]
    pg = report.get("polygraphy")
    if pg:
        lines += ["Check any file yourself with polygraphy (the vwt op library loads automatically once vwt-export is "
                  "installed):", "", "```bash"] + pg["commands"] + ["```", ""]
    if report.get("plots"):
        lines += [f"![{Path(p).stem}]({p})" for p in report["plots"]] + [""]
    return "\n".join(lines)


def _describe(settings: dict) -> str:
    from .. import methods

    try:
        return methods.get(settings["mode"]).describe(settings)
    except VWTError:  # a report of a method this installation does not have
        return ""


def plots(report: dict, folder: Path) -> list[str]:
    """Fidelity or accuracy against latency, and the token-count histograms; returns relative paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    variants = report["variants"]
    labelled = report["images"]["labelled"]
    headless = report["model"].get("headless", False)
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(6, 4))
    # the smallest batch timed (JSON turns the batch keys into strings)
    batch = min((int(b) for v in variants.values() for b in v["latency"]), default=1)
    for name, v in variants.items():
        lat = v["latency"].get(batch) or v["latency"].get(str(batch))
        if not lat:
            continue
        y = _quality(v, labelled, headless)
        if y is None:
            continue
        ax.scatter(lat["p50_ms"], y)
        ax.annotate(name, (lat["p50_ms"], y), textcoords="offset points", xytext=(5, 5))
    ax.set_xlabel(f"p50 latency at batch {batch} (ms)")
    ax.set_ylabel("feature cosine to FP32" if headless else
                  "top-1 accuracy (%)" if labelled else "top-1 agreement with FP32 (%)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    written.append(_save(fig, folder / "accuracy_vs_latency.png"))
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, v in variants.items():
        if v["vwt"] and (v["tokens"] or {}).get("counts"):  # measured per variant: INT8 may match differently
            ax.hist(v["tokens"]["counts"], bins=30, alpha=0.5, label=name)
    ax.axvline(report["model"]["tokens_in"], color="k", linestyle="--", label="uncompressed")
    ax.set_xlabel("tokens per image")
    ax.set_ylabel("images")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend()
    fig.tight_layout()
    written.append(_save(fig, folder / "tokens.png"))
    plt.close(fig)
    return [str(Path(folder.name) / Path(p).name) for p in written]


def _quality(v: dict, labelled: bool, headless: bool) -> float | None:
    """The plot's y value: feature cosine (headless), top-1 accuracy (labelled) or top-1 agreement, in %."""
    if headless:
        return v["fidelity"]["cosine_similarity"]
    y = (v["accuracy"] or {}).get("top1") if labelled else v["fidelity"]["top1_agreement"]
    return None if y is None else y * 100


def _save(fig, path: Path) -> str:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    return str(path)


def write(report: dict, out: Path) -> list[Path]:
    validate(report)
    report["plots"] = plots(report, out / "plots") + report.get("plots", [])  # + plots the caller drew
    write_text(out / "report.json", json.dumps(report, indent=2, default=float) + "\n")
    write_text(out / "report.md", markdown(report))
    return [out / "report.json", out / "report.md"] + [out / p for p in report["plots"]]
