"""report.json (schema below), report.md (one table a person reads at a glance) and plots.

report.json, version 1:
  schema, version, created, command          what produced it
  model        name, timm_name, weights, weights_meaningful, headless, num_prefix_tokens, num_patches, tokens_in
  settings     mode, threshold / keep, space, prop_attn, vocab
  environment  python, platform, processor, cpu_count, versions of torch / timm / onnx / onnxruntime / vwt_export
  images       check folder, count (decoded), labelled; calibration folder, count; skipped [{file, reason}]:
               unreadable files left out (also in summary.json)
  variants     {name: {file, backend, precision, vwt, accuracy {top1, top5} | null,
                fidelity {top1_agreement, top5_overlap, kl_divergence, cosine_similarity} vs fp32
                  (the first three null for a headless model: its outputs are features, not class scores),
                tokens {mean, min, max, counts}, merge_share | null, batching (padded | length-aware (...)),
                latency {batch: {p50_ms, p90_ms, p99_ms, mean_ms, min_ms, runs, images_per_s}},
                energy {available, reason | j_per_image_gross, j_per_image_net, ...}}}
  verification {file: {verified, max_rel_err | reason, patches, near_ties, images_with_near_ties, matches_differ,
               against (a stage pair: its one graph), images, compared}}: FP32 and FP16 graphs against torch
  measured     {file: {file, against, images, cosine_mean, cosine_min, top1_agreement | null, max_rel_err}}:
               quantized graphs and stage pairs against the graph they come from (check/verify.py)
  timing       {reps, warmup, images_at_batch_1}: the one interleaved run every latency comes from (check/variants.py)
  not_measured [{what, why}]
  polygraphy   {inputs, outputs: {file: reference}, commands}
  sweep        (with --sweep) {images, quality, plot, ranked: [{label, method, file, quality, tokens, latency_ms,
               pareto}]}
  target       (with --target) {target, metric, value, quality, confidence, images, calib, timed_images, met, fp32_ms,
               plot, chosen, candidates: [{label, mode, options, int8, file, quality, bound, tokens, latency_ms, speedup,
               passes, reference, chosen}], held_out {images, folder, quality, cosine, top1_agreement, met, file}}
               (check/target.py; summary.json holds the same)
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_path, write_text
from ..errors import VWTError
from .plots import Heading
from .verify import FLOOR_COSINE, describe_measurement, describe_verification, plural

VERIFICATION_HEADING = "## Verification"

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
              f"Backend: ONNX Runtime {report['environment']['onnxruntime']} CPU, {report['environment']['cpu_count']} cores. "
              + _timing_sentence(report), ""]
    skipped = imgs.get("skipped") or []
    if skipped:
        lines += [f"Skipped {plural(len(skipped), 'unreadable image')} (left out of every check and of the "
                  "calibration):", ""] + [f"- `{x['file']}`: {x['reason']}" for x in skipped] + [""]
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
                     "(`vwt_export.runtime.load` of the `.onnx` graph does this when its stage pair lies beside it, as "
                     "here); batch 1 runs the one graph.")
        lines.append("")
    shares = {n: v["merge_share"] for n, v in report["variants"].items() if v.get("merge_share") is not None}
    if shares:
        lines.append("Share of run time spent labelling and merging (batch 1, ONNX Runtime profiler): "
                     + ", ".join(f"{n} {x:.1%}" for n, x in shares.items()) + ".")
        lines.append("")
    if report.get("sweep"):
        from .sweep import markdown as sweep_markdown

        lines += sweep_markdown(report["sweep"])
    if report.get("target"):
        from .target import markdown as target_markdown

        lines += target_markdown(report["target"])
    checked, measured = report.get("verification") or {}, report.get("measured") or {}
    if checked or measured:
        output = "features" if m.get("headless") else "logits"
        lines += ["", VERIFICATION_HEADING, "", "Every graph written, on the same verification images. A float graph must "
                  "equal what it was checked against within the tolerance, or the run stops; matches are compared "
                  "exactly except at near-ties, where two words, two merge candidates or the threshold are within a "
                  "hair (counted, never errors). Quantized graphs are lossy: measured against the graph they come "
                  "from, they stop a run only where only a miswired graph goes (a mean output cosine under "
                  f"{FLOOR_COSINE}, NaN or Inf, another output shape).", ""]
        lines += [describe_verification(key, c, output) for key, c in checked.items()]
        lines += [describe_measurement(x, output) for x in measured.values()]
        lines.append("")
    lines += ["Not measured:", ""] + [f"- {x['what']}: {x['why']}" for x in report["not_measured"]] + [""]
    pg = report.get("polygraphy")
    if pg:
        lines += ["Check any file yourself with polygraphy (the vwt op library loads automatically once vwt-export is "
                  "installed):", "", "```bash"] + pg["commands"] + ["```", ""]
    if report.get("plots"):
        lines += [f"![{Path(p).stem}]({p})" for p in report["plots"]] + [""]
    return "\n".join(lines)


def _timing_sentence(report: dict) -> str:
    """How the latencies were measured: one run for every figure in the report, the sweep's and the plots'."""
    t = report.get("timing")
    if not t:
        return "All variants timed in one interleaved run."
    what = "every variant" + (" and sweep setting" if report.get("sweep") else "")
    return (f"Every latency in this report, the plots' included, comes from one interleaved timing run of {what}: "
            f"p50 of {t['reps']} repetitions after {t['warmup']} discarded; at batch 1 each repetition runs each of "
            f"the first {t['images_at_batch_1']} check images in turn (a compressed variant's latency depends on the "
            "image), a larger batch runs one batch of the first images. Idle ONNX Runtime threads sleep rather than "
            "spin, so that no session's threads take the cores from the next one's.")


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

    heading = Heading.of_report(report)
    fig, ax = plt.subplots(figsize=(6, 4.6))
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
    heading.apply(fig, "quality against latency, every variant")
    fig.tight_layout()
    written.append(_save(fig, folder / "accuracy_vs_latency.png"))
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 4.6))
    counted = {name: v["tokens"]["counts"] for name, v in variants.items()
               if v["vwt"] and (v["tokens"] or {}).get("counts")}  # measured per variant: INT8 may match differently
    if counted:  # side by side in each bin: equal histograms stay apart, each bar in its legend entry's colour
        lo, hi = min(min(c) for c in counted.values()), max(max(c) for c in counted.values())
        ax.hist(list(counted.values()), bins=_bins(lo, hi), label=list(counted), histtype="bar", rwidth=0.9)
    ax.axvline(report["model"]["tokens_in"], color="k", linestyle="--", label="uncompressed")
    ax.set_xlabel("tokens per image")
    ax.set_ylabel("images")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend()
    heading.apply(fig, "tokens kept per image, compressed variants")
    fig.tight_layout()
    written.append(_save(fig, folder / "tokens.png"))
    plt.close(fig)
    return [str(Path(folder.name) / Path(p).name) for p in written]


def _bins(lo: float, hi: float, most: int = 30) -> np.ndarray:
    """Histogram edges over [lo, hi]: one bin per token count where that is at most `most` bins (counts are
    whole numbers but for ToMe's block means), else `most` equal bins."""
    if hi - lo + 1 <= most:
        return np.arange(np.floor(lo), np.floor(hi) + 2) - 0.5
    return np.linspace(lo, hi, most + 1)


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


# -- the run's report and summary ------------------------------------------------------------------------------


def write_report(run, cmodel, vocab, variants: dict, polygraphy: dict, sweep: dict | None,
                 target: dict | None = None) -> dict:
    """report.json, report.md and the plots of a run whose variants were measured; returns report.json's content."""
    import datetime
    import os
    import platform

    import onnx
    import onnxruntime
    import timm
    import torch

    from ..models import is_headless
    from ..version import __version__
    from .variants import TIMED_IMAGES, WARMUP

    cfg, model = run.cfg, run.model
    report = {
        "schema": SCHEMA, "version": VERSION,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": cfg.command,
        "model": {**_model_facts(cfg, model, cmodel), "headless": is_headless(model),
                  "num_prefix_tokens": model.num_prefix_tokens, "num_patches": model.patch_embed.num_patches},
        "settings": _settings(cfg, cmodel, vocab),
        "environment": {"python": platform.python_version(), "platform": platform.platform(),
                        "processor": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
                        "torch": torch.__version__, "timm": timm.__version__, "onnx": onnx.__version__,
                        "onnxruntime": onnxruntime.__version__, "vwt_export": __version__, "gpu": None},
        "images": _images(run),
        "variants": {name: asdict(v) for name, v in variants.items()},
        **run.serialised(),
        "polygraphy": polygraphy,
        "timing": {"reps": cfg.checks.reps, "warmup": WARMUP,
                   "images_at_batch_1": min(TIMED_IMAGES, len(run.images.files))},
        **({"sweep": sweep} if sweep else {}),
        **({"target": target} if target else {}),
        "plots": [],
    }
    if cfg.compression.method.groups_patches:
        from .merges import plot_merges

        plot_merges(model, cmodel, run.verification_pixels, cfg.out / "plots" / "merges.png", Heading.of_run(run))
        report["plots"].append("plots/merges.png")
    run.written += write(report, cfg.out)
    return report


def write_summary(run, cmodel, vocab, result, target: dict | None = None) -> Path:
    """summary.json: what the run wrote and verified, whether or not it measured (written last)."""
    import platform

    import timm
    import torch

    from ..version import __version__

    cfg = run.cfg
    summary = {
        **_model_facts(cfg, run.model, cmodel), "mode": cfg.compression.mode, "command": cfg.command,
        "settings": _settings(cfg, cmodel, vocab), "images": _images(run),
        "versions": {"vwt_export": __version__, "torch": torch.__version__, "timm": timm.__version__,
                     "python": platform.python_version()},
        "onnx": result.verification, "measured": result.measured, "near_ties": result.near_ties,
        "engines": {v.name: {"file": p.name, "from": json.loads(Path(f"{p}.json").read_text())["onnx"]["file"]}
                    for v, p in result.engines.items()},
        "not_measured": result.not_measured,
    }
    if target:
        summary["target"] = target
    if result.torch_check is not None:
        summary["torch_check"] = {k: v for k, v in result.torch_check.items() if k != "counts"}
    path = cfg.out / "summary.json"
    write_text(path, json.dumps(summary, indent=2) + "\n")
    return path


def _images(run) -> dict:
    """report.json's and summary.json's images: the folders, the counts, and every unreadable file skipped."""
    from ..data import skipped_images

    cfg = run.cfg
    decoded = run.__dict__.get("images")  # Run.images, where the checks decoded them: files that failed are out
    return {"folder": str(cfg.data.check_folder),
            "count": len(decoded.files) if decoded is not None else len(run.inputs.check_files),
            "labelled": run.inputs.labels is not None,
            "calib": str(cfg.data.calib) if cfg.data.calib else None, "calib_count": len(run.inputs.calib_files),
            "skipped": skipped_images()}


def _model_facts(cfg, model, cmodel) -> dict:
    return {"name": cfg.model.name, "timm_name": model.default_cfg.get("architecture"), "weights": cfg.model.weights,
            "weights_meaningful": cfg.model.weights != "random", "tokens_in": cmodel.tokens_in}


def _settings(cfg, cmodel, vocab) -> dict:
    """The compression as report.json and summary.json state it: mode, its method's settings, the vocabulary."""
    c = cfg.compression
    settings: dict[str, Any] = {"mode": c.mode, "model_args": dict(cfg.model.args), "prop_attn": c.prop_attn,
                                **c.method.settings(c.spec, cmodel)}
    if c.method.needs_vocabulary:
        settings.update(vocab_size=vocab.size, vocab=str(c.vocab or cfg.out / "vocab.safetensors"))
    return settings
