"""`export(config) -> ExportResult`: the whole job, the stages in order. The only module that knows them all.

    import vwt_export as vx
    result = vx.export("deit_s", mode="inter", calib="calib/", val="val/")      # or vx.export(ExportConfig(...))
    result.graph("vwt")            # Path of model.vwt.onnx
    result.report["variants"]      # accuracy / fidelity, tokens, latency, energy of every variant

    check inputs -> load model -> vocabulary -> compress -> ONNX graphs (verified) -> INT8 -> stages -> TensorRT
    engines -> torch check -> every variant measured -> sweep -> polygraphy files -> report.json/md -> summary.json

Each stage is a function of what earlier stages returned; the work itself lives in the packages below (methods,
vwt, graph, backends, check). One run context (check/context.py) carries the check images, decoded once, and
collects what was verified and what was not measured. Progress goes to the `vwt_export` logger (the CLI prints
it) and to tqdm bars.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

from . import artefacts, methods
from .artefacts import Graph, Variant
from .check.context import ExportResult, Run, read_inputs
from .config import ExportConfig
from .data import decode_once
from .errors import VWTError
from .outdir import OutputRun

log = logging.getLogger("vwt_export")


def export(config: ExportConfig | str, **options: Any) -> ExportResult:
    """Run the whole job. `config` is an ExportConfig, or a model name with the command line's options as
    keyword arguments (`vx.export("deit_s", mode="intra", keep=0.5, val="val/")`). Raises VWTError on bad input,
    before any slow work wherever the input can be checked up front."""
    cfg = config if isinstance(config, ExportConfig) else ExportConfig.from_options(config, **options)
    with OutputRun.for_config(cfg) as folder, decode_once():  # --out checked and locked; each image decoded once
        inputs = read_inputs(cfg)
        folder.begin()  # an earlier run's files moved to OUT/.previous/; OUT/manifest.json is written last
        return _export(cfg, inputs)


def _export(cfg: ExportConfig, inputs) -> ExportResult:
    from .check.accuracy import check_torch
    from .check.polygraphy import polygraphy_files
    from .check.report import write_report, write_summary
    from .check.sweep import run_sweep
    from .check.variants import measure_variants

    run = Run(cfg, load(cfg), inputs)
    vocab = inputs.vocab
    if cfg.needs_vocabulary and vocab is None:
        vocab = learn(run)
        run.written.append(vocab.save(cfg.out / "vocab.safetensors"))
    cmodel = compress(cfg.compression.spec, run.model, vocab)
    graphs, engines = [], {}
    if cfg.engines.onnx:
        graphs = export_graphs(run, cmodel, vocab)
        graphs += quantize(run, graphs)
        graphs += split_stages(run, graphs)
        run.written += [g.path for g in graphs]
        engines = build_engines(run, graphs)
    else:
        run.note("ONNX graphs, INT8 variants, engines", "skipped (--skip-export)")
    torch_check = check_torch(run, cmodel) if cfg.checks.enabled else None
    report = None
    if cfg.checks.enabled and graphs:
        variants = measure_variants(run, graphs, engines)
        sweep = run_sweep(run, graphs, vocab) if cfg.checks.sweep else None
        polygraphy = polygraphy_files(run, cmodel, graphs)
        report = write_report(run, cmodel, vocab, variants, polygraphy, sweep)
    if cfg.engines.triton:
        from .serving import write_repository

        run.written.append(write_repository(cfg.out, [g.path for g in graphs] + list(engines.values())))
        log.info("wrote a Triton model repository in %s: serve it with `vwt-export serve %s`", run.written[-1],
                 run.written[-1])
    result = run.result(graphs, engines, torch_check, report)
    run.written.append(write_summary(run, cmodel, vocab, result))  # the summary describes the result it ends
    return result


# -- stages -------------------------------------------------------------------------------------------------


def load(cfg: ExportConfig):
    from .models import load_model

    m = cfg.model
    log.info("loading %s (weights: %s)", m.name, m.weights)
    model = load_model(m.name, m.weights, device=cfg.device, **m.args)
    if m.weights == "random":
        log.warning("random weights: outputs are meaningless for accuracy; agreement figures only show that the "
                    "pipeline works")
    return model


def learn(run: Run):
    from .vwt import learn_vocabulary

    cfg, c = run.cfg, run.cfg.compression
    space = c.spec.values.get("space") or "image"
    files = run.inputs.calib_files
    log.info("learning a %d-word %s-space vocabulary from %d images in %s", c.vocab_size, space, len(files),
             cfg.data.calib)
    vocab = learn_vocabulary(run.model, files, c.vocab_size, space=space, batch_size=cfg.data.batch_size,
                             seed=c.seed, progress=cfg.progress)
    merged = vocab.meta["source"].get("near_duplicates_merged", 0)
    if merged:
        log.info("merged %d near-duplicate words: the vocabulary holds %d", merged, vocab.size)
    return vocab


def compress(spec: methods.Spec, model, vocab, rounded_copy: bool = False):
    """The torch reference of the compressed model (for a float16 copy of the model, `rounded_copy`)."""
    with warnings.catch_warnings():
        if rounded_copy:  # a float16 copy's patch embedding is the vocabulary's own, rounded: not what this warns of
            warnings.filterwarnings("ignore", "embedding-space vocabulary was learned with other")
        return methods.get(spec.method).build(model, spec, vocab)


def export_graphs(run: Run, cmodel, vocab) -> list[Graph]:
    """The FP32 graphs (and with --backend trt their float16 twins), each verified against the torch model of
    its precision before the next stage uses it; a portable twin for a graph that holds vwt ops."""
    from .backends.onnxruntime import needs_op_library
    from .graph.export import cast_model, export_model, float32_in, save_model
    from .graph.surgery import make_portable

    cfg, spec, method = run.cfg, run.cfg.compression.spec, run.cfg.compression.method
    graphs: list[Graph] = []
    for precision in artefacts.exported_precisions(cfg.engines.backend):
        typed = cast_model(run.model, precision)
        log.info("exporting the %s baseline to ONNX", precision.upper())
        base = export_model(typed, precision=precision)
        protos = [(Variant("", precision), False, base, float32_in(typed))]
        variant = Variant(method.variant, precision)
        if variant.compressed and precision not in method.precisions:
            log.warning("%s graphs are exported in %s only; no %s one", method.name, ", ".join(method.precisions),
                        precision)
        elif variant.compressed:
            reference = cmodel if typed is run.model else compress(spec, typed, vocab, rounded_copy=True)
            log.info("exporting %s to ONNX", variant.onnx_file())
            proto = method.graph(base, reference, spec)
            protos.append((variant, False, proto, reference))
            if needs_op_library(proto):  # graphs of standard ops only need no portable twin
                protos.append((variant, True, make_portable(proto), reference))
        for variant, portable, proto, reference in protos:
            path = save_model(proto, cfg.out / variant.onnx_file(portable))
            graphs.append(Graph(variant, portable, path))
            run.verify(path, reference, precision)
    return graphs


def quantize(run: Run, graphs: list[Graph]) -> list[Graph]:
    """INT8 twins (explicit Q/DQ) of the FP32 graphs, calibrated on the calibration images, each measured against
    the FP32 graph it comes from."""
    import onnx

    from .graph import ops, quantize as q8
    from .graph.export import save_model

    cfg = run.cfg
    if not cfg.engines.int8:
        run.note("INT8 variants", "skipped (--skip-int8)")
        return []
    if not run.inputs.calib_files:
        run.note("INT8 variants", "no --calib images to calibrate on (validation images are never used for "
                 "calibration)")
        return []
    pixels = run.calibration
    batches = [pixels[i : i + 8] for i in range(0, len(pixels), 8)]
    out = []
    for g in [g for g in graphs if g.variant.precision == "fp32" and not g.portable]:
        variant = Variant(g.variant.method, "int8")
        log.info("quantizing %s to INT8 (Q/DQ, calibrated on %d images)", g.path.name, len(pixels))
        q = q8.quantize_int8(onnx.load(str(g.path)), batches, portable=True,
                             quantize_attention=cfg.engines.int8_attention, calibration=cfg.engines.int8_calibration)
        if artefacts.find(graphs, g.variant, portable=True):  # the portable form first: it keeps the vwt bodies
            out.append(Graph(variant, True, save_model(q, cfg.out / variant.onnx_file(portable=True))))
            kept = [f for f in q.functions if f.domain != ops.DOMAIN]
            del q.functions[:]
            q.functions.extend(kept)
        out.append(Graph(variant, False, save_model(q, cfg.out / variant.onnx_file())))
    for g in out:
        run.measure(g.path, artefacts.find(graphs, Variant(g.variant.method, "fp32")).path)
    return out


def split_stages(run: Run, graphs: list[Graph]) -> list[Graph]:
    """Methods with stages: each of their graphs (FP32, INT8) again as tokenize + trunk, for length-aware
    batching, each pair against its one graph on the verification images: an FP32 pair verified, an INT8 pair
    measured."""
    import onnx

    from .check.verify import check_stage_pair
    from .graph import stages
    from .graph.export import save_model

    if not run.cfg.compression.method.stages:
        return []
    out = []
    x = run.verification_pixels.cpu().numpy()
    for g in [g for g in graphs if g.variant.compressed and not g.portable and g.variant.precision != "fp16"]:
        tokenize, trunk = (Graph(g.variant, False, save_model(proto, run.cfg.out / g.variant.stage_file(stage)), stage)
                           for stage, proto in zip(("tokenize", "trunk"), stages.split_stages(onnx.load(str(g.path)))))
        out += [tokenize, trunk]
        if g.variant.precision == "int8":
            run.measure(tokenize.path, g.path, name=f"{tokenize.path.name} + {trunk.path.name}")
        else:
            run.verification[tokenize.path.name] = check_stage_pair(tokenize.path, trunk.path, g.path, x)
    return out


def build_engines(run: Run, graphs: list[Graph]) -> dict[Variant, Path]:
    """--backend trt: a TensorRT engine (+ JSON sidecar) per variant, strongly typed from the graph of its
    precision; VWT variants from the plugin graphs when the plugin library exists, else the portable ones. Also
    the trunk stages' engines, with an optimisation profile over the token count (P+1 to P+N), for length-aware
    batching. Returns {variant: engine}; every engine and sidecar is recorded as written."""
    cfg = run.cfg
    if cfg.engines.backend != "trt":
        return {}
    from .backends import tensorrt as vtrt
    from .models import sequence_length
    from .plugins import trt_plugin_library

    trt, flavour = vtrt.import_tensorrt()
    try:
        plugin = trt_plugin_library()
    except VWTError:
        plugin = None
    if plugin is None and any(g.portable for g in graphs):
        run.note("TensorRT plugin path", "libvwt_trt_plugin.so is not built (no TensorRT headers at build time); the "
                 "VWT engines are built from the portable graphs")
    tokens_in, num_prefix = sequence_length(run.model), run.model.num_prefix_tokens
    engines = {}
    for variant, stage, source in artefacts.engine_sources(graphs, plugin is not None):
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
            run.note(f"TensorRT {engine.name}", str(e))
            log.warning("%s", e)
            continue
        run.written += [engine, vtrt.sidecar_path(engine)]
        if not stage:
            engines[variant] = engine
    return engines
