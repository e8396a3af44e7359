"""`vwt-export`: the only module that knows the whole pipeline.

    models -> vwt (vocabulary, compression) -> [export, engines: later stages] -> check -> summary

Each stage is a function taking the run's `Run` state; later stages slot into `run()` in order.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import platform
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from .errors import VWTError

MODES = ("none", "intra", "inter")
log = logging.getLogger("vwt_export")


@dataclass
class Run:
    """What one invocation asked for and what it has produced so far."""

    model_name: str
    mode: str
    weights: str
    model_args: dict[str, Any]
    calib: Path | None
    val: Path | None
    vocab_path: Path | None
    vocab_size: int
    threshold: float
    keep: int | float
    space: str | None
    prop_attn: bool
    out: Path
    skip_checks: bool
    skip_export: bool
    skip_int8: bool
    backend: str
    trt_target: str | None
    batches: list[int]
    reps: int
    batch_size: int
    max_images: int | None
    seed: int
    device: str
    progress: bool
    # filled in by the stages
    model: Any = None
    onnx: dict[str, Path] = field(default_factory=dict)
    references: dict[str, Any] = field(default_factory=dict)  # run.onnx key -> the torch module it must match
    vocab: Any = None
    cmodel: Any = None
    calib_files: list[Path] = field(default_factory=list)
    token_counts: list[int] = field(default_factory=list)
    variants: list[Any] = field(default_factory=list)
    not_measured: list[dict[str, str]] = field(default_factory=list)
    report: dict[str, Any] = field(default_factory=dict)
    engines: dict[str, Path] = field(default_factory=dict)
    check_files: list[Path] = field(default_factory=list)
    written: list[Path] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)


def say(msg: str) -> None:
    click.echo(msg, err=True)


# -- stages ---------------------------------------------------------------------------------------------------


def validate_inputs(run: Run) -> None:
    """Check every input file and folder before any slow work, so mistakes fail in a second."""
    from .data import list_images
    from .vwt import Vocabulary

    if run.calib is not None:
        run.calib_files = list_images(run.calib)[: run.max_images]
    if run.val is not None:
        run.check_files = list_images(run.val)[: run.max_images]
    elif not run.skip_checks:
        run.check_files = run.calib_files
    if run.mode == "inter":
        if run.vocab_path is not None:
            run.vocab = Vocabulary.load(run.vocab_path, space=run.space)
            if run.space and run.vocab.space != run.space:
                raise VWTError(f"{run.vocab_path}: a {run.vocab.space}-space vocabulary, but --space {run.space} was given")
        elif run.calib is None:
            raise VWTError("inter mode needs a vocabulary: pass --vocab FILE or --calib DIR to learn one (or --demo)")
    if not run.skip_checks and not run.check_files:
        raise VWTError("the checks need images: pass --val DIR or --calib DIR (or --skip-checks)")
    if run.backend == "trt" and not run.skip_export:
        from .backends.tensorrt import import_tensorrt

        import_tensorrt()  # before any slow work: no TensorRT, no point exporting for it
    if run.out.exists() and not run.out.is_dir():
        raise VWTError(f"{run.out}: exists and is not a folder; pass another --out")


def load(run: Run) -> None:
    from .models import load_model

    say(f"loading {run.model_name} (weights: {run.weights})")
    run.model = load_model(run.model_name, run.weights, device=run.device, **run.model_args)
    if run.weights == "random":
        say("note: random weights: outputs are meaningless for accuracy; agreement figures only show the pipeline works")


def tokenizer(run: Run) -> None:
    """Load or learn the vocabulary (inter mode)."""
    from .vwt import learn_vocabulary

    if run.mode != "inter":
        return
    if run.vocab is None:
        space = run.space or "image"
        say(f"learning a {run.vocab_size}-word {space}-space vocabulary from {len(run.calib_files)} images in {run.calib}")
        run.vocab = learn_vocabulary(run.model, run.calib, run.vocab_size, space=space, batch_size=run.batch_size,
                                     seed=run.seed, max_images=run.max_images, progress=run.progress)
        run.written.append(run.vocab.save(run.out / "vocab.safetensors"))
    run.vocab.check_compatible(run.model)


def compress_model(run: Run) -> None:
    run.cmodel = _compress(run, run.model)


def export_onnx(run: Run) -> None:
    """model.onnx (FP32 baseline), model.vwt.onnx (vwt custom ops), model.vwt.portable.onnx (standard ops); with
    --backend trt also their float16 twins (model.fp16.onnx, model.vwt.fp16[.portable].onnx) for FP16 engines."""
    if run.skip_export:
        return
    from .graph.export import cast_model, export_model, save_model
    from .graph.surgery import apply_vwt, make_portable
    from .vwt.intra import resolve_keep

    precisions = ("fp32", "fp16") if run.backend == "trt" else ("fp32",)
    for precision in precisions:
        suffix = "" if precision == "fp32" else "." + precision
        key = "" if precision == "fp32" else "_" + precision
        model, cmodel = run.model, run.cmodel
        if precision != "fp32":
            model = cast_model(run.model, precision)
            cmodel = _compress(run, model, rounded_copy=True)
        say(f"exporting the {precision.upper()} baseline to ONNX")
        base = export_model(model, precision=precision)
        run.onnx["model" + key] = save_model(base, run.out / f"model{suffix}.onnx")
        run.references["model" + key] = _float32_in(model)
        if run.mode != "none":
            vwt = apply_vwt(base, run.mode, vocab=run.vocab.words.numpy() if run.vocab else None,
                            threshold=run.threshold, keep=resolve_keep(run.keep, cmodel.num_patches),
                            space=cmodel.space, prop_attn=run.prop_attn, pooling=model.global_pool)
            run.onnx["vwt" + key] = save_model(vwt, run.out / f"model.vwt{suffix}.onnx")
            run.onnx["vwt" + key + "_portable"] = save_model(make_portable(vwt), run.out / f"model.vwt{suffix}.portable.onnx")
            run.references["vwt" + key] = run.references["vwt" + key + "_portable"] = cmodel
    run.written.extend(run.onnx.values())
    verify_onnx(run)


def _float32_in(model):
    """The model taking float32 pixels whatever its dtype, as its ONNX export does (CompressedViT already does)."""
    import torch

    dtype = model.patch_embed.proj.weight.dtype
    return model if dtype == torch.float32 else (lambda pixels: model(pixels.to(dtype)))


def _compress(run: Run, model, rounded_copy: bool = False):
    import warnings

    from .vwt import compress

    with warnings.catch_warnings():
        if rounded_copy:  # a float16 copy's patch embedding is the vocabulary's own, rounded: not what this warns of
            warnings.filterwarnings("ignore", "embedding-space vocabulary was learned with other")
        return compress(model, run.mode, vocab=run.vocab, threshold=run.threshold, keep=run.keep, space=run.space,
                        prop_attn=run.prop_attn)


def _verification_pixels(run: Run):
    import torch

    from .data import iter_image_batches
    from .models import transform

    if run.check_files:
        return next(iter_image_batches(run.check_files[:8], transform(run.model), 8))[0]
    c, (h, w) = run.model.patch_embed.proj.in_channels, run.model.patch_embed.img_size
    return torch.randn(4, c, h, w, generator=torch.Generator().manual_seed(0))


# Each graph is checked against the torch model of its own precision. Float16 results differ with the order of
# summation, so FP16 graphs get a float16-sized tolerance, and a miss is a warning: a patch near the threshold
# may match differently when its embedding is rounded differently (embed space), which is not a defect.
RTOL = {"fp32": 1e-4, "fp16": 1e-2}


def verify_onnx(run: Run) -> None:
    """Every written graph against the torch path on the same pixels (batch of up to 8: padding included)."""
    from .backends.onnxruntime import runner
    from .graph.export import verify_against_torch

    pixels = _verification_pixels(run).to(run.device)
    results = {}
    for key, path in run.onnx.items():
        precision = "fp16" if "fp16" in key else "fp32"
        try:
            err = verify_against_torch(run.references[key], runner(path), pixels, rtol=RTOL[precision], what=path.name)
            results[key] = {"file": path.name, "max_rel_err": err, "verified": True}
            say(f"verified {path.name} against torch ({precision}) on {len(pixels)} images: max relative error {err:.1e}")
        except VWTError as e:
            no_op_library = key.startswith("vwt") and "op library" in str(e)
            if precision == "fp32" and not no_op_library:
                raise
            results[key] = {"file": path.name, "verified": False, "reason": str(e)}
            say(f"warning: {path.name} written but not verified: {e}")
    run.summary["onnx"] = results


def check_torch(run: Run) -> None:
    """Tokens kept and agreement with the uncompressed model, on the torch path."""
    from tqdm.auto import tqdm

    from .check.accuracy import compare
    from .models import transform

    if run.skip_checks:
        return
    with tqdm(total=len(run.check_files), desc="checking (torch)", unit="img", disable=not run.progress) as bar:
        agreement = compare(run.model, run.cmodel, run.check_files, transform(run.model), run.batch_size,
                            run.device, progress=bar.update)
    run.summary["torch_check"] = {"images_from": str(run.val or run.calib), **agreement.as_dict()}
    run.token_counts = agreement.counts
    a = agreement
    click.echo(
        f"tokens per image: mean {a.tokens_mean:.1f} of {a.tokens_in} ({a.tokens_mean / a.tokens_in:.0%}), "
        f"min {a.tokens_min}, max {a.tokens_max}"
    )
    click.echo(
        f"agreement with the uncompressed model on {a.images} images: top-1 {a.top1_agreement:.1%}, "
        f"top-5 overlap {a.top5_overlap:.1%}, max |logit diff| {a.max_abs_logit_diff:.3g}"
    )


def _pixels(run: Run, files: list[Path], limit: int):
    from .data import iter_image_batches
    from .models import transform

    import numpy as np

    return np.concatenate([b.numpy() for b, _ in iter_image_batches(files[:limit], transform(run.model), 16)])


def quantize(run: Run) -> None:
    """model.int8.onnx and model.vwt.int8.onnx: explicit Q/DQ, calibrated on the --calib images."""
    import onnx

    from .graph.export import save_model
    from .graph.quantize import quantize_int8

    if run.skip_export or run.skip_int8:
        run.not_measured.append({"what": "INT8 variants", "why": "skipped (--skip-int8 or --skip-export)"})
        return
    if not run.calib_files:
        run.not_measured.append({"what": "INT8 variants", "why": "no --calib images to calibrate on (validation "
                                 "images are never used for calibration)"})
        return
    pixels = _pixels(run, run.calib_files, 32)
    batches = [pixels[i : i + 8] for i in range(0, len(pixels), 8)]
    for key, name in (("model", "model.int8.onnx"), ("vwt", "model.vwt.int8.onnx")):
        if key in run.onnx:
            say(f"quantizing {run.onnx[key].name} to INT8 (Q/DQ, calibrated on {len(pixels)} images)")
            q = quantize_int8(onnx.load(str(run.onnx[key])), batches, portable=True)
            if key == "vwt":  # as for FP32: one file with the portable bodies (any runtime), one with custom ops
                run.onnx["vwt_int8_portable"] = save_model(q, run.out / "model.vwt.int8.portable.onnx")
                run.written.append(run.onnx["vwt_int8_portable"])
                del q.functions[:]
            run.onnx[key + "_int8"] = save_model(q, run.out / name)
            run.written.append(run.onnx[key + "_int8"])


def build_engines(run: Run) -> None:
    """--backend trt: a TensorRT engine (+ JSON sidecar) per ONNX variant and precision."""
    from .backends import tensorrt as vtrt

    if run.backend != "trt" or run.skip_export:
        return
    trt, flavour = vtrt.import_tensorrt()
    try:
        plugin = vtrt.plugin_library()
    except VWTError:
        plugin = None
    # networks are strongly typed: each engine's precision is that of the graph it is built from
    form = "" if plugin else "_portable"  # the custom-op graph needs the plugin; the portable one runs anywhere
    vwt_graph = run.onnx.get("vwt" + form)
    plan = [("fp32", run.onnx.get("model"), "fp32"), ("fp16", run.onnx.get("model_fp16"), "fp16"),
            ("int8", run.onnx.get("model_int8"), "int8"), ("vwt", vwt_graph, "fp32"),
            ("vwt+fp16", run.onnx.get("vwt_fp16" + form), "fp16"), ("vwt+int8", run.onnx.get("vwt_int8" + form), "int8")]
    for name, onnx_path, precision in plan:
        if onnx_path is None:
            continue
        stem = "model.vwt" if name.startswith("vwt") else "model"
        engine = run.out / f"{stem}.{precision}.engine"
        say(f"building TensorRT engine {engine.name} ({flavour} {trt.__version__}, from {onnx_path.name})")
        try:
            vtrt.build_engine(onnx_path, engine, vtrt.BuildSettings(precision=precision, batches=run.batches,
                                                                     compute_capability=run.trt_target,
                                                                     timing_cache=str(run.out / "timing.cache")))
        except VWTError as e:
            run.not_measured.append({"what": f"TensorRT {name} engine", "why": str(e)})
            say(f"warning: {e}")
            continue
        run.engines[name] = engine
        run.written += [engine, vtrt.sidecar_path(engine)]
    if not plugin and vwt_graph is not None:
        run.not_measured.append({"what": "TensorRT plugin path", "why": "libvwt_trt_plugin.so is not built (no "
                                 "TensorRT headers at build time); the VWT engines use the portable graph"})


def check_variants(run: Run) -> None:
    """Every ONNX variant over the check images: fidelity to FP32, accuracy with labels, latency, energy."""
    from tqdm.auto import tqdm

    from .check import energy, latency
    from .check.accuracy import read_labels
    from .check.variants import Variant, evaluate, merge_share, outputs, token_stats
    from .models import transform

    if run.skip_checks or run.skip_export:
        return
    names = {"model": ("fp32", "fp32", False), "model_int8": ("int8", "int8", False),
             "vwt": ("vwt", "fp32", True), "vwt_int8": ("vwt+int8", "int8", True)}
    run.variants = [Variant(names[k][0], run.onnx[k], names[k][1], names[k][2]) for k in names if k in run.onnx]
    if run.engines:
        try:
            from .backends.tensorrt import current_gpu

            if run.trt_target:
                raise VWTError(f"engines were built ahead of time for {run.trt_target.upper()}; run them there "
                               "(vwt_export.runtime.load checks that the GPU matches)")
            current_gpu()
            run.variants += [Variant(f"trt:{n}", p, "fp16" if "fp16" in n else ("int8" if "int8" in n else "fp32"),
                                     n.startswith("vwt"), backend="tensorrt") for n, p in run.engines.items()]
        except VWTError as e:
            run.not_measured.append({"what": "TensorRT engines (accuracy, latency)", "why": f"not run: {e}"})
    folder = run.val or run.calib
    labels = read_labels(folder, run.check_files)
    with tqdm(total=len(run.check_files), desc="evaluating variants", unit="img", disable=not run.progress) as bar:
        logits = outputs(run.variants, run.check_files, transform(run.model), run.batch_size, progress=bar.update)
    results = evaluate(run.variants, logits, labels)
    pixels = _pixels(run, run.check_files, max(run.batches))
    inputs = {b: np.resize(pixels, (b, *pixels.shape[1:])) for b in run.batches}
    from .runtime import load as load_artefact

    runners = {v.name: load_artefact(v.path) for v in run.variants}
    with tqdm(total=3 + run.reps, desc="timing (interleaved)", unit="rep", disable=not run.progress) as bar:
        timing = latency.measure(runners, inputs, warmup=3, reps=run.reps, progress=bar.update)
    full = run.cmodel.tokens_in
    for v in run.variants:
        r = results[v.name]
        r["tokens"] = token_stats(run.token_counts if v.vwt and run.token_counts else [full] * len(run.check_files))
        r["latency"] = timing[v.name]
        if v.backend == "tensorrt":
            from .runtime import load as load_artefact

            f = load_artefact(v.path)
            r["energy"] = energy.measure_gpu(lambda: f(inputs[max(run.batches)]), max(run.batches))
        else:
            r["energy"] = energy.measure_cpu_variant()
        r["merge_share"] = merge_share(v.path, pixels[:4]) if v.vwt and v.backend != "tensorrt" else None
    run.report["variants"] = {v.name: {"file": v.path.name, "backend": v.backend, "precision": v.precision,
                                       "vwt": v.vwt, **results[v.name]} for v in run.variants}
    run.report["images"] = {"folder": str(folder), "count": len(run.check_files), "labelled": labels is not None,
                            "calib": str(run.calib) if run.calib else None, "calib_count": len(run.calib_files)}
    run.not_measured.append({"what": "FP16 variants on ONNX Runtime CPU", "why": "CPUs without native float16 "
                             "arithmetic run float16 graphs slower than float32 (DeiT-S batch 1 on this project's CI "
                             "machine: 72 ms vs 53 ms), so FP16 is timed on TensorRT only; --backend trt writes and "
                             "verifies model.fp16.onnx and model.vwt.fp16.onnx"})
    run.not_measured.append({"what": "energy", "why": energy.measure_cpu_variant()["reason"]})
    if labels is None:
        run.not_measured.append({"what": "accuracy", "why": f"{folder} has no labels (class subfolders or a labels "
                                 "file); fidelity to FP32 is reported instead"})


def polygraphy_files(run: Run) -> None:
    """Check inputs and torch FP32 reference outputs in Polygraphy's JSON format, and the commands to use them."""
    import torch
    from polygraphy.comparator import RunResults
    from polygraphy.comparator.struct import IterationResult
    from polygraphy.json import save_json
    from polygraphy.logger import G_LOGGER

    G_LOGGER.module_severity = G_LOGGER.ERROR  # its per-file "Saving inference results" lines are noise here

    if run.skip_checks or run.skip_export:
        return
    folder = run.out / "polygraphy"
    folder.mkdir(parents=True, exist_ok=True)
    pixels = _pixels(run, run.check_files, 8)
    from .atomic import atomic_path

    with atomic_path(folder / "inputs.json") as tmp:
        save_json([{"pixels": pixels}], str(tmp))
    refs = {"model": ("model.outputs.json", run.model)}
    if "vwt" in run.onnx:
        refs["vwt"] = ("model.vwt.outputs.json", run.cmodel)
    with torch.no_grad():
        for key, (name, module) in refs.items():
            results = RunResults()
            logits = module(torch.from_numpy(pixels).to(run.device)).float().cpu().numpy()
            results.append(("torch-fp32", [IterationResult({"logits": logits}, runner_name="torch-fp32")]))
            with atomic_path(folder / name) as tmp:
                results.save(str(tmp))
    commands = []
    for key, file in (("model", "model.onnx"), ("vwt", "model.vwt.onnx"), ("vwt", "model.vwt.portable.onnx")):
        if key in refs:
            commands.append(f"polygraphy run {run.out / file} --onnxrt --load-inputs {folder / 'inputs.json'} "
                            f"--load-outputs {folder / refs[key][0]} --atol 1e-4 --rtol 1e-3")
    run.report["polygraphy"] = {"inputs": "polygraphy/inputs.json",
                                "outputs": {v[0]: "torch fp32 " + k for k, v in refs.items()}, "commands": commands}


