"""TensorRT engines: build from the ONNX files, describe them in a JSON sidecar, load them back safely.

    build_engine("OUT/model.vwt.onnx", "OUT/model.vwt.fp32.engine", BuildSettings(precision="fp32", batches=[1, 8]))
    f = vwt_export.runtime.load("OUT/model.vwt.fp32.engine")     # an EngineRunner: checks the sidecar first; f(pixels) -> logits

Networks are strongly typed, so an engine's precision is its graph's: FP32 engines from the FP32 graphs, FP16
engines from the float16 graphs (model.fp16.onnx, model.vwt.fp16.onnx), INT8 engines from the explicit Q/DQ
graphs (no implicit INT8 calibrators, no precision flags: TensorRT 11 and TensorRT-RTX have none). Works with
TensorRT 10 and 11 (`tensorrt`) and TensorRT-RTX (`tensorrt_rtx`, which can build on a machine without a GPU
for a named compute capability).

Graphs with vwt::TokenMerge nodes (model.vwt.onnx, the plugin form) need libvwt_trt_plugin.so; the hybrid's
vwt::BlockMerge has no plugin and is parsed from its standard-op body. Before parsing one, the graph's vwt op
version is checked, the plugin library is loaded once per process (a second load would
make TensorRT log an ERROR), and with TensorRT-RTX the unversioned libtensorrt_rtx.so its parser opens to wrap a
plugin must exist: without it the parser aborts the whole process, so its absence is a clear VWTError instead.

Verified in this project: building FP32, FP16 and INT8 engines for SM80 and SM89 with TensorRT-RTX 1.7 on a
CPU-only machine from the baseline, portable and plugin graphs (tests/backends/test_tensorrt.py), and the
sidecar checks. Not verified (no TensorRT GPU machine was available): running engines (`EngineRunner`) and the
plugin's enqueue, TensorRT 10/11 proper.
"""

from __future__ import annotations

import datetime
import json
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_path, write_text
from ..errors import VWTError
from ..outdir import sha256  # one checksum for engine sidecars and output manifests
from ..plugins import trt_plugin_library
from ..version import __version__
from .base import Runner

SIDECAR_FORMAT, SIDECAR_VERSION = "vwt-export/engine", 1
PRECISIONS = ("fp32", "fp16", "int8")


def import_tensorrt() -> tuple[Any, str]:
    """(module, flavour): TensorRT proper first, then TensorRT-RTX; a clear error when neither is installed."""
    try:
        import tensorrt as trt

        return trt, "tensorrt"
    except ImportError:
        pass
    try:
        import tensorrt_rtx as trt

        return trt, "tensorrt-rtx"
    except ImportError:
        raise VWTError("TensorRT is not installed: `pip install tensorrt` (TensorRT 10/11, needs NVIDIA's package "
                       "index) or `pip install tensorrt-rtx`; the ONNX Runtime backend works without it") from None


@dataclass
class BuildSettings:
    precision: str = "fp32"
    batches: list[int] = field(default_factory=lambda: [1, 8])
    workspace_mib: int = 2048
    compute_capability: str | None = None  # TensorRT-RTX ahead-of-time target, e.g. "SM89"; None = this GPU
    plugin_library: str | None = None
    timing_cache: str | None = None
    tokens: tuple[int, int, int] | None = None  # (min, opt, max) of a token-sequence input's length (a trunk graph)

    def profile(self) -> tuple[int, int, int]:
        b = sorted(self.batches)
        return b[0], b[len(b) // 2], b[-1]


def _logger(trt, ahead_of_time: bool = False):
    """TensorRT's errors on stderr. Building ahead of time on a machine without a GPU, TensorRT-RTX reports the
    missing CUDA driver as an error although the build succeeds; that line is dropped there, and only there."""

    class Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)

        def log(self, severity, msg) -> None:
            if int(severity) > int(trt.ILogger.Severity.ERROR):
                return
            if ahead_of_time and "CUDA driver version is insufficient" in msg:
                return
            print(f"TensorRT: {msg}", file=sys.stderr)

    return Logger()


