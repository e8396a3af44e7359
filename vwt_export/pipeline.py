"""`export(config) -> ExportResult`: the whole job, the stages in order. The only module that knows them all.

    import vwt_export as vx
    result = vx.export("deit_s", mode="inter", calib="calib/", val="val/")      # or vx.export(ExportConfig(...))
    result.graph("vwt")            # Path of model.vwt.onnx
    result.report["variants"]      # accuracy / fidelity, tokens, latency, energy of every variant

    check inputs -> load model -> vocabulary -> compress -> ONNX graphs (verified) -> INT8 -> TensorRT engines
    -> torch check -> every variant measured -> polygraphy files -> report.json/md -> summary.json

Each stage is a function of what earlier stages returned; the work itself lives in the packages below
(vwt, graph, backends, check). Progress goes to the `vwt_export` logger (the CLI prints it) and to tqdm bars.
"""

from __future__ import annotations

import json
import logging
import platform
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import artefacts
from .artefacts import Graph, Variant
from .config import ExportConfig
from .errors import VWTError
from .data import decode_once
from .models import sequence_length
from .outdir import OutputRun

log = logging.getLogger("vwt_export")


@dataclass(frozen=True)
class Inputs:
    """What the input checks found: image lists and a loaded vocabulary."""

    calib_files: list[Path]
    check_files: list[Path]
    vocab: Any  # Vocabulary | None
    labels: np.ndarray | None  # class index per check image, when the check folder carries labels

    def labels_of(self, files: list[Path]) -> np.ndarray | None:
        """The labels of `files`, a subset of the check images in their order (those that decoded)."""
        if self.labels is None:
            return None
        index = {p: i for i, p in enumerate(self.check_files)}
        return self.labels[[index[p] for p in files]]


@dataclass(frozen=True)
class ExportResult:
    config: ExportConfig
    out: Path
    graphs: list[Graph] = field(default_factory=list)  # ONNX files written
    engines: dict[Variant, Path] = field(default_factory=dict)  # TensorRT engines
    verification: dict[str, dict] = field(default_factory=dict)  # graph file -> check against torch
    torch_check: dict | None = None  # tokens and agreement on the torch path
    report: dict | None = None  # report.json
    not_measured: list[dict[str, str]] = field(default_factory=list)
    written: list[Path] = field(default_factory=list)

    def graph(self, variant: str = "fp32", portable: bool = False) -> Path:
        """The file of a variant by its report name (fp32, vwt, vwt+int8, ...)."""
        for g in self.graphs:
            if g.variant.name == variant and g.portable == portable and not g.stage:
                return g.path
        raise KeyError(f"no {'portable ' if portable else ''}graph of variant {variant!r} was written")

    @property
    def near_ties(self) -> dict[str, int]:
        """Near-tie patches (and images holding any) seen while verifying the FP32 graphs."""
        checked = [v for v in self.verification.values() if v.get("patches")]
        worst = max(checked, key=lambda v: v["near_ties"], default={})
        return {"patches": worst.get("near_ties", 0), "images": worst.get("images_with_near_ties", 0)}


def export(config: ExportConfig | str, **options: Any) -> ExportResult:
    """Run the whole job. `config` is an ExportConfig, or a model name with the command line's options as
    keyword arguments (`vx.export("deit_s", mode="intra", keep=0.5, val="val/")`). Raises VWTError on bad input,
    before any slow work wherever the input can be checked up front."""
    cfg = config if isinstance(config, ExportConfig) else ExportConfig.from_options(config, **options)
    with OutputRun.for_config(cfg) as run, decode_once():  # --out checked and locked; each image decoded once
        inputs = check_inputs(cfg)
        run.begin()  # an earlier run's files moved to OUT/.previous/; OUT/manifest.json is written last
        return _export(cfg, inputs)


