"""Write OUT/triton/, a Triton Inference Server model repository for the files an export wrote.

    write_repository(Path("OUT"))                       # finds model.onnx, model.vwt*.onnx, *.engine in OUT
    write_repository(Path("OUT"), files=result.written, op_library=plugins.ort_library())

Models written (each MODEL/config.pbtxt + MODEL/1/<file>, configs checked by our parser before they are written):

    baseline_python, vwt_python   Python backend running vwt_export.runtime: the uncompressed model and VWT
                                  (length-aware batching when model.vwt.tokenize.onnx + model.vwt.trunk.onnx exist).
                                  These serve on the tritonserver of the nvidia-pytriton wheel (`vwt-export serve`).
    baseline_ort, vwt_ort, ...    onnxruntime backend, one per graph (model.onnx, model.vwt.onnx, INT8 twins); the
                                  custom-op graphs name the repository's copy of the vwt op library, by absolute path,
                                  in model_operations { op_library_filename }; the portable ones (vwt_portable_ort)
                                  need no library at all.
    vwt_fp16_trt, ...             tensorrt backend, one per engine (MODEL/1/model.plan). The vwt TensorRT plugin is
                                  loaded by the server, not by a model: README.md in the repository gives the
                                  --backend-config=tensorrt,plugins=... line.

Production models (onnxruntime, tensorrt) are UNVERIFIED on a server: the wheel's tritonserver ships only the
Python backend, so here their configs are checked by our parser and Triton's documented rules, never loaded.

No ensemble of tokenizer + trunk is written, on purpose: Triton's dynamic batcher batches requests whose
variable-size input (the trunk's tokens [T, D]) differ in shape only if the model takes ragged batches, which our
trunk graph does not; so the trunk would batch only images with exactly equal token counts, and a batched tokenizer
pads each request's tokens to the longest of its batch anyway. The runtime's cost-model sub-batching, inside one
Python-backend model, is what keeps VWT's saving at batch > 1.

Library paths. Triton's onnxruntime backend hands each op_library_filename to ONNX Runtime's RegisterCustomOpsLibrary,
which dlopen()s it: an absolute path loads whatever the server's working directory; a relative one containing a "/"
is resolved against the server's working directory (not the model folder), and a bare file name is searched on
LD_LIBRARY_PATH. So the configs name the copy in <repository>/lib by absolute path, and the repository's README says
what to change when the server sees the repository at another path (a container mount).

Defaults, and why: max_batch_size 32 and preferred sizes 8, 16, 32 match the batch sizes the benchmarks time;
a 2 ms max queue delay lets concurrent requests meet in one batch at a latency cost small next to a ViT forward
on CPU. One CPU instance per model: ONNX Runtime already uses every core for one batch, so a second instance would
split the cores; GPU models get one instance per GPU (KIND_GPU, count 1), raise count to overlap copies.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from ..atomic import write_text
from ..errors import VWTError
from . import pbtxt
from .pbtxt import Enum, parameter

log = logging.getLogger("vwt_export")

TEMPLATE = Path(__file__).parent / "python_model" / "model.py"
TOKENIZE, TRUNK = ".tokenize.onnx", ".trunk.onnx"
VERSION = "1"
INPUT, OUTPUT = "pixels", "logits"
README_TITLE = "# Triton model repository (written by vwt-export)"


@dataclass
class ServingSettings:
    max_batch_size: int = 32
    preferred_batch_sizes: Sequence[int] = (8, 16, 32)
    max_queue_delay_us: int = 2000
    cpu_instances: int = 1
    gpu_instances: int = 1
    threads: int = 0  # ONNX Runtime threads in the Python models; 0: ONNX Runtime's default (all cores)
    call_overhead: float | None = None  # length-aware batching's per-call cost; None: the runtime's default
    link: bool = True  # hard-link graphs into the repository when on the same file system (no copy of big files)
    extra: dict = field(default_factory=dict)


def model_name(file: str | os.PathLike, backend: str) -> str:
    """model.onnx -> baseline_ort, model.vwt.portable.onnx -> vwt_portable_ort, model.vwt.fp16.engine ->
    vwt_fp16_trt, model.fp32.engine -> baseline_fp32_trt (Triton model names: letters, digits, _)."""
    parts = Path(file).name.split(".")[1:-1]
    if not parts or parts[0] != "vwt":
        parts = ["baseline", *parts]
    return "_".join([*parts, backend]).replace("-", "_")


def graph_io(path: Path) -> tuple[str, list[int], str, list[int]]:
    """(input name, input dims without batch, output name, output dims without batch); -1 for symbolic dims."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1 or not model.graph.output:
        raise VWTError(f"{path}: expected one pixels input and a logits output, found inputs "
                       f"{[i.name for i in inputs]}")

    def dims(vi) -> list[int]:
        return [d.dim_value if d.HasField("dim_value") else -1 for d in vi.type.tensor_type.shape.dim][1:]

    return inputs[0].name, dims(inputs[0]), model.graph.output[0].name, dims(model.graph.output[0])