def _load_graph(onnx_path: str | os.PathLike):
    import onnx

    return onnx.load(str(onnx_path), load_external_data=False)  # the structure is enough: no weights data


def with_bodies_where_no_plugin(onnx_path: Path, graph) -> "onnx.ModelProto | None":
    """The plugin implements TokenMerge only: a graph holding other vwt ops (the hybrid's BlockMerge), loaded
    whole with those ops' standard-op bodies attached, which TensorRT's parser inlines; None when there are none."""
    import onnx

    from ..graph import ops

    missing = {n.op_type for n in graph.graph.node if n.domain == ops.DOMAIN} - {PLUGIN_NAME}
    missing -= {f.name for f in graph.functions if f.domain == ops.DOMAIN}
    if not missing:
        return None
    model = onnx.load(str(onnx_path))
    model.functions.extend(ops.FUNCTIONS[name]() for name in sorted(missing))
    return model


def graph_precision(model) -> str:
    """What a strongly typed network built from this graph (a path or an onnx.ModelProto) computes in: "int8"
    (explicit Q/DQ), "fp16" (float16 weights or inputs) or "fp32"."""
    import onnx

    if not isinstance(model, onnx.ModelProto):
        model = _load_graph(model)
    if any(n.op_type == "QuantizeLinear" for n in model.graph.node):
        return "int8"
    if any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer) or any(
            i.type.tensor_type.elem_type == onnx.TensorProto.FLOAT16 for i in model.graph.input):
        return "fp16"
    return "fp32"


# The library TensorRT-RTX's ONNX parser opens by its unversioned name when it wraps a V3 plugin.
RTX_PARSER_NEEDS = "libtensorrt_rtx.so"


def rtx_library_dirs() -> list[Path]:
    """Where the tensorrt-rtx wheel keeps its libraries (found without importing them)."""
    import importlib.util

    spec = importlib.util.find_spec("tensorrt_rtx_libs")
    return [Path(p) for p in (spec.submodule_search_locations or [])] if spec else []


def check_rtx_parser_link(lib_dirs: list[Path] | None = None, ld_library_path: str | None = None) -> None:
    """Refuse, with the fix, to parse a plugin graph where TensorRT-RTX's parser would abort the process.

    The parser dlopens libtensorrt_rtx.so (no version suffix) to wrap a V3 plugin; the wheel ships only
    libtensorrt_rtx.so.1, so the handle is null, an exception escapes a noexcept function and the process
    terminates. `make setup` creates the link in the wheel's folder; a folder on LD_LIBRARY_PATH (set before the
    process started) works too."""
    lib_dirs = rtx_library_dirs() if lib_dirs is None else lib_dirs
    ld = os.environ.get("LD_LIBRARY_PATH", "") if ld_library_path is None else ld_library_path
    search = [*lib_dirs, *(Path(p) for p in ld.split(os.pathsep) if p)]
    if any((d / RTX_PARSER_NEEDS).exists() for d in search):
        return
    where = lib_dirs[0] if lib_dirs else Path("<tensorrt_rtx_libs folder>")
    raise VWTError(f"TensorRT-RTX's ONNX parser needs {RTX_PARSER_NEEDS} to load the vwt plugin, and the tensorrt-rtx "
                   f"wheel ships only {RTX_PARSER_NEEDS}.1 (without it the parser kills the process); create the "
                   f"link with `make setup` or `ln -s {RTX_PARSER_NEEDS}.1 {where / RTX_PARSER_NEEDS}`")


PLUGIN_NAME, PLUGIN_VERSION = "TokenMerge", "1"  # as plugins/tensorrt/vwtPlugin.h registers it


