"""--target cosine=0.98: the fastest setting that keeps a quality budget, chosen on the calibration images.

    cfg.checks.target                                     # Target("cosine", 0.98): config.parse_target's
    run_search(run, vocab)                                # report.json's target: the candidates and the choice
    walk(ladder, passes)                                  # the settings a method's ladder has measured, coarse to fine
    choose(rows, target)                                  # the fastest passing row (else the closest), and whether it met

Every method with a search ladder (vwt_export.methods: `Method.search_ladder`, least to most compression) is
walked with INT8 off and, unless --skip-int8, on: each step is exported, verified against its torch model
(FP32), quantized for the INT8 track, and its outputs on the calibration images compared with FP32's. A setting
passes when the one-sided 95% lower confidence bound of its mean quality over those images meets the target, not
the mean itself: on the real photos a setting's quality varies from image to image (per-image cosine spread
0.01-0.09), and a mean that meets the target on the calibration images by less than that missed it on the
held-out ones. A track walks its ladder until the target is missed, then bisects between the last pass and the
first miss. The uncompressed INT8 graph is a candidate too. Every graph measured is then timed at batch 1 on
ONNX Runtime CPU, all in one interleaved run, and the fastest one passing wins. The pipeline writes that setting as the
run's main artefacts; the check images (--val) took no part in the choice, and the report states its quality on
them. Where nothing meets the target, the closest candidate is written and the run says so (model.onnx, FP32,
always meets it).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

from statistics import NormalDist

import numpy as np

from ..config import METRICS, Target, searchable
from ..errors import VWTError
from .variants import TIMED_IMAGES

log = logging.getLogger("vwt_export")

REFINE_STEPS = 2  # bisections between a track's last pass and first miss
CONFIDENCE = 0.95  # the lower bound's one-sided confidence
Z = NormalDist().inv_cdf(CONFIDENCE)  # its standard normal quantile (1.645)
BOOTSTRAP = 2000  # resamples of the cosine bound
SEARCH_IMAGES = 64  # calibration images each candidate is judged on (more images: a tighter bound)


# -- the walk: coarse to fine along one method's ladder ------------------------------------------------------


def midpoint(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any] | None:
    """The setting halfway between two ladder steps (whole numbers rounded down), or None where there is none:
    a text value differs, or nothing lies strictly between them."""
    if set(a) != set(b):
        return None
    mid = {}
    for key in a:
        x, y = a[key], b[key]
        if x == y:
            mid[key] = x
        elif isinstance(x, bool) or isinstance(y, bool) or not all(isinstance(v, (int, float)) for v in (x, y)):
            return None
        elif isinstance(x, int) and isinstance(y, int):
            mid[key] = (x + y) // 2
        else:
            mid[key] = round((x + y) / 2, 6)
    return None if mid in (dict(a), dict(b)) else mid


def walk(ladder: Sequence[Mapping[str, Any]], passes: Callable[[dict], bool], refine: int = REFINE_STEPS) -> list[dict]:
    """The settings measured (in order): the ladder's steps until the first miss, then up to `refine` bisections
    between the last pass and the first miss. `passes` measures a setting and says whether it met the target."""
    tried, last_pass, first_miss = [], None, None
    for step in ladder:
        tried.append(dict(step))
        if not passes(dict(step)):
            first_miss = dict(step)
            break
        last_pass = dict(step)
    for _ in range(refine if last_pass is not None and first_miss is not None else 0):
        mid = midpoint(last_pass, first_miss)
        if mid is None:
            break
        tried.append(mid)
        if passes(mid):
            last_pass = mid
        else:
            first_miss = mid
    return tried


# -- the choice ------------------------------------------------------------------------------------------------


def per_image(metric: str, ref: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Each image's quality against FP32: its outputs' cosine, or 1.0 where its top-1 class agrees."""
    from .accuracy import cosine_similarities

    if metric == "cosine":
        return cosine_similarities(ref, out)
    return (ref.argmax(-1) == out.argmax(-1)).astype(np.float64)