def _tensors(in_name: str, in_dims: list[int], out_name: str, out_dims: list[int]) -> dict:
    return {"input": [{"name": in_name, "data_type": Enum("TYPE_FP32"), "dims": in_dims}],
            "output": [{"name": out_name, "data_type": Enum("TYPE_FP32"), "dims": out_dims}]}


def _batching(s: ServingSettings, max_batch: int) -> dict:
    preferred = [b for b in s.preferred_batch_sizes if b <= max_batch]
    dyn: dict = {"preferred_batch_size": preferred} if preferred else {}
    dyn["max_queue_delay_microseconds"] = s.max_queue_delay_us
    return {"max_batch_size": max_batch, "dynamic_batching": dyn}


def python_config(name: str, model_file: str, io: tuple, s: ServingSettings) -> dict:
    params = [parameter("model_file", model_file), parameter("threads", s.threads)]
    if s.call_overhead is not None:
        params.append(parameter("call_overhead", s.call_overhead))
    # Triton names the input/output "pixels"/"logits" whatever the graph calls them: the Python model maps them
    return {"name": name, "backend": "python", **_batching(s, s.max_batch_size),
            **_tensors(INPUT, io[1], OUTPUT, io[3]),
            "instance_group": [{"kind": Enum("KIND_CPU"), "count": s.cpu_instances}], "parameters": params}


def ort_config(name: str, io: tuple, s: ServingSettings, op_library: Path | None) -> dict:
    config = {"name": name, "backend": "onnxruntime", **_batching(s, s.max_batch_size), **_tensors(*io),
              "instance_group": [{"kind": Enum("KIND_CPU"), "count": s.cpu_instances}]}
    if op_library is not None:
        config["model_operations"] = {"op_library_filename": [str(op_library)]}
    return config


def trt_config(name: str, io: tuple, s: ServingSettings, max_batch: int) -> dict:
    return {"name": name, "backend": "tensorrt", **_batching(s, max_batch), **_tensors(*io),
            "instance_group": [{"kind": Enum("KIND_GPU"), "count": s.gpu_instances}]}


def _place(src: Path, dst: Path, link: bool) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.unlink(missing_ok=True)
    if link:
        try:
            os.link(src, dst)
            return
        except OSError:  # another file system, or links not allowed: copy
            pass
    shutil.copy2(src, dst)


def _write_model(root: Path, config: dict, files: dict[str, Path], header: str, link: bool) -> Path:
    """MODEL/config.pbtxt (re-parsed and checked before it is written) and MODEL/1/<name> for each file."""
    folder = root / config["name"]
    text = pbtxt.dumps(config, header)
    where = str(folder / "config.pbtxt")
    parsed = pbtxt.loads(text, where)
    pbtxt.check_model_config(parsed, where, folder.name)
    if parsed != config:  # the writer and the parser disagree: a bug, never written out
        raise VWTError(f"{where}: the written configuration does not parse back to itself")
    for name, src in files.items():
        _place(src, folder / VERSION / name, link and src.suffix != ".py")
    write_text(folder / "config.pbtxt", text)
    return folder


def _engine_info(engine: Path) -> tuple[int | None, dict | None, str | None]:
    """(profile's largest batch, plugin library record, TensorRT flavour) from the engine's JSON sidecar."""
    import json

    sidecar = Path(str(engine) + ".json")
    if not sidecar.is_file():
        return None, None, None
    try:
        data = json.loads(sidecar.read_text())
        return max(data["build"]["batches"]), data.get("plugin_library"), data.get("tensorrt", {}).get("flavour")
    except (ValueError, KeyError, TypeError):
        return None, None, None


def discover(out_dir: Path) -> list[Path]:
    return sorted(p for p in out_dir.iterdir() if p.is_file() and p.name.startswith("model.")
                  and (p.suffix in (".onnx", ".engine")))