def _export(cfg: ExportConfig, inputs: Inputs) -> ExportResult:
    model = load(cfg)
    written: list[Path] = []
    vocab = inputs.vocab
    if cfg.needs_vocabulary and vocab is None:
        vocab = learn(cfg, model, inputs.calib_files)
        written.append(vocab.save(cfg.out / "vocab.safetensors"))
    cmodel = compress(cfg, model, vocab)
    not_measured: list[dict[str, str]] = []
    graphs, verification, engines = [], {}, {}
    if cfg.engines.onnx:
        graphs, verification = export_graphs(cfg, model, cmodel, vocab, inputs)
        graphs += quantize(cfg, model, graphs, inputs, not_measured)
        graphs += split_stages(cfg, graphs, verification_pixels(model, inputs.check_files or inputs.calib_files),
                               verification)
        engines, trunk_engines = build_engines(cfg, graphs, sequence_length(model), model.num_prefix_tokens,
                                               not_measured)
        written += [g.path for g in graphs]
        if engines or trunk_engines:
            from .backends.tensorrt import sidecar_path

            written += [p for e in [*engines.values(), *trunk_engines] for p in (e, sidecar_path(e))]
    else:
        not_measured.append({"what": "ONNX graphs, INT8 variants, engines", "why": "skipped (--skip-export)"})
    torch_check = check_torch(cfg, model, cmodel, inputs) if cfg.checks.enabled else None
    report = None
    if cfg.checks.enabled and graphs:
        variants = check_variants(cfg, model, graphs, engines, inputs, not_measured)
        sweep = None
        if cfg.checks.sweep:
            sweep, sweep_graphs = run_sweep(cfg, model, vocab, graphs, inputs, verification)
            written += sweep_graphs
        polygraphy = polygraphy_files(cfg, model, cmodel, inputs, graphs)
        written += [cfg.out / p for p in ("polygraphy/inputs.json", *polygraphy["outputs"])]
        report, files = write_report(cfg, model, cmodel, vocab, inputs, variants, verification, polygraphy,
                                     not_measured, sweep)
        written += files
    if cfg.engines.triton:
        from .serving import write_repository

        files = [g.path for g in graphs] + list(engines.values())
        written.append(write_repository(cfg.out, files))
        log.info("wrote a Triton model repository in %s: serve it with `vwt-export serve %s`", written[-1], written[-1])
    result = ExportResult(cfg, cfg.out, graphs, engines, verification, torch_check, report, not_measured, written)
    written.append(write_summary(cfg, model, cmodel, vocab, result))  # the summary describes the result it ends
    return result


# -- stages -------------------------------------------------------------------------------------------------


def check_inputs(cfg: ExportConfig) -> Inputs:
    """Every input file and folder, before any slow work, so that mistakes fail in a second."""
    from .check.accuracy import read_labels
    from .data import readable_images
    from .vwt import Vocabulary

    d, c = cfg.data, cfg.compression
    calib = readable_images(d.calib, d.max_images) if d.calib else []
    check = readable_images(d.val, d.max_images) if d.val else (calib if cfg.checks.enabled else [])
    vocab = None
    if c.vocab is not None and not cfg.needs_vocabulary:
        log.warning("--vocab %s is not used: mode %s matches no words", c.vocab, c.mode)
    if cfg.needs_vocabulary and c.vocab is not None:
        vocab = Vocabulary.load(c.vocab, space=c.space)
        if c.space and vocab.space != c.space:
            raise VWTError(f"{c.vocab}: a {vocab.space}-space vocabulary, but --space {c.space} was given")
    if cfg.engines.backend == "trt" and cfg.engines.onnx:
        from .backends.tensorrt import import_tensorrt

        import_tensorrt()  # no TensorRT, no point exporting for it
    labels = read_labels(d.check_folder, check) if check else None
    return Inputs(calib, check, vocab, labels)


def load(cfg: ExportConfig):
    from .models import load_model

    m = cfg.model
    log.info("loading %s (weights: %s)", m.name, m.weights)
    model = load_model(m.name, m.weights, device=cfg.device, **m.args)
    if m.weights == "random":
        log.warning("random weights: outputs are meaningless for accuracy; agreement figures only show that the "
                    "pipeline works")
    return model


def learn(cfg: ExportConfig, model, calib_files: list[Path]):
    from .vwt import learn_vocabulary

    c = cfg.compression
    space = c.space or "image"
    log.info("learning a %d-word %s-space vocabulary from %d images in %s", c.vocab_size, space, len(calib_files),
             cfg.data.calib)
    vocab = learn_vocabulary(model, calib_files, c.vocab_size, space=space, batch_size=cfg.data.batch_size,
                             seed=c.seed, progress=cfg.progress)
    merged = vocab.meta["source"].get("near_duplicates_merged", 0)
    if merged:
        log.info("merged %d near-duplicate words: the vocabulary holds %d", merged, vocab.size)
    return vocab