def write_report(run: Run) -> None:
    import datetime
    import os

    import onnx
    import onnxruntime
    import timm
    import torch

    from . import __version__
    from .check import report as rep

    if "variants" not in run.report:
        return
    m = run.model
    run.report.update(
        schema=rep.SCHEMA, version=rep.VERSION,
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        command=" ".join(["vwt-export", *sys.argv[1:]]),
        model={"name": run.model_name, "timm_name": m.default_cfg.get("architecture"), "weights": run.weights,
               "weights_meaningful": run.weights != "random", "num_prefix_tokens": m.num_prefix_tokens,
               "num_patches": m.patch_embed.num_patches, "tokens_in": run.cmodel.tokens_in},
        settings={"mode": run.mode, **_settings(run)},
        environment={"python": platform.python_version(), "platform": platform.platform(),
                     "processor": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
                     "torch": torch.__version__, "timm": timm.__version__, "onnx": onnx.__version__,
                     "onnxruntime": onnxruntime.__version__, "vwt_export": __version__, "gpu": None},
        not_measured=run.not_measured,
    )
    written = rep.write(run.report, run.out)
    run.written.extend(written)
    click.echo("")
    click.echo(rep.markdown(run.report).split("Not measured:")[0].rstrip())


def write_summary(run: Run) -> None:
    import timm
    import torch

    from . import __version__
    from .atomic import write_text

    run.summary.update(
        model=run.model_name, timm_name=run.model.default_cfg.get("architecture"), weights=run.weights,
        weights_meaningful=run.weights != "random", mode=run.mode,
        settings=_settings(run),
        versions={"vwt_export": __version__, "torch": torch.__version__, "timm": timm.__version__,
                  "python": platform.python_version()},
    )
    path = run.out / "summary.json"
    write_text(path, json.dumps(run.summary, indent=2) + "\n")
    run.written.append(path)