def write_repository(out_dir: Path, files: Iterable[str | os.PathLike] | None = None, *,
                     op_library: str | os.PathLike | None = None, trt_plugin: str | os.PathLike | None = None,
                     settings: ServingSettings | None = None, triton_dir: Path | None = None) -> Path:
    """Write OUT/triton/ for the graphs and engines among `files` (default: those found in out_dir) and return it.

    `op_library`: the vwt ONNX Runtime op library (default vwt_export.plugins.ort_library(), looked up only when a
    custom-op graph is served); it is copied into the repository's lib/, and the configs name that copy.
    `trt_plugin`: the vwt TensorRT plugin (default vwt_export.plugins.trt_plugin_library() where it exists), copied
    likewise, for the README's --backend-config line. The repository is rewritten from scratch each time."""
    s = settings or ServingSettings()
    out_dir = Path(out_dir)
    paths = [Path(f) for f in files] if files is not None else discover(out_dir)
    paths = [p if p.is_absolute() else (p if p.exists() else out_dir / p) for p in paths]
    graphs = [p for p in paths if p.suffix == ".onnx" and p.name.startswith("model.") and p.is_file()]
    engines = [p for p in paths if p.suffix == ".engine" and p.is_file()]
    by_name = {p.name: p for p in graphs}
    stages = {p.name[: -len(TOKENIZE)]: p for p in graphs if p.name.endswith(TOKENIZE)}
    whole = [p for p in graphs if not p.name.endswith((TOKENIZE, TRUNK))]
    if "model.onnx" not in by_name and "model.vwt.onnx" not in by_name:
        raise VWTError(f"{out_dir}: neither model.onnx nor model.vwt.onnx to serve; run vwt-export first "
                       "(without --skip-export)")
    root = Path(triton_dir) if triton_dir else out_dir / "triton"
    if root.exists():  # rewritten from scratch, but only a folder this function wrote (or an empty one)
        readme = root / "README.md"
        ours = readme.is_file() and readme.read_text(errors="replace").startswith(README_TITLE)
        if not ours and any(root.iterdir()):
            raise VWTError(f"{root}: exists and is not a repository written by vwt-export; remove it or choose "
                           "another folder")
        shutil.rmtree(root)
    root.mkdir(parents=True)
    written: list[str] = []

    # the op library, copied so the repository carries the build that its graphs were verified with
    needs_lib = [p for p in whole if _uses_vwt_ops(p)]
    lib_copy = None
    if needs_lib:
        from .. import plugins

        src = Path(op_library) if op_library else plugins.ort_library()
        lib_copy = (root / "lib" / src.name).resolve()  # absolute: see "Library paths" in the module docstring
        _place(src, lib_copy, link=False)
    plugin_copy = None
    if engines:
        src_plugin = Path(trt_plugin) if trt_plugin else _optional_trt_plugin()
        if src_plugin is not None:
            plugin_copy = (root / "lib" / src_plugin.name).resolve()
            _place(src_plugin, plugin_copy, link=False)

    # Python backend: the baseline and VWT through vwt_export.runtime
    template = {"model.py": TEMPLATE}
    for stem, label in (("model", "baseline"), ("model.vwt", "vwt")):
        graph = by_name.get(f"{stem}.onnx")
        if graph is None:
            continue
        io = graph_io(graph)
        tokenize = stages.get(stem)
        if tokenize is not None and (tokenize.parent / (stem + TRUNK)).is_file():
            files_ = {**template, tokenize.name: tokenize, stem + TRUNK: tokenize.parent / (stem + TRUNK)}
            served, how = tokenize.name, "length-aware batching (tokenize + trunk, runtime sub-batches by length)"
        else:
            files_, served, how = {**template, graph.name: graph}, graph.name, "the one graph"
        name = f"{label}_python"
        _write_model(root, python_config(name, served, io, s), files_,
                     f"{name}: {graph.name} on Triton's Python backend via vwt_export.runtime ({how}).\n"
                     "Serves on the nvidia-pytriton wheel's tritonserver: vwt-export serve <this folder>.", s.link)
        written.append(name)

    # onnxruntime backend: every whole graph (stages are served by the Python model, see the module docstring)
    for graph in whole:
        name = model_name(graph, "ort")
        lib = lib_copy if graph in needs_lib else None
        note = (f"vwt custom ops from {lib.name} (model_operations), named by absolute path: it must exist at that "
                "path on the server (README.md)."
                if lib else "standard ONNX ops only: any Triton onnxruntime backend runs it.")
        _write_model(root, ort_config(name, graph_io(graph), s, lib), {"model.onnx": graph},
                     f"{name}: {graph.name} on Triton's onnxruntime backend; {note}\n"
                     "UNVERIFIED on a server: the nvidia-pytriton wheel's tritonserver has no onnxruntime backend.",
                     s.link)
        written.append(name)

    # tensorrt backend: every engine, with the ONNX graph it came from giving the tensor names and shapes
    for engine in engines:
        name = model_name(engine, "trt")
        profile_max, plugin, flavour = _engine_info(engine)
        source = _engine_source(engine, by_name)
        if source is None:
            log.warning("%s: no ONNX graph of the same model beside it; tensorrt config not written", engine.name)
            continue
        max_batch = min(s.max_batch_size, profile_max or s.max_batch_size)
        note = ("needs the vwt TensorRT plugin, loaded by the server (README.md)" if plugin
                else "no plugin needed (built from the portable graph)")
        if flavour and flavour != "tensorrt":
            note += f"; built with {flavour}, which Triton's tensorrt backend does not load: rebuild with TensorRT"
        _write_model(root, trt_config(name, graph_io(source), s, max_batch), {"model.plan": engine},
                     f"{name}: {engine.name} on Triton's tensorrt backend; {note}.\n"
                     f"max_batch_size {max_batch}: the engine's optimisation profile ends there.\n"
                     "UNVERIFIED: no GPU or TensorRT here; the engine must come from the serving Triton's TensorRT.",
                     s.link)
        written.append(name)

    write_text(root / "README.md", _readme(root, written, lib_copy, plugin_copy))
    log.info("wrote %s: %s", root, ", ".join(written))
    return root