def lower_bound(values: np.ndarray, metric: str, resamples: int = BOOTSTRAP) -> float:
    """The one-sided lower confidence bound of the mean of per-image qualities. Cosine: the bootstrap-t bound
    (Efron and Tibshirani, ch. 12): per-image cosines have a long lower tail (most images near 1, a few merged
    badly), where the normal bound, mean less z standard errors, covered the true mean 86-88 times in 100 instead
    of 95 and the floored bootstrap-t 94 (tests/check/test_target.py); resampled with a fixed seed, so a run
    repeats; never above the normal bound. Top-1 agreement (a share of images): Wilson's score bound, which stays
    below 1 when every image agrees. One image: its value."""
    values = np.asarray(values, dtype=np.float64)
    n, mean, z = len(values), float(values.mean()), Z
    if n < 2:
        return mean
    if metric == "top1":
        centre, half = mean + z * z / (2 * n), z * np.sqrt(mean * (1 - mean) / n + z * z / (4 * n * n))
        return float((centre - half) / (1 + z * z / n))
    sd = float(values.std(ddof=1))
    if sd <= 1e-9 * max(1.0, abs(mean)):  # every image alike (float rounding aside): nothing to bound
        return mean
    normal = mean - z * sd / np.sqrt(n)
    resampled = values[np.random.default_rng(0).integers(0, n, size=(resamples, n))]
    # a resample that misses the few bad images has almost no spread, and dividing by it would throw its t to
    # infinity: each resample's spread is taken as at least half the sample's (on a sample of 55 near-equal
    # images and one bad one, unfloored resamples put the bound 0.06 below the mean, floored ones 0.003)
    spread = np.maximum(resampled.std(axis=1, ddof=1), 0.5 * sd)
    t = (resampled.mean(axis=1) - mean) / spread * np.sqrt(n)  # the studentised mean's own distribution
    # never above the normal bound: a sample whose tail is one image resamples mostly without it, and then the
    # bootstrap alone would put the bound at the mean
    return float(max(min(mean - np.quantile(t, CONFIDENCE) * sd / np.sqrt(n), normal), -1.0))


@dataclass
class Row:
    """One candidate measured (report.json's target.candidates)."""

    label: str  # "vwt local t=0.05 + INT8"
    mode: str  # the method (--mode)
    options: dict  # the method's options, as --mode would take them
    int8: bool
    file: str  # its graph, relative to OUT
    quality: float  # on the calibration images, against FP32: the mean over images
    bound: float | None = None  # its one-sided 95% lower confidence bound: what the target is judged on
    tokens: float | None = None  # mean per image
    latency_ms: float | None = None  # p50 at batch 1
    speedup: float | None = None  # FP32's latency over this one's
    passes: bool = False
    reference: bool = False  # FP32 itself: shown, never chosen
    chosen: bool = False

    @property
    def judged(self) -> float:
        """What the target is judged on: the lower bound where measured, else the mean."""
        return self.quality if self.bound is None else self.bound

    @property
    def variant(self) -> str:
        """The row's variant name in the main run (fp32, int8, vwt, vwt+int8, tome+int8, ...)."""
        return _variant(self).name


def choose(rows: Iterable[Row], target: Target) -> tuple[Row | None, bool]:
    """(the fastest row whose lower bound meets the target, True), or where none does (the closest row, False);
    FP32 itself is no candidate. Rows need their quality and latency."""
    eligible = [r for r in rows if not r.reference]
    passing = [r for r in eligible if target.met(r.judged)]
    if passing:
        return min(passing, key=lambda r: (r.latency_ms, -r.judged)), True
    return max(eligible, key=lambda r: (r.judged, -r.latency_ms), default=None), False


# -- measuring on the run ------------------------------------------------------------------------------------