def compress(cfg: ExportConfig, model, vocab, rounded_copy: bool = False):
    """The torch reference of the compressed model (for a float16 copy of the model, `rounded_copy`)."""
    from .vwt import compress as vwt_compress

    c = cfg.compression
    with warnings.catch_warnings():
        if rounded_copy:  # a float16 copy's patch embedding is the vocabulary's own, rounded: not what this warns of
            warnings.filterwarnings("ignore", "embedding-space vocabulary was learned with other")
        return vwt_compress(model, c.mode, vocab=vocab, threshold=c.threshold, keep=c.keep, space=c.space,
                            prop_attn=c.prop_attn, grouping=c.grouping, r=c.r)


def export_graphs(cfg: ExportConfig, model, cmodel, vocab, inputs: Inputs) -> tuple[list[Graph], dict[str, dict]]:
    """The FP32 graphs (and with --backend trt their float16 twins), each verified against the torch model of
    its precision before the next stage uses it."""
    from .graph.export import cast_model, export_model, save_model
    from .backends.onnxruntime import needs_op_library
    from .graph.surgery import make_portable

    c = cfg.compression
    pixels = verification_pixels(model, inputs.check_files or inputs.calib_files).to(cfg.device)
    graphs: list[Graph] = []
    verification: dict[str, dict] = {}
    for precision in artefacts.exported_precisions(cfg.engines.backend):
        typed = cast_model(model, precision)
        ctyped = cmodel if typed is model else compress(cfg, typed, vocab, rounded_copy=True)
        log.info("exporting the %s baseline to ONNX", precision.upper())
        base = export_model(typed, precision=precision)
        protos = [(Variant("", precision), False, base, _float32_in(typed))]
        variant = Variant(cfg.method, precision)
        if cfg.method == "vwt":
            vwt = vwt_graph(base, c, ctyped, vocab, typed.global_pool)
            protos.append((variant, False, vwt, ctyped))
            if needs_op_library(vwt):  # intra graphs are standard ops already: no portable twin
                protos.append((variant, True, make_portable(vwt), ctyped))
        elif cfg.method == "tome" and precision != "fp32":
            log.warning("ToMe is exported in FP32 only (its float16 graph is untested); no %s ToMe graph", precision)
        elif cfg.method == "tome":
            from .graph.tome_export import export_tome

            log.info("exporting ToMe (merges per block: %s) to ONNX", ctyped.block_r)
            protos.append((variant, False, export_tome(ctyped, check=False), ctyped))
        for variant, portable, proto, reference in protos:
            path = save_model(proto, cfg.out / variant.onnx_file(portable))
            graphs.append(Graph(variant, portable, path))
            verification[path.name] = verify(path, reference, pixels, precision)
    return graphs, verification


def vwt_graph(base, c, reference, vocab, pooling: str):
    """The baseline graph with VWT compression `c` (a Compression) inserted, as `reference` (its torch model) does."""
    from .graph.surgery import apply_vwt
    from .vwt.intra import resolve_keep

    return apply_vwt(base, c.mode, vocab=vocab.words.numpy() if vocab is not None else None, threshold=c.threshold,
                     keep=resolve_keep(c.keep, reference.num_patches), space=reference.space, prop_attn=c.prop_attn,
                     pooling=pooling, grouping=c.grouping)


def verify(path: Path, reference, pixels, precision: str) -> dict:
    """FP32 graphs must verify (a miss is an error); FP16 misses and a missing op library are warnings."""
    from .check.verify import verify_graph
    from .errors import OpLibraryMissing

    try:
        v = verify_graph(path, reference, pixels, precision)
    except VWTError as e:
        if precision == "fp32" and not isinstance(e, OpLibraryMissing):
            raise
        log.warning("%s written but not verified: %s", path.name, e)
        return {"file": path.name, "verified": False, "reason": str(e)}
    ties = (f"; {v.near_ties} near-tie patches in {v.images_with_near_ties} images ({v.matches_differ} matched "
            "differently, all of them at near-ties)" if v.near_ties else "")
    log.info("verified %s against torch (%s) on %d images: max relative error %.1e%s", path.name, precision,
             len(pixels), v.max_rel_err, ties)
    return v.as_dict()


def _float32_in(model):
    """The model taking float32 pixels whatever its dtype, as its ONNX export does (CompressedViT already does)."""
    dtype = model.patch_embed.proj.weight.dtype
    return model if dtype == torch.float32 else (lambda pixels: model(pixels.to(dtype)))


