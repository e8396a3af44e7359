"""OUT/polygraphy/: the check inputs and torch's FP32 outputs in Polygraphy's JSON format, and the `polygraphy run`
commands that compare a graph against them (report.md prints them; the vwt op library loads by itself through
the polygraphy_ext extension)."""

from __future__ import annotations

import torch

from ..artefacts import Graph, Variant
from ..atomic import atomic_path


def polygraphy_files(run, cmodel, graphs: list[Graph]) -> dict:
    """Check inputs and torch FP32 reference outputs in Polygraphy's JSON format, and the commands to use them."""
    from polygraphy.comparator import RunResults
    from polygraphy.comparator.struct import IterationResult
    from polygraphy.json import save_json
    from polygraphy.logger import G_LOGGER

    cfg = run.cfg
    G_LOGGER.module_severity = G_LOGGER.ERROR  # its per-file "Saving inference results" lines are noise here
    folder = cfg.out / "polygraphy"
    folder.mkdir(parents=True, exist_ok=True)
    pixels = run.images.pixels[:8]
    with atomic_path(folder / "inputs.json") as tmp:
        save_json([{"pixels": pixels}], str(tmp))
    references = [(Variant("", "fp32"), run.model)]
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
    run.written += [cfg.out / p for p in ("polygraphy/inputs.json", *outputs)]
    return {"inputs": "polygraphy/inputs.json", "outputs": outputs, "commands": commands}