def _settings(run: Run) -> dict[str, Any]:
    settings: dict[str, Any] = {"model_args": run.model_args, "prop_attn": run.prop_attn}
    if run.mode == "intra":
        settings.update(keep=run.keep, space=run.cmodel.space)
    if run.mode == "inter":
        settings.update(threshold=run.threshold, space=run.cmodel.space, vocab_size=run.vocab.size,
                        vocab=str(run.vocab_path or run.out / "vocab.safetensors"))
    return settings


STAGES = (validate_inputs, load, tokenizer, compress_model, export_onnx, quantize, build_engines, check_torch, check_variants,
          polygraphy_files, write_report, write_summary)


def run_pipeline(run: Run) -> None:
    for stage in STAGES:
        stage(run)
    for path in run.written:
        say(f"wrote {path}")


# -- command line ---------------------------------------------------------------------------------------------


def _parse_keep(value: str) -> int | float:
    try:
        return float(value) if any(c in value for c in ".eE") else int(value)
    except ValueError:
        raise VWTError(f"--keep {value}: give a fraction like 0.75 or a patch count like 147") from None


def _parse_batches(value: str) -> list[int]:
    try:
        out = sorted({int(v) for v in value.split(",") if v.strip()})
    except ValueError:
        out = []
    if not out or min(out) < 1:
        raise VWTError(f"--batch {value}: give batch sizes like 1,8,32")
    return out