def verification_pixels(model, files: list[Path]) -> torch.Tensor:
    """Up to 8 check images (a batch with padding in it), or seeded noise when there are none."""
    if files:
        return torch.from_numpy(_pixels(model, files, 8))
    c, (h, w) = model.patch_embed.proj.in_channels, model.patch_embed.img_size
    return torch.randn(4, c, h, w, generator=torch.Generator().manual_seed(0))


def _pixels(model, files: list[Path], limit: int) -> np.ndarray:
    """The first `limit` images of `files` that decode, preprocessed for `model`."""
    from .data import iter_image_batches
    from .models import transform

    batches, count = [], 0
    for batch, _ in iter_image_batches(files, transform(model), min(limit, 16)):
        batches.append(batch.numpy())
        count += len(batch)
        if count >= limit:
            break
    return np.concatenate(batches)[:limit]


def quantize(cfg: ExportConfig, model, graphs: list[Graph], inputs: Inputs, not_measured: list) -> list[Graph]:
    """INT8 twins (explicit Q/DQ) of the FP32 graphs, calibrated on the calibration images."""
    import onnx

    from .graph import ops
    from .graph.export import save_model
    from .graph.quantize import quantize_int8

    if not cfg.engines.int8:
        not_measured.append({"what": "INT8 variants", "why": "skipped (--skip-int8)"})
        return []
    if not inputs.calib_files:
        not_measured.append({"what": "INT8 variants", "why": "no --calib images to calibrate on (validation "
                             "images are never used for calibration)"})
        return []
    source = [g for g in graphs if g.variant.precision == "fp32" and not g.portable]
    pixels = _pixels(model, inputs.calib_files, 32)
    batches = [pixels[i : i + 8] for i in range(0, len(pixels), 8)]
    out = []
    for g in source:
        variant = Variant(g.variant.method, "int8")
        log.info("quantizing %s to INT8 (Q/DQ, calibrated on %d images)", g.path.name, len(pixels))
        q = quantize_int8(onnx.load(str(g.path)), batches, portable=True, quantize_attention=cfg.engines.int8_attention,
                          calibration=cfg.engines.int8_calibration)
        if artefacts.find(graphs, g.variant, portable=True):  # the portable form first: it keeps the vwt bodies
            out.append(Graph(variant, True, save_model(q, cfg.out / variant.onnx_file(portable=True))))
            kept = [f for f in q.functions if f.domain != ops.DOMAIN]
            del q.functions[:]
            q.functions.extend(kept)
        out.append(Graph(variant, False, save_model(q, cfg.out / variant.onnx_file())))
    return out


def split_stages(cfg: ExportConfig, graphs: list[Graph], pixels: torch.Tensor, verification: dict) -> list[Graph]:
    """Inter mode: each VWT graph (FP32, INT8) again as tokenize + trunk, for length-aware batching; the pair is
    checked against the one graph (itself verified against torch) on the verification images."""
    import onnx

    from .check.verify import relative_error
    from .graph.export import save_model
    from .graph.stages import split_stages as split
    from .runtime import load

    if cfg.compression.mode != "inter":
        return []
    out = []
    x = pixels.cpu().numpy()
    for g in [g for g in graphs if g.variant.method == "vwt" and not g.portable and g.variant.precision != "fp16"]:
        tokenize, trunk = (Graph(g.variant, False, save_model(proto, cfg.out / g.variant.stage_file(stage)), stage)
                           for stage, proto in zip(("tokenize", "trunk"), split(onnx.load(str(g.path)))))
        out += [tokenize, trunk]
        # the same ops on the same values, but the trunk may see shorter sequences: float sums round differently
        # (by an ulp), and in an INT8 graph such an ulp moves values across quantisation steps, which adds up over
        # the blocks (measured on DeiT-S: 3.3e-2 relative, about INT8's own distance from FP32). A miswired split
        # is off by the order of the outputs themselves.
        rtol = 1e-5 if g.variant.precision == "fp32" else 1e-1
        err = relative_error(load(g.path)(x), load(tokenize.path)(x), tokenize.path.name)
        verification[tokenize.path.name] = {"file": tokenize.path.name, "verified": err <= rtol, "max_rel_err": err,
                                            "against": g.path.name}
        if err > rtol:
            raise VWTError(f"{tokenize.path.name} + {trunk.path.name} differ from {g.path.name} by {err:.1e} "
                           f"(relative), over the {rtol:.0e} tolerance")
        log.info("split %s into %s + %s for length-aware batching: together they agree with it (max relative error "
                 "%.1e)", g.path.name, tokenize.path.name, trunk.path.name, err)
    return out