@dataclass
class _Search:
    """What the measurements share: the run, the calibration images and FP32's outputs on them."""

    run: Any
    vocab: Any
    base: Any  # the FP32 baseline graph (onnx.ModelProto)
    pixels: Any  # calibration images [N, C, H, W]
    metric: str  # cosine | top1
    fp32_outputs: Any = None  # on the calibration images: the first graph measured is FP32
    rows: dict = field(default_factory=dict)  # (label, int8) -> Row, in the order measured
    paths: dict = field(default_factory=dict)  # label -> FP32 graph path

    @property
    def folder(self):
        return self.run.cfg.out / "target"

    def measure(self, label: str, path, int8: bool, mode: str, options: dict) -> Row:
        """A graph's outputs on the calibration images against FP32's (the first graph measured is FP32's)."""
        from .variants import Candidate, load_runner, outputs

        row = Row(label, mode, options, int8, str(path.relative_to(self.run.cfg.out)), 1.0)
        cd = Candidate(label, _variant(row), path)
        logits, tokens = outputs([cd], {label: load_runner(cd)}, self._batches())
        if self.fp32_outputs is None:
            self.fp32_outputs = logits[label]
        values = per_image(self.metric, self.fp32_outputs, logits[label])
        row.quality, row.bound = float(values.mean()), lower_bound(values, self.metric)
        counted = tokens.get(label)
        row.tokens = sum(counted) / len(counted) if counted else None
        self.rows[label, int8] = row
        return row

    def _batches(self):
        size = self.run.cfg.data.batch_size
        return (self.pixels[i : i + size] for i in range(0, len(self.pixels), size))

    def quantized(self, fp32_path):
        """The INT8 twin of an FP32 graph, calibrated as the pipeline's INT8 stage is (run.calibration)."""
        import onnx

        from ..graph import quantize as q8
        from ..graph.export import save_model

        engines, ranges = self.run.cfg.engines, self.run.calibration
        batches = [ranges[i : i + 8] for i in range(0, len(ranges), 8)]
        q = q8.quantize_int8(onnx.load(str(fp32_path)), batches, quantize_attention=engines.int8_attention,
                             calibration=engines.int8_calibration)
        return save_model(q, fp32_path.with_name(fp32_path.name[: -len(".onnx")] + ".int8.onnx"))

    def setting(self, method, step: dict, int8: bool) -> bool:
        """Measure one ladder step of `method` (FP32, or its INT8 twin), log it, say whether it met the target."""
        from .. import methods
        from ..graph.export import save_model
        from .sweep import file_name

        own = methods.takes(method)
        base = {k: v for k, v in self.run.cfg.compression.spec.values.items() if k in own}
        spec = methods.spec(method.name, **{**base, **step})
        label = method.label({k: spec.values[k] for k in method.sweep_keys})
        if label not in self.paths:
            try:  # a setting that cannot be built, exported or verified is no candidate; the search goes on
                reference = method.build(self.run.model, spec, self.vocab)
                path = save_model(method.graph(self.base, reference, spec), self.folder / file_name(label))
                self.run.written.append(path)
                v = self.run.verify(path, reference, "fp32", key=f"target/{path.name}")
                if not v.verified:  # every verification image tied: nothing says it is wrong; the walk goes on
                    self.run.note(f"target candidate {label}", f"measured, not verified: {v.reason}")
                self.paths[label] = path
            except VWTError as e:
                log.warning("target %s: %s left out: %s", self.run.cfg.checks.target, label, e)
                self.run.note(f"target candidate {label}", f"left out, not verified: {e}")
                self.paths[label] = None
        if self.paths[label] is None:
            return False  # a miss: the walk goes no further than a setting it cannot use
        if (label, int8) not in self.rows:
            path = self.quantized(self.paths[label]) if int8 else self.paths[label]
            if int8:
                self.run.written.append(path)
            self.measure(label + " + INT8" if int8 else label, path, int8, method.name, dict(spec.values))
        return self.judge(self.rows[label + " + INT8" if int8 else label, int8])

    def judge(self, row: Row) -> bool:
        """Whether a measured row meets the target, logged as one progress line."""
        target = self.run.cfg.checks.target
        row.passes = target.met(row.judged)
        tokens = f", {row.tokens:.1f} tokens" if row.tokens is not None else ""
        log.info("target %s: %s: %s %.4f, lower bound %.4f, on %d calibration images%s (%s)", target, row.label,
                 target.metric, row.quality, row.judged, len(self.pixels), tokens, "pass" if row.passes else "miss")
        return row.passes


def check_target(target: Target, model) -> None:
    """A top-1 target needs class scores: refuse it for a headless model before any slow work."""
    from ..models import is_headless

    if target.metric == "top1" and is_headless(model):
        raise VWTError(f"--target {target}: the model has no classifier head (num_classes=0), so there is no top-1 "
                       "to agree on; use --target cosine=0.98")