def load_plugin(trt, path: str | os.PathLike) -> None:
    """Register the vwt plugin creators with TensorRT's registry, once: a second load_library of the same
    library makes TensorRT log an ERROR (creator already registered), so ask the registry first."""
    registry = trt.get_plugin_registry()
    have = {(c.name, c.plugin_version, c.plugin_namespace) for c in registry.all_creators}
    if (PLUGIN_NAME, PLUGIN_VERSION, "") in have:
        return
    if registry.load_library(str(path)) is None:
        raise VWTError(f"{path}: TensorRT could not load the vwt plugin library")


def build_engine(onnx_path: str | os.PathLike, engine_path: str | os.PathLike, settings: BuildSettings) -> Path:
    """Parse, build and write `engine_path` and its sidecar `engine_path + .json` atomically."""
    trt, flavour = import_tensorrt()
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    if settings.precision not in PRECISIONS:
        raise VWTError(f"unknown precision '{settings.precision}' (use one of {', '.join(PRECISIONS)})")
    if not onnx_path.is_file():
        raise VWTError(f"{onnx_path}: no such ONNX file")
    from ..graph.ops import check_version
    from .onnxruntime import needs_op_library

    graph = _load_graph(onnx_path)
    check_version(graph)
    actual = graph_precision(graph)
    if actual != settings.precision:
        raise VWTError(f"{onnx_path} is an {actual.upper()} graph, so it builds an {actual.upper()} engine, not "
                       f"{settings.precision.upper()}: networks are strongly typed (FP16 engines come from "
                       "model.fp16.onnx / model.vwt.fp16.onnx, INT8 from the Q/DQ graphs)")
    logger = _logger(trt, ahead_of_time=bool(settings.compute_capability))
    with_bodies = with_bodies_where_no_plugin(onnx_path, graph)
    if needs_op_library(with_bodies or graph):  # vwt nodes left without a body are TokenMerge: the plugin's
        settings.plugin_library = str(settings.plugin_library or trt_plugin_library())
        if flavour == "tensorrt-rtx":
            check_rtx_parser_link()
        load_plugin(trt, settings.plugin_library)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not (parser.parse(with_bodies.SerializeToString(), str(onnx_path)) if with_bodies is not None
            else parser.parse_from_file(str(onnx_path))):
        errors = "; ".join(str(parser.get_error(i)).splitlines()[0] for i in range(min(parser.num_errors, 3)))
        raise VWTError(f"{onnx_path}: TensorRT's ONNX parser refused it: {errors}")
    config = builder.create_builder_config()
    if hasattr(config, "set_memory_pool_limit"):
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, settings.workspace_mib << 20)
    if settings.compute_capability:
        if not hasattr(config, "set_compute_capability"):
            raise VWTError(f"{flavour} cannot build for another GPU (compute_capability is a TensorRT-RTX feature)")
        targets = [t for t in trt.ComputeCapability.__members__ if t.startswith("SM")]
        if settings.compute_capability.upper() not in targets:
            raise VWTError(f"{flavour} {trt.__version__} cannot build for {settings.compute_capability} (it builds for "
                           f"{', '.join(targets)})")
        config.num_compute_capabilities = 1
        config.set_compute_capability(getattr(trt.ComputeCapability, settings.compute_capability.upper()), 0)
    lo, opt, hi = settings.profile()
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        t = network.get_input(i)
        rest = tuple(t.shape)[1:]
        if rest and rest[0] < 0 and settings.tokens and all(d >= 0 for d in rest[1:]):  # [B, T, ...] over T
            (t_lo, t_opt, t_hi), tail = settings.tokens, rest[1:]
            profile.set_shape(t.name, (lo, t_lo, *tail), (opt, t_opt, *tail), (hi, t_hi, *tail))
            continue
        if any(d < 0 for d in rest):
            raise VWTError(f"{onnx_path}: input {t.name} has dynamic dimensions other than the batch {tuple(t.shape)}; "
                           "only the batch may vary (export with fixed image size)")
        profile.set_shape(t.name, (lo, *rest), (opt, *rest), (hi, *rest))
    config.add_optimization_profile(profile)
    cache = None
    if settings.timing_cache and flavour != "tensorrt-rtx":  # TensorRT-RTX tunes at run time: no timing cache
        data = Path(settings.timing_cache).read_bytes() if Path(settings.timing_cache).is_file() else b""
        cache = config.create_timing_cache(data)
        config.set_timing_cache(cache, ignore_mismatch=False)
    if settings.plugin_library and hasattr(config, "plugins_to_serialize"):
        config.plugins_to_serialize = [settings.plugin_library]
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise VWTError(f"{onnx_path}: TensorRT could not build an engine (run with TensorRT's verbose log to see why)")
    with atomic_path(engine_path) as tmp:
        tmp.write_bytes(bytes(serialized))
    if cache is not None:
        with atomic_path(settings.timing_cache) as tmp:
            tmp.write_bytes(bytes(cache.serialize()))
    write_text(sidecar_path(engine_path), json.dumps(make_sidecar(onnx_path, settings, trt, flavour), indent=2) + "\n")
    return engine_path