def build_engines(cfg: ExportConfig, graphs: list[Graph], tokens_in: int, num_prefix: int,
                  not_measured: list) -> tuple[dict[Variant, Path], list[Path]]:
    """--backend trt: a TensorRT engine (+ JSON sidecar) per variant, strongly typed from the graph of its
    precision; VWT variants from the plugin graphs when the plugin library exists, else the portable ones. Also
    the trunk stages' engines, with an optimisation profile over the token count (P+1 to P+N), for length-aware
    batching. Returns ({variant: engine}, [trunk engines])."""
    if cfg.engines.backend != "trt":
        return {}, []
    from .backends import tensorrt as vtrt
    from .plugins import trt_plugin_library

    trt, flavour = vtrt.import_tensorrt()
    try:
        plugin = trt_plugin_library()
    except VWTError:
        plugin = None
    if plugin is None and cfg.compression.mode == "inter":
        not_measured.append({"what": "TensorRT plugin path", "why": "libvwt_trt_plugin.so is not built (no TensorRT "
                             "headers at build time); the VWT engines are built from the portable graphs"})
    engines, trunks = {}, []
    # custom-op graphs need the plugin; without it their portable twins (where a graph has one) go to TensorRT
    plan = [(v, "", artefacts.find(graphs, v, portable=plugin is None and artefacts.find(graphs, v, True) is not None))
            for v in artefacts.in_order({g.variant for g in graphs})]
    plan += [(g.variant, "trunk", g) for g in graphs if g.stage == "trunk"]
    for variant, stage, source in plan:
        engine = cfg.out / variant.engine_file(stage)
        log.info("building TensorRT engine %s (%s %s, from %s)", engine.name, flavour, trt.__version__, source.path.name)
        # the profile covers the timed batches and the evaluation pass's batch size
        settings = vtrt.BuildSettings(precision=variant.precision,
                                      batches=sorted({*cfg.checks.batches, cfg.data.batch_size}),
                                      compute_capability=cfg.engines.trt_target,
                                      timing_cache=str(cfg.out / "timing.cache"),
                                      tokens=(num_prefix + 1, (tokens_in + num_prefix + 1) // 2, tokens_in)
                                      if stage else None)
        try:
            vtrt.build_engine(source.path, engine, settings)
        except VWTError as e:
            not_measured.append({"what": f"TensorRT {engine.name}", "why": str(e)})
            log.warning("%s", e)
            continue
        if stage:
            trunks.append(engine)
        else:
            engines[variant] = engine
    return engines, trunks


def check_torch(cfg: ExportConfig, model, cmodel, inputs: Inputs) -> dict:
    """Tokens kept and agreement with the uncompressed model, on the torch path."""
    from tqdm.auto import tqdm

    from .check.accuracy import compare
    from .models import transform

    with tqdm(total=len(inputs.check_files), desc="checking (torch)", unit="img", disable=not cfg.progress) as bar:
        a = compare(model, cmodel, inputs.check_files, transform(model), cfg.data.batch_size, cfg.device,
                    progress=bar.update)
    return {"images_from": str(cfg.data.check_folder), **a.as_dict(), "counts": a.counts}


def check_variants(cfg: ExportConfig, model, graphs: list[Graph], engines: dict[Variant, Path], inputs: Inputs,
                   not_measured: list) -> dict[str, dict]:
    """Every variant over the check images: fidelity to FP32, accuracy with labels, tokens, latency, energy.
    One runner per variant serves every measurement."""
    from tqdm.auto import tqdm

    from .check import energy, latency
    from .check.variants import Candidate, evaluate, load_runner, merge_share, outputs, token_stats
    from .models import is_headless, transform

    # ONNX Runtime's CPU provider runs float16 slower than float32: FP16 is timed on TensorRT only
    ort_graphs = {g.variant: g.path for g in graphs if not (g.portable or g.stage) and g.variant.precision != "fp16"}
    candidates = [Candidate(v.label("ort"), v, ort_graphs[v]) for v in artefacts.in_order(ort_graphs)]
    if engines:
        try:
            from .backends.tensorrt import current_gpu

            if cfg.engines.trt_target:
                raise VWTError(f"engines were built ahead of time for {cfg.engines.trt_target.upper()}; run them "
                               "there (vwt_export.runtime.load checks that the GPU matches)")
            current_gpu()
            candidates += [Candidate(v.label("trt"), v, engines[v], "tensorrt") for v in artefacts.in_order(engines)]
        except VWTError as e:
            not_measured.append({"what": "TensorRT engines (accuracy, latency)", "why": f"not run: {e}"})
    runners = {c.label: load_runner(c) for c in candidates}
    headless = is_headless(model)
    with tqdm(total=len(inputs.check_files), desc="evaluating variants", unit="img", disable=not cfg.progress) as bar:
        logits, tokens, used = outputs(candidates, runners, inputs.check_files, transform(model),
                                       cfg.data.batch_size, progress=bar.update)
    labels = inputs.labels_of(used)
    results = evaluate(candidates, logits, labels, headless)
    batches = cfg.checks.batches
    pixels = _pixels(model, inputs.check_files, max(batches))
    feeds = {b: np.resize(pixels, (b, *pixels.shape[1:])) for b in batches}
    timed = dict(runners)
    length_aware = {}  # variants whose batches > 1 run through the two stages (runtime.load on the tokenize graph)
    for c in candidates:
        tokenize = artefacts.find(graphs, c.variant, stage="tokenize") if not c.on_tensorrt else None
        if tokenize is not None:
            from .runtime import load as load_runtime

            length_aware[c.label] = tokenize.path.name
            timed[c.label] = lambda x, one=runners[c.label], staged=load_runtime(tokenize.path): (
                one(x) if len(x) == 1 else staged(x))
    with tqdm(total=3 + cfg.checks.reps, desc="timing (interleaved)", unit="rep", disable=not cfg.progress) as bar:
        timing = latency.measure(timed, feeds, warmup=3, reps=cfg.checks.reps, progress=bar.update)
    tokens_in = sequence_length(model)
    out = {}
    for c in candidates:
        if c.variant.compressed:
            measured = tokens.get(c.label)
            counts = token_stats(measured) if measured else None
        else:
            counts = token_stats([tokens_in] * len(used))
        r = results[c.label]
        r["tokens"] = counts
        r["latency"] = timing[c.label]
        if c.on_tensorrt:
            r["energy"] = energy.measure_gpu(lambda f=runners[c.label]: f(feeds[max(batches)]), max(batches))
        else:
            r["energy"] = energy.measure_cpu_variant()
        r["merge_share"] = merge_share(c.path, pixels[:4]) if c.variant.compressed and not c.on_tensorrt else None
        out[c.label] = {"file": c.path.name, "backend": c.backend, "precision": c.variant.precision,
                        "vwt": c.variant.compressed, "method": c.variant.method or "none",
                        "batching": f"length-aware ({length_aware[c.label]} + trunk)" if c.label in length_aware
                        else "padded", **r}
    if any(c.on_tensorrt and c.variant.compressed for c in candidates):
        not_measured.append({"what": "tokens of the TensorRT engines", "why": "an engine returns logits only"})
    not_measured.append({"what": "FP16 variants on ONNX Runtime CPU", "why": "CPUs without native float16 "
                         "arithmetic run float16 graphs slower than float32 (DeiT-S batch 1 on this project's CI "
                         "machine: 72 ms vs 53 ms), so FP16 is timed on TensorRT only; --backend trt writes and "
                         "verifies model.fp16.onnx and model.vwt.fp16.onnx"})
    not_measured.append({"what": "energy", "why": energy.measure_cpu_variant()["reason"]})
    if headless:
        not_measured.append({"what": "accuracy and top-k agreement", "why": "the model has no classifier head "
                             "(num_classes=0): its outputs are features, so fidelity is their cosine to FP32"})
    elif labels is None:
        not_measured.append({"what": "accuracy", "why": f"{cfg.data.check_folder} has no labels (class subfolders "
                             "or a labels file); fidelity to FP32 is reported instead"})
    return out


def run_sweep(cfg: ExportConfig, model, vocab, graphs: list[Graph], inputs: Inputs,
              verification: dict) -> tuple[dict, list[Path]]:
    """--sweep: every setting exported, verified and measured with the run's FP32 and INT8 graphs on the same
    images, in one interleaved timing run; ranked, with the Pareto front, and plotted."""
    import dataclasses

    import onnx

    from .check import latency, sweep as sw
    from .check.accuracy import accuracy, fidelity
    from .check.variants import Candidate, load_runner, outputs
    from .graph.export import save_model
    from .models import is_headless, transform

    c = cfg.compression
    base_path = artefacts.find(graphs, Variant("", "fp32")).path
    base = onnx.load(str(base_path))
    pixels = verification_pixels(model, inputs.check_files)
    candidates = [Candidate(v.name, v, artefacts.find(graphs, v).path) for v in (Variant("", "fp32"), Variant("", "int8"))
                  if artefacts.find(graphs, v)]
    methods = {v.name: ("fp32" if v.precision == "fp32" else "int8") for v in (cd.variant for cd in candidates)}
    files = []
    for setting in sw.settings(cfg.checks.sweep, c.threshold, c.grouping):
        params = dict(setting.params)
        log.info("sweep: exporting %s", setting.label)
        if setting.method == "tome":
            from .graph.tome_export import export_tome

            reference = compress(cfg.replace(compression=dataclasses.replace(c, mode="tome", r=params["r"])), model,
                                 vocab)
            proto = export_tome(reference, check=False)  # verified below, near-ties counted
        else:
            mode = "inter" if setting.method == "vwt" else "intra"
            setting_cfg = dataclasses.replace(c, mode=mode, **{"grouping": "global", **params})
            reference = compress(cfg.replace(compression=setting_cfg), model, vocab)
            proto = vwt_graph(base, setting_cfg, reference, vocab, model.global_pool)
        path = save_model(proto, cfg.out / "sweep" / setting.file)
        files.append(path)
        verification[f"sweep/{path.name}"] = verify(path, reference, pixels, "fp32")
        candidates.append(Candidate(setting.label, Variant("tome" if setting.method == "tome" else "vwt", "fp32"), path))
        methods[setting.label] = setting.method
    runners = {cd.label: load_runner(cd) for cd in candidates}
    logits, tokens, used = outputs(candidates, runners, inputs.check_files, transform(model), cfg.data.batch_size)
    labels = inputs.labels_of(used)
    use_accuracy = labels is not None and not is_headless(model)
    images = _pixels(model, inputs.check_files, 8)
    per_image = {name: (lambda _x, f=f: [f(images[i : i + 1]) for i in range(len(images))]) for name, f in runners.items()}
    timing = latency.measure(per_image, {1: images[:1]}, warmup=2, reps=cfg.checks.reps)
    tokens_in = sequence_length(model)
    rows = []
    for cd in candidates:
        quality = (accuracy(logits[cd.label], labels)["top1"] if use_accuracy
                   else fidelity(logits["fp32"], logits[cd.label], headless=True)["cosine_similarity"])
        counts = tokens.get(cd.label)
        rows.append({"label": cd.label, "method": methods[cd.label], "file": str(cd.path.relative_to(cfg.out)),
                     "quality": quality, "tokens": (sum(counts) / len(counts)) if counts else
                     (tokens_in if methods[cd.label] in ("fp32", "int8") else None),
                     "latency_ms": timing[cd.label][1]["p50_ms"] / len(images)})
    result = {"images": len(inputs.check_files), "quality": "top-1 accuracy" if use_accuracy else
              "cosine of the outputs to FP32", "ranked": sw.rank(rows), "plot": "plots/tradeoff.png"}
    sw.plot_tradeoff(result["ranked"], result["quality"], cfg.out / result["plot"])
    return result, files + [cfg.out / result["plot"]]


def polygraphy_files(cfg: ExportConfig, model, cmodel, inputs: Inputs, graphs: list[Graph]) -> dict:
    """Check inputs and torch FP32 reference outputs in Polygraphy's JSON format, and the commands to use them."""
    from polygraphy.comparator import RunResults
    from polygraphy.comparator.struct import IterationResult
    from polygraphy.json import save_json
    from polygraphy.logger import G_LOGGER

    from .atomic import atomic_path

    G_LOGGER.module_severity = G_LOGGER.ERROR  # its per-file "Saving inference results" lines are noise here
    folder = cfg.out / "polygraphy"
    folder.mkdir(parents=True, exist_ok=True)
    pixels = _pixels(model, inputs.check_files, 8)
    with atomic_path(folder / "inputs.json") as tmp:
        save_json([{"pixels": pixels}], str(tmp))
    references = [(Variant("", "fp32"), model)]
    if cfg.method:
        references.append((Variant(cfg.method, "fp32"), cmodel))
    outputs, commands = {}, []
    with torch.no_grad():
        for variant, module in references:
            name = f"polygraphy/{variant.onnx_file().removesuffix('.onnx')}.outputs.json"
            results = RunResults()
            logits = module(torch.from_numpy(pixels).to(cfg.device)).float().cpu().numpy()
            results.append(("torch-fp32", [IterationResult({"logits": logits}, runner_name="torch-fp32")]))
            with atomic_path(cfg.out / name) as tmp:
                results.save(str(tmp))
            outputs[name] = f"torch fp32 {variant.name}"
            # a graph whose matches sit on near-ties may differ from torch there: the run's verification counts them
            commands += [f"polygraphy run {g.path} --onnxrt --load-inputs {folder / 'inputs.json'} --load-outputs "
                         f"{cfg.out / name} --atol 1e-4 --rtol 1e-3"
                         for g in graphs if g.variant == variant and not g.stage]
    return {"inputs": "polygraphy/inputs.json", "outputs": outputs, "commands": commands}


def write_report(cfg: ExportConfig, model, cmodel, vocab, inputs: Inputs, variants: dict, verification: dict,
                 polygraphy: dict, not_measured: list, sweep: dict | None) -> tuple[dict, list[Path]]:
    import datetime
    import os

    import onnx
    import onnxruntime
    import timm

    from . import __version__
    from .check import report as rep
    from .models import is_headless

    report = {
        "schema": rep.SCHEMA, "version": rep.VERSION,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": cfg.command,
        "model": {**_model_facts(cfg, model, cmodel), "headless": is_headless(model),
                  "num_prefix_tokens": model.num_prefix_tokens, "num_patches": model.patch_embed.num_patches},
        "settings": _settings(cfg, cmodel, vocab),
        "environment": {"python": platform.python_version(), "platform": platform.platform(),
                        "processor": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
                        "torch": torch.__version__, "timm": timm.__version__, "onnx": onnx.__version__,
                        "onnxruntime": onnxruntime.__version__, "vwt_export": __version__, "gpu": None},
        "images": {"folder": str(cfg.data.check_folder), "count": len(inputs.check_files),
                   "labelled": inputs.labels is not None,
                   "calib": str(cfg.data.calib) if cfg.data.calib else None, "calib_count": len(inputs.calib_files)},
        "variants": variants,
        "verification": verification,
        "not_measured": not_measured,
        "polygraphy": polygraphy,
        **({"sweep": sweep} if sweep else {}),
        "plots": [],
    }
    if cfg.compression.mode == "inter":
        from .check.merges import plot_merges

        plot_merges(model, cmodel, verification_pixels(model, inputs.check_files), cfg.out / "plots" / "merges.png")
        report["plots"].append("plots/merges.png")
    return report, rep.write(report, cfg.out)


def write_summary(cfg: ExportConfig, model, cmodel, vocab, result: ExportResult) -> Path:
    import timm

    from . import __version__
    from .atomic import write_text

    summary = {
        **_model_facts(cfg, model, cmodel), "mode": cfg.compression.mode, "command": cfg.command,
        "settings": _settings(cfg, cmodel, vocab),
        "versions": {"vwt_export": __version__, "torch": torch.__version__, "timm": timm.__version__,
                     "python": platform.python_version()},
        "onnx": result.verification, "near_ties": result.near_ties,
        "engines": {v.name: {"file": p.name, "from": json.loads(Path(f"{p}.json").read_text())["onnx"]["file"]}
                    for v, p in result.engines.items()},
        "not_measured": result.not_measured,
    }
    if result.torch_check is not None:
        summary["torch_check"] = {k: v for k, v in result.torch_check.items() if k != "counts"}
    path = cfg.out / "summary.json"
    write_text(path, json.dumps(summary, indent=2) + "\n")
    return path


def _model_facts(cfg: ExportConfig, model, cmodel) -> dict:
    return {"name": cfg.model.name, "timm_name": model.default_cfg.get("architecture"), "weights": cfg.model.weights,
            "weights_meaningful": cfg.model.weights != "random", "tokens_in": cmodel.tokens_in}


def _settings(cfg: ExportConfig, cmodel, vocab) -> dict:
    c = cfg.compression
    settings: dict[str, Any] = {"mode": c.mode, "model_args": dict(cfg.model.args), "prop_attn": c.prop_attn}
    if c.mode == "intra":
        settings.update(keep=c.keep, space=cmodel.space)
    if c.mode == "inter":
        settings.update(threshold=c.threshold, space=cmodel.space, grouping=c.grouping, vocab_size=vocab.size,
                        vocab=str(c.vocab or cfg.out / "vocab.safetensors"))
    if c.mode == "tome":
        settings.update(r=list(cmodel.block_r), r_requested=c.r, prop_attn=True, block_tokens=list(cmodel.block_tokens))
    return settings