def run_search(run, vocab) -> dict:
    """The search on the calibration images: every searchable method's ladder walked with INT8 off and on, every
    graph measured timed in one interleaved batch-1 run; report.json's target (the candidates, the choice)."""
    from tqdm.auto import tqdm

    from .. import methods
    from ..graph.export import export_model, save_model
    from . import latency
    from .context import decode
    from .variants import Candidate, load_runner

    cfg = run.cfg
    target = cfg.checks.target
    check_target(target, run.model)

    pixels = decode(run.model, run.inputs.calib_files, SEARCH_IMAGES)[0]
    log.info("target %s: searching %s on %d calibration images (INT8 %s)", target,
             ", ".join(m.name for m in searchable()), len(pixels), "on and off" if cfg.engines.int8 else "off")
    base = export_model(run.model)
    search = _Search(run, vocab, base, pixels, target.metric)
    fp32_path = save_model(base, search.folder / "model.onnx")
    run.written.append(fp32_path)
    plain = dict(methods.spec("none").values)
    fp32 = search.measure("fp32", fp32_path, False, "none", plain)
    fp32.reference, fp32.passes = True, True
    if cfg.engines.int8:
        int8_path = search.quantized(fp32_path)
        run.written.append(int8_path)
        search.judge(search.measure("int8", int8_path, True, "none", plain))
    for method in searchable():
        for int8 in (False, True) if cfg.engines.int8 else (False,):
            walk(method.search_ladder, lambda step, m=method, q=int8: search.setting(m, step, q))
    rows = list(search.rows.values())
    # spread over the images (a VWT setting's speed follows the image: flat photos merge more)
    timed = pixels[np.unique(np.linspace(0, len(pixels) - 1, min(TIMED_IMAGES, len(pixels))).round().astype(int))]
    runners = {r.label: load_runner(Candidate(r.label, _variant(r), cfg.out / r.file)) for r in rows}
    log.info("target %s: timing %d candidates at batch 1, interleaved (%d images, %d repetitions)", target, len(rows),
             len(timed), cfg.checks.reps)
    with tqdm(total=2 + cfg.checks.reps, desc=f"timing {len(rows)} candidates (interleaved)", unit="rep",
              disable=not cfg.progress) as bar:
        timing = latency.per_image_ms(runners, timed, reps=cfg.checks.reps, progress=bar.update)
    for r in rows:
        r.latency_ms = timing[r.label]
        r.speedup = timing["fp32"] / timing[r.label]
    chosen, met = choose(rows, target)
    if chosen is None:
        raise VWTError(f"--target {target}: no candidate could be built and verified (see the warnings above); "
                       "run without --target, with --mode and its options")
    chosen.chosen = True
    if met:
        log.info("target %s: chose %s (%s %.4f, lower bound %.4f, on the calibration images; %.2fx FP32 at batch 1)",
                 target, chosen.label, target.metric, chosen.quality, chosen.judged, chosen.speedup)
    else:
        log.warning("target %s: no setting meets it on the calibration images (lower bound); writing the closest, "
                    "%s (%s %.4f, lower bound %.4f, %.2fx FP32); model.onnx (FP32) is the one that meets it", target,
                    chosen.label, target.metric, chosen.quality, chosen.judged, chosen.speedup)
    result = {"target": str(target), "metric": target.metric, "value": target.value, "quality": METRICS[target.metric],
              "confidence": CONFIDENCE, "images": len(pixels), "calib": str(cfg.data.calib), "timed_images": len(timed),
              "met": met,
              "fp32_ms": fp32.latency_ms, "chosen": asdict(chosen) | {"variant": chosen.variant},
              "candidates": [asdict(r) for r in rows], "plot": "plots/target.png"}
    from .plots import Heading

    plot(result, cfg.out / result["plot"], Heading(cfg.model.name, cfg.model.weights, len(pixels), str(cfg.data.calib)))
    run.written.append(cfg.out / result["plot"])
    return result


def _variant(row: Row):
    from .. import methods
    from ..artefacts import Variant

    return Variant(methods.get(row.mode).variant, "int8" if row.int8 else "fp32")


def held_out(result: dict, variants: dict, images: int, folder) -> dict:
    """The chosen setting's quality on the check images, which took no part in the choice (report.json's
    target.held_out), from the main run's measurement of its variant."""
    v = variants[result["chosen"]["variant"]]
    fid = v.fidelity
    quality = fid.cosine_similarity if result["metric"] == "cosine" else fid.top1_agreement
    met = Target(result["metric"], result["value"]).met(quality)
    log.info("target %s: %s (%s) on %d held-out check images: %s %.4f (%s)", result["target"], result["chosen"]["label"],
             v.file, images, result["metric"], quality, "meets the target" if met else "misses the target")
    return {"images": images, "folder": str(folder), "quality": quality, "cosine": fid.cosine_similarity,
            "top1_agreement": fid.top1_agreement, "met": met, "file": v.file}