def _parse_model_args(items: tuple[str, ...]) -> dict[str, Any]:
    import yaml

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.isidentifier():
            raise VWTError(f"--model-arg {item}: expected KEY=VALUE, e.g. img_size=384")
        out[key] = yaml.safe_load(value)
    return out


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.argument("model")
@click.option("--mode", type=click.Choice(MODES), default="inter", show_default=True,
              help="inter: merge patches matching the same visual word; intra: keep the highest-variance patches")
@click.option("--weights", default=None, help="pretrained (timm hub/cache), random, or a checkpoint path "
              "(.pth/.pt/.safetensors)  [default: pretrained; random with --demo]")
@click.option("--model-arg", "model_args", multiple=True, metavar="KEY=VALUE",
              help="extra timm.create_model argument, repeatable (e.g. img_size=384, num_classes=10)")
@click.option("--calib", type=click.Path(path_type=Path), help="folder of calibration images; learns the vocabulary")
@click.option("--val", type=click.Path(path_type=Path), help="folder of images for the checks  [default: --calib]")
@click.option("--vocab", "vocab_path", type=click.Path(path_type=Path),
              help="vocabulary to use instead of learning one (.safetensors, or a reference vocab.pt)")
@click.option("--vocab-size", type=click.IntRange(min=1), default=1000, show_default=True)
@click.option("--threshold", type=click.FloatRange(0.0, 2.0), default=0.1, show_default=True,
              help="inter: largest cosine distance at which a patch matches a word")