def sidecar_path(engine_path: str | os.PathLike) -> Path:
    return Path(str(engine_path) + ".json")


def make_sidecar(onnx_path: Path, settings: BuildSettings, trt, flavour: str) -> dict:
    gpu = settings.compute_capability and {"name": None, "compute_capability": settings.compute_capability.upper()}
    return {
        "format": SIDECAR_FORMAT, "version": SIDECAR_VERSION,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "tensorrt": {"flavour": flavour, "version": trt.__version__},
        "gpu": gpu or current_gpu(),
        "plugin_library": ({"path": settings.plugin_library, "sha256": sha256(settings.plugin_library)}
                           if settings.plugin_library else None),
        "onnx": {"file": onnx_path.name, "sha256": sha256(onnx_path)},
        "build": asdict(settings), "vwt_export": __version__,
    }


def current_gpu() -> dict:
    """Name and compute capability of CUDA device 0, as SM<major><minor>; a clear error without one."""
    try:
        import torch

        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability(0)
            return {"name": torch.cuda.get_device_name(0), "compute_capability": f"SM{major}{minor}"}
    except ImportError:
        pass
    raise VWTError("no CUDA GPU is visible: TensorRT engines run only on the GPU they were built for")


def read_sidecar(engine_path: str | os.PathLike) -> dict:
    """The engine's JSON sidecar, every field check_sidecar and load_engine read of its documented type."""
    path = sidecar_path(engine_path)
    if Path(engine_path).is_dir():
        raise VWTError(f"{engine_path}: a folder, not an engine file")
    if not Path(engine_path).is_file():
        raise VWTError(f"{engine_path}: no such engine file")
    if not path.is_file():
        raise VWTError(f"{path}: missing; an engine without its sidecar cannot be checked, rebuild it with vwt-export")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise VWTError(f"{path}: corrupt sidecar ({e}); rebuild the engine") from None
    except OSError as e:
        raise VWTError(f"{path}: cannot be read ({e.strerror or e})") from None
    if not isinstance(data, dict) or data.get("format") != SIDECAR_FORMAT:
        raise VWTError(f"{path}: not a vwt-export engine sidecar (a JSON {type(data).__name__} without "
                       f"format {SIDECAR_FORMAT!r}); rebuild the engine")

    def field_of(obj: Any, key: str, types: type | tuple, where: str) -> Any:
        value = obj.get(key) if isinstance(obj, dict) else None
        if not isinstance(value, types) or isinstance(value, bool):
            raise VWTError(f"{path}: malformed sidecar ({where}{key} is {value!r}); rebuild the engine")
        return value

    trt_info = field_of(data, "tensorrt", dict, "")
    field_of(trt_info, "flavour", str, "tensorrt.")
    field_of(trt_info, "version", str, "tensorrt.")
    field_of(field_of(data, "gpu", dict, ""), "compute_capability", str, "gpu.")
    plugin = data.get("plugin_library")
    if plugin is not None:
        field_of(field_of(data, "plugin_library", dict, ""), "sha256", str, "plugin_library.")
    return data