def plot(result: dict, path, heading=None) -> None:
    """The candidates on the trade-off plot: the target as a line, the chosen one marked; `heading` (plots.Heading)
    titles it."""
    from .sweep import pareto_front, plot_tradeoff

    rows = [{"label": r["label"], "method": _group(r), "quality": _judged(r), "latency_ms": r["latency_ms"]}
            for r in result["candidates"]]
    front = set(pareto_front([(r["latency_ms"], r["quality"]) for r in rows]))
    for i, r in enumerate(rows):
        r["pareto"] = i in front
    axis = f"{result['quality']}, {result.get('confidence', CONFIDENCE):.0%} lower bound (calibration images)"
    plot_tradeoff(rows, axis, path, heading,
                  target=result["value"],
                  chosen=result["chosen"]["label"])


def _judged(row: dict) -> float:
    return row["quality"] if row.get("bound") is None else row["bound"]


def _group(row: dict) -> str:
    from .. import methods

    if row["mode"] == "none":
        return "int8" if row["int8"] else "fp32"
    m = methods.get(row["mode"])
    name = m.sweep_group or m.name
    return f"{name}+int8" if row["int8"] else name


def markdown(result: dict) -> list[str]:
    """report.md's "Target search" section."""
    metric, chosen = result["metric"], result["chosen"]
    lines = [f"## Target search: {result['target']}", "",
             f"Every candidate below was measured on {result['images']} calibration images from `{result['calib']}` "
             f"({result['quality']}), and timed at batch 1 on ONNX Runtime CPU ({result['timed_images']} images, "
             "one at a time), all in one interleaved run. A candidate passes when the one-sided "
             f"{result.get('confidence', CONFIDENCE):.0%} lower confidence bound of its mean {metric} over those "
             "images meets the target: the check images vary more than the mean alone shows. Each method walks its "
             "ladder from least to most compression until the target is missed, then bisects.", "",
             f"| setting | INT8 | {metric} (calib) | lower bound | tokens | p50 ms @1 | speed vs FP32 | target |",
             "|---|---|---|---|---|---|---|---|"]
    for r in result["candidates"]:
        name = f"**{r['label']}** (chosen)" if r["chosen"] else r["label"]
        verdict = "reference" if r["reference"] else ("pass" if r["passes"] else "miss")
        tokens = "n/a" if r.get("tokens") is None else f"{r['tokens']:.1f}"
        lines.append(f"| {name} | {'on' if r['int8'] else 'off'} | {r['quality']:.4f} | {_judged(r):.4f} | {tokens} | "
                     f"{r['latency_ms']:.1f} | {r['speedup']:.2f}x | {verdict} |")
    lines.append("")
    if result["met"]:
        lines.append(f"Chosen: **{chosen['label']}**, the fastest candidate meeting {result['target']} on the "
                     f"calibration images ({chosen['quality']:.4f}, lower bound {_judged(chosen):.4f}; "
                     f"{chosen['speedup']:.2f}x FP32): written as this run's `{chosen['variant']}` variant.")
    else:
        lines.append(f"**No candidate meets {result['target']}** on the calibration images. The closest, "
                     f"**{chosen['label']}** ({chosen['quality']:.4f}, lower bound {_judged(chosen):.4f}; "
                     f"{chosen['speedup']:.2f}x FP32), is written as "
                     f"this run's `{chosen['variant']}` variant; model.onnx (FP32) is the one that meets the target.")
    h = result.get("held_out")
    if h:
        lines.append(f"On the {h['images']} held-out check images (`{h['folder']}`, no part in the choice): "
                     f"{metric} **{h['quality']:.4f}** for `{h['file']}` "
                     f"({'meets' if h['met'] else 'misses'} {result['target']}).")
    return lines + ["", f"![target search]({result['plot']})", ""]


__all__ = ["Row", "check_target", "choose", "held_out", "lower_bound", "markdown", "midpoint", "per_image", "run_search",
           "walk"]