@click.option("--keep", default="0.75", show_default=True, help="intra: fraction of patches (0.75) or a count (147)")
@click.option("--space", type=click.Choice(["image", "embed"]), default=None,
              help="feature space patches are compared in  [default: the vocabulary's, else image]")
@click.option("--prop-attn", is_flag=True, help="proportional attention: weight merged tokens by their size")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="output folder  [default: vwt-out/MODEL-MODE]")
@click.option("--skip-checks", is_flag=True, help="do not compare against the uncompressed model")
@click.option("--skip-export", is_flag=True, help="do not write ONNX files (torch path only)")
@click.option("--skip-int8", is_flag=True, help="do not build the INT8 variants")
@click.option("--backend", type=click.Choice(["ort", "trt"]), default="ort", show_default=True,
              help="ort: ONNX Runtime CPU variants; trt: also TensorRT engines (FP32, FP16, INT8)")
@click.option("--trt-target", default=None, metavar="SM89",
              help="TensorRT-RTX: build engines ahead of time for this compute capability (no GPU needed)")
@click.option("--batch", "batches", default="1,8", show_default=True, help="batch sizes timed, comma-separated")
@click.option("--reps", type=click.IntRange(min=1), default=10, show_default=True, help="timed repetitions per variant and batch")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--max-images", type=click.IntRange(min=1), default=None, help="use at most N images of each folder")
@click.option("--seed", type=int, default=0, show_default=True, help="k-means seed")
@click.option("--device", default="cpu", show_default=True, help="torch device for the torch path (cpu, cuda)")
@click.option("--demo", is_flag=True, help="offline demo: random weights and built-in synthetic images")
@click.option("--quiet", is_flag=True, help="no progress bars")
@click.option("--debug", is_flag=True, help="show tracebacks")
@click.version_option(package_name="vwt-export")
def command(model, mode, weights, model_args, calib, val, vocab_path, vocab_size, threshold, keep, space, prop_attn,
         out, skip_checks, skip_export, skip_int8, backend, trt_target, batches, reps, batch_size, max_images, seed, device, demo, quiet, debug):
    """Compress the timm ViT MODEL (an alias such as deit_s, or a timm name) with the Visual Word Tokenizer.

    \b
    Examples:
      vwt-export deit_s --mode inter --calib images/ --val val/
      vwt-export deit_s --mode intra --keep 0.5 --val val/
      vwt-export deit_s --demo
    """
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, format="warning: %(message)s")
    try:
        out = out or Path("vwt-out") / f"{model}-{mode}"
        if demo:
            from .demo import write_demo_images

            weights = weights or "random"
            if calib is None and not (mode == "inter" and vocab_path):
                calib = write_demo_images(out / "demo-images")
                say(f"demo: {len(list(calib.glob('*.png')))} synthetic images in {calib}")
        run = Run(
            model_name=model, mode=mode, weights=weights or "pretrained", model_args=_parse_model_args(model_args),
            calib=calib, val=val, vocab_path=vocab_path, vocab_size=vocab_size, threshold=threshold,
            keep=_parse_keep(keep), space=space, prop_attn=prop_attn, out=out, skip_checks=skip_checks, skip_export=skip_export,
            skip_int8=skip_int8, backend=backend, trt_target=trt_target, batches=_parse_batches(batches), reps=reps,
            batch_size=batch_size, max_images=max_images, seed=seed, device=device, progress=not quiet,
        )
        run_pipeline(run)
    except VWTError as e:
        if debug:
            raise
        click.echo(f"error: {e}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except Exception as e:  # a bug, not bad input: say so plainly
        if debug:
            raise
        click.echo(f"error: unexpected {type(e).__name__}: {e} (rerun with --debug for the traceback)", err=True)
        sys.exit(1)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: usage errors, like input errors, are one line and exit 2."""
    try:
        code = command.main(args=argv, prog_name="vwt-export", standalone_mode=False)
    except click.ClickException as e:
        click.echo(f"error: {e.format_message()} (see vwt-export --help)", err=True)
        sys.exit(e.exit_code)
    except click.Abort:
        click.echo("interrupted", err=True)
        sys.exit(130)
    sys.exit(code or 0)