def check_sidecar(sidecar: dict, running: dict, engine: str = "engine") -> None:
    """Refuse an engine built for another TensorRT, GPU or plugin library, naming both sides and the fix.

    `running`: {"tensorrt": {"flavour", "version"}, "gpu": {"compute_capability", ...}, "plugin_sha256": str|None}.
    """
    built, here = sidecar["tensorrt"], running["tensorrt"]
    if (built["flavour"], built["version"]) != (here["flavour"], here["version"]):
        raise VWTError(f"{engine}: built with {built['flavour']} {built['version']} but {here['flavour']} "
                       f"{here['version']} is loaded; engines are not portable across versions, rebuild it")
    cc_built, cc_here = sidecar["gpu"]["compute_capability"], running["gpu"]["compute_capability"]
    if cc_built != cc_here:
        raise VWTError(f"{engine}: built for {cc_built} but this GPU is {cc_here} ({running['gpu'].get('name')}); "
                       "rebuild it on (or for) this GPU")
    plugin = sidecar.get("plugin_library")
    if plugin and plugin["sha256"] != running.get("plugin_sha256"):
        raise VWTError(f"{engine}: built with another vwt plugin library (sha256 {plugin['sha256'][:12]}, loaded "
                       f"{str(running.get('plugin_sha256'))[:12]}); rebuild the engine or use the library it was built with")


class EngineRunner(Runner):
    """A vwt-export engine on this GPU, its JSON sidecar checked first. runner(pixels float32 [B, C, H, W]) ->
    logits; a trunk engine takes (tokens, sizes), as LengthAwareRunner's trunk. UNVERIFIED (no GPU here)."""

    kind = "tensorrt"

    def __init__(self, path: str | os.PathLike):
        super().__init__(str(path))
        sidecar = read_sidecar(path)
        trt, flavour = import_tensorrt()
        plugin = sidecar.get("plugin_library")
        plugin_path = None
        if plugin:
            plugin_path = str(trt_plugin_library())
            load_plugin(trt, plugin_path)
        running = {"tensorrt": {"flavour": flavour, "version": trt.__version__}, "gpu": current_gpu(),
                   "plugin_sha256": sha256(plugin_path) if plugin_path else None}
        check_sidecar(sidecar, running, str(path))
        # TensorRT objects must outlive their users: the runner keeps them
        self.logger = _logger(trt)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(Path(path).read_bytes())
        if self.engine is None:
            raise VWTError(f"{path}: corrupt or truncated engine; rebuild it with vwt-export")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self.sidecar = sidecar

    def infer(self, *arrays: np.ndarray) -> np.ndarray:
        import torch

        if len(arrays) != len(self.inputs):
            raise VWTError(f"{self.name}: the engine takes {len(self.inputs)} inputs ({', '.join(self.inputs)}), "
                           f"got {len(arrays)}")
        keep = []
        for name, array in zip(self.inputs, arrays):
            x = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)).cuda()
            if not self.context.set_input_shape(name, tuple(x.shape)):
                raise VWTError(f"{self.name}: input {name} of shape {tuple(x.shape)} is outside the engine's "
                               "optimisation profile (rebuild it with the batch sizes you run: --batch)")
            self.context.set_tensor_address(name, x.data_ptr())
            keep.append(x)
        out = {}
        for n in self.outputs:
            out[n] = torch.empty(tuple(self.context.get_tensor_shape(n)), dtype=torch.float32, device="cuda")
            self.context.set_tensor_address(n, out[n].data_ptr())
        stream = torch.cuda.current_stream()
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise VWTError(f"{self.name}: TensorRT failed to run the engine")
        stream.synchronize()
        return out[self.outputs[0]].cpu().numpy()

    @property
    def metadata(self) -> dict:
        return {**super().metadata, "inputs": self.inputs, "outputs": self.outputs, "sidecar": self.sidecar}