def _engine_source(engine: Path, by_name: dict[str, Path]) -> Path | None:
    """model.vwt.fp16.engine -> model.vwt.portable.onnx or model.vwt.onnx (same tensor names and shapes)."""
    stem = engine.name.rsplit(".", 2)[0]  # drop .<precision>.engine
    for candidate in (f"{stem}.portable.onnx", f"{stem}.onnx", "model.onnx"):
        if candidate in by_name:
            return by_name[candidate]
    return None


def _uses_vwt_ops(path: Path) -> bool:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    local = {f.name for f in model.functions}
    return any(n.domain == "vwt" and n.op_type not in local for n in model.graph.node)


def _optional_trt_plugin() -> Path | None:
    from .. import plugins

    try:
        return plugins.trt_plugin_library()
    except VWTError:
        return None


def _readme(root: Path, models: list[str], lib: Path | None, plugin: Path | None) -> str:
    python = [m for m in models if m.endswith("_python")]
    where = root.resolve()
    lines = [
        README_TITLE, "",
        "Models: " + ", ".join(models) + ".", "",
        "## Serve here (the Python-backend models)", "",
        f"    vwt-export serve {where}", "",
        f"`serve` starts the tritonserver of the nvidia-pytriton wheel on 127.0.0.1 and loads {', '.join(python)};",
        "the wheel's server has only the Python backend, so the onnxruntime/tensorrt models are skipped there.",
        "In a vwt-export checkout `make setup` has installed that server into .venv/ (run `. .venv/bin/activate`",
        "first, or call .venv/bin/vwt-export); elsewhere install it with vwt-export's scripts/install_serving.sh,",
        "which keeps numpy 2 (`pip install 'vwt-export[serving]'` works too, but nvidia-pytriton's numpy<2 pin",
        "downgrades numpy under torch and ONNX Runtime).", "",
        "## Serve in production (a Triton container with the onnxruntime and tensorrt backends)", "",
        "The *_python models need vwt-export installed in the container's Python: its wheel (`make wheel` in a",
        "checkout) carries the op library, so `pip install vwt_export-*.whl` is enough.",
    ]
    if lib is not None:
        lines += [f"The *_ort models with vwt ops name the op library by absolute path, {lib}",
                  "(model_operations { op_library_filename } in their config.pbtxt). Triton's onnxruntime backend",
                  "passes that string to ONNX Runtime, which dlopen()s it: an absolute path works whatever folder the",
                  "server starts in; a relative one would be resolved against the server's working directory, not the",
                  "model folder. Where the server sees this repository at another path (a container mount such as",
                  "/models), replace the path in those configs with the library's path there, e.g.",
                  f"/models/lib/{lib.name}; or write the bare name {lib.name} and start the server with",
                  "LD_LIBRARY_PATH=/models/lib."]
    plug = plugin or "/path/to/libvwt_trt_plugin.so"
    lines += ["", "    tritonserver --model-repository=/models \\",
              f"        --backend-config=tensorrt,plugins=\"{plug}\"", "",
              "The TensorRT plugin is loaded by the server (it is not a model setting); LD_PRELOAD works too. Its path",
              "above is where it lies now; in a container, use its path there (/models/lib/... when mounted at /models).",
              "The tensorrt and onnxruntime configs are checked by vwt-export's parser but UNVERIFIED on a server.", ""]
    return "\n".join(lines)
