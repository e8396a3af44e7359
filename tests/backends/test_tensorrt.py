"""TensorRT: the sidecar checks (pure logic, always run) and, where the tensorrt-rtx wheel is installed, real
TensorRT parsing and ahead-of-time engine building of the exported graphs on this CPU-only machine: the portable
graphs always, the plugin graphs (vwt::TokenMerge as the libvwt_trt_plugin.so plugin) where the plugin is built
(TENSORRT_ROOT at build time)."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import onnx
import pytest
import torch
from onnx import TensorProto

import vwt_export as vx
from vwt_export import plugins
from vwt_export.backends import tensorrt as vtrt
from vwt_export.backends.onnxruntime import needs_op_library
from vwt_export.graph import ops
from vwt_export.graph.export import export_model, save_model
from vwt_export.graph.quantize import quantize_int8
from vwt_export.graph.surgery import apply_vwt, make_portable

from ..conftest import blocky_images


def _sidecar(**over):
    s = {"format": vtrt.SIDECAR_FORMAT, "version": 1, "tensorrt": {"flavour": "tensorrt", "version": "10.9.0"},
         "gpu": {"name": "H100", "compute_capability": "SM90"}, "plugin_library": None}
    s.update(over)
    return s


RUNNING = {"tensorrt": {"flavour": "tensorrt", "version": "10.9.0"}, "gpu": {"name": "H100", "compute_capability": "SM90"},
           "plugin_sha256": "abc"}


def test_matching_sidecar_passes():
    vtrt.check_sidecar(_sidecar(), RUNNING)
    vtrt.check_sidecar(_sidecar(plugin_library={"path": "x.so", "sha256": "abc"}), RUNNING)


@pytest.mark.parametrize("over,msg", [
    ({"tensorrt": {"flavour": "tensorrt", "version": "10.8.0"}}, "built with tensorrt 10.8.0 but tensorrt 10.9.0"),
    ({"tensorrt": {"flavour": "tensorrt-rtx", "version": "10.9.0"}}, "built with tensorrt-rtx"),
    ({"gpu": {"name": "L4", "compute_capability": "SM89"}}, "built for SM89 but this GPU is SM90"),
    ({"plugin_library": {"path": "x.so", "sha256": "def"}}, "another vwt plugin library"),
])
def test_mismatched_sidecar_is_refused(over, msg):
    with pytest.raises(vx.VWTError, match=msg):
        vtrt.check_sidecar(_sidecar(**over), RUNNING, "m.engine")


def test_missing_or_corrupt_sidecar_and_engine(tmp_path):
    engine = tmp_path / "m.engine"
    with pytest.raises(vx.VWTError, match="no such engine file"):
        vtrt.read_sidecar(engine)
    engine.write_bytes(b"\x00" * 16)
    with pytest.raises(vx.VWTError, match="missing; an engine without its sidecar"):
        vx.runtime.load(engine)
    (tmp_path / "m.engine.json").write_text("{not json")
    with pytest.raises(vx.VWTError, match="corrupt sidecar"):
        vx.runtime.load(engine)
    (tmp_path / "m.engine.json").write_text(json.dumps({"format": "something else"}))
    with pytest.raises(vx.VWTError, match="not a vwt-export engine sidecar"):
        vx.runtime.load(engine)


def test_the_missing_rtx_library_link_is_a_clear_error(tmp_path):
    """TensorRT-RTX's parser aborts the process without libtensorrt_rtx.so; the check says so, with the fix."""
    with pytest.raises(vx.VWTError, match=r"needs libtensorrt_rtx.so .* ships only libtensorrt_rtx.so.1 .*"
                                          r"`make setup` or `ln -s libtensorrt_rtx.so.1 .*libtensorrt_rtx.so`"):
        vtrt.check_rtx_parser_link([tmp_path], ld_library_path="")
    (tmp_path / "libtensorrt_rtx.so.1").write_bytes(b"")  # what the wheel ships
    with pytest.raises(vx.VWTError, match="needs libtensorrt_rtx.so"):
        vtrt.check_rtx_parser_link([tmp_path], ld_library_path="")
    elsewhere = tmp_path / "ld"
    elsewhere.mkdir()
    (elsewhere / "libtensorrt_rtx.so").symlink_to(tmp_path / "libtensorrt_rtx.so.1")
    vtrt.check_rtx_parser_link([tmp_path], ld_library_path=str(elsewhere))  # on LD_LIBRARY_PATH: fine
    (tmp_path / "libtensorrt_rtx.so").symlink_to("libtensorrt_rtx.so.1")
    vtrt.check_rtx_parser_link([tmp_path], ld_library_path="")  # what `make setup` does


trt_rtx = pytest.importorskip("tensorrt_rtx", reason="the tensorrt-rtx wheel is not installed (make setup installs it "
                              "where PyPI has it); TensorRT itself cannot be installed in this workplace")


@pytest.fixture(scope="module")
def trt_plugin():
    """libvwt_trt_plugin.so, or a skip saying why it is absent."""
    try:
        return plugins.trt_plugin_library()
    except vx.VWTError as e:
        pytest.skip(f"TensorRT plugin tests need the plugin library: {e}")


@pytest.fixture(scope="module")
def graphs(tmp_path_factory, op_library):
    out = tmp_path_factory.mktemp("trt")
    model = vx.load_model("vit_tiny_patch16_224", weights="random", img_size=64, depth=2)
    x = blocky_images(8, 64, cells=4, seed=1)
    vocab = vx.learn_vocabulary(model, [x], size=8, progress=False).words.numpy()
    base = export_model(model)
    vwt = apply_vwt(base, "inter", vocab=vocab, threshold=0.3)
    half = export_model(model, precision="fp16")
    vwt_half = apply_vwt(half, "inter", vocab=vocab, threshold=0.3)
    batches = [x[:4].numpy(), x[4:].numpy()]
    vwt_int8 = quantize_int8(vwt, batches, portable=True)
    files = {
        "model.onnx": base, "model.vwt.portable.onnx": make_portable(vwt),
        "model.fp16.onnx": half, "model.vwt.fp16.portable.onnx": make_portable(vwt_half),
        "model.int8.onnx": quantize_int8(base, batches), "model.vwt.int8.portable.onnx": vwt_int8,
        # the plugin forms: the same graphs without the function bodies, as the pipeline writes them
        "model.vwt.onnx": vwt, "model.vwt.fp16.onnx": vwt_half, "model.vwt.int8.onnx": _without_functions(vwt_int8),
        "model.vwt.local.onnx": apply_vwt(base, "inter", vocab=vocab, threshold=0.3, grouping="local"),
    }
    return {name: save_model(proto, out / name) for name, proto in files.items()}


def _without_functions(model):
    m = onnx.ModelProto()
    m.CopyFrom(model)
    del m.functions[:]
    return m


def _precision(name):
    return next((p for p in ("fp16", "int8") if p in name), "fp32")


# A plugin layer as TensorRT serialises it: the plugin name, length-prefixed (8 bytes, little endian). Neither the
# plugin library (embedded via plugins_to_serialize) nor an engine without the plugin holds this byte string.
PLUGIN_RECORD = len(b"TokenMerge").to_bytes(8, "little") + b"TokenMerge"


def plugin_layers(engine_path: Path) -> int:
    """How many TokenMerge plugin layers the engine holds. With a GPU, TensorRT's engine inspector answers
    (UNVERIFIED here: it deserialises the engine, which needs a CUDA device); without one, the serialised plugin
    records are counted."""
    if torch.cuda.is_available():
        runtime = trt_rtx.Runtime(vtrt._logger(trt_rtx))
        engine = runtime.deserialize_cuda_engine(engine_path.read_bytes())
        info = json.loads(engine.create_engine_inspector().get_engine_information(trt_rtx.LayerInformationFormat.JSON))
        return sum("TokenMerge" in json.dumps(layer) for layer in info["Layers"])
    return engine_path.read_bytes().count(PLUGIN_RECORD)


def _merge_nodes(path) -> int:
    return sum(n.op_type == ops.TOKEN_MERGE for n in onnx.load(str(path), load_external_data=False).graph.node)


@pytest.mark.parametrize("name", ["model.onnx", "model.vwt.portable.onnx", "model.fp16.onnx", "model.vwt.fp16.portable.onnx",
                                  "model.int8.onnx", "model.vwt.int8.portable.onnx"])
@pytest.mark.slow
def test_tensorrt_rtx_parses_and_builds_the_exported_graphs(graphs, name, tmp_path):
    assert vtrt.graph_precision(graphs[name]) == _precision(name)
    engine = tmp_path / (name.replace(".onnx", "") + ".engine")
    settings = vtrt.BuildSettings(precision=_precision(name), batches=[1, 4],
                                  compute_capability="SM89", timing_cache=str(tmp_path / "timing.cache"))
    vtrt.build_engine(graphs[name], engine, settings)
    assert engine.stat().st_size > 10_000
    sidecar = vtrt.read_sidecar(engine)
    assert sidecar["tensorrt"]["flavour"] == "tensorrt-rtx" and sidecar["gpu"]["compute_capability"] == "SM89"
    assert sidecar["onnx"]["sha256"] == vtrt.sha256(graphs[name]) and sidecar["build"]["batches"] == [1, 4]
    assert sidecar["plugin_library"] is None and plugin_layers(engine) == 0  # the portable forms need no plugin
    if not torch.cuda.is_available():
        with pytest.raises(vx.VWTError, match="no CUDA GPU is visible"):
            vx.runtime.load(engine)


@pytest.mark.parametrize("target", ["SM80", "SM89"])
@pytest.mark.parametrize("name", ["model.vwt.onnx", "model.vwt.fp16.onnx", "model.vwt.int8.onnx"])
@pytest.mark.slow
def test_tensorrt_rtx_builds_the_plugin_graphs(graphs, name, target, tmp_path, trt_plugin):
    """model.vwt.onnx (vwt::TokenMerge as a node, no function body) through TensorRT-RTX's own ONNX parser with the
    plugin, strongly typed FP32 / FP16 / INT8 engines for SM80 and SM89 (TensorRT-RTX builds SM75-SM89 and SM120,
    not SM90), each holding the plugin layer."""
    assert vtrt.graph_precision(graphs[name]) == _precision(name) and _merge_nodes(graphs[name]) == 1
    engine = tmp_path / f"{name[:-5]}.{target}.engine"
    vtrt.build_engine(graphs[name], engine, vtrt.BuildSettings(precision=_precision(name), batches=[1, 4],
                                                               compute_capability=target))
    sidecar = vtrt.read_sidecar(engine)
    assert sidecar["plugin_library"]["sha256"] == vtrt.sha256(trt_plugin)
    assert sidecar["gpu"]["compute_capability"] == target
    assert plugin_layers(engine) == 1


@pytest.mark.slow
def test_tensorrt_rtx_builds_local_grouping_and_the_op_alone(graphs, tmp_path, trt_plugin):
    """grid_w > 0 (local grouping) and the single-op graph (float32 and float16 tokens): the plugin's two inputs
    and three outputs match the ONNX node's, and its length output is the size tensor."""
    engine = tmp_path / "local.engine"
    vtrt.build_engine(graphs["model.vwt.local.onnx"], engine, vtrt.BuildSettings(compute_capability="SM89"))
    assert plugin_layers(engine) == 1
    for token_type, precision in ((TensorProto.FLOAT, "fp32"), (TensorProto.FLOAT16, "fp16")):
        model = ops.single_op_model(ops.TOKEN_MERGE, token_type=token_type, num_prefix=1, grid_w=14)
        for value_info, dims in zip(model.graph.input, ([0, 197, 64], [0, 196])):  # only the batch varies
            for dim, size in zip(value_info.type.tensor_type.shape.dim, dims):
                if size:
                    dim.dim_value = size
        path = save_model(model, tmp_path / f"merge.{precision}.onnx")
        engine = tmp_path / f"merge.{precision}.engine"
        vtrt.build_engine(path, engine, vtrt.BuildSettings(precision=precision, batches=[1, 8],
                                                           compute_capability="SM80"))
        assert plugin_layers(engine) == 1


@pytest.mark.slow
def test_tensorrt_rtx_builds_block_merge_from_its_body(tmp_path):
    """The plugin implements TokenMerge only: a graph holding the hybrid's vwt::BlockMerge, written without its
    body (the op-library form), is parsed from the body build_engine attaches, and needs no plugin."""
    from fractions import Fraction

    for rule in (8, Fraction(11, 200)):
        attrs = {"r": rule, "r_den": 0} if isinstance(rule, int) else {"r": rule.numerator, "r_den": rule.denominator}
        model = ops.single_op_model(ops.BLOCK_MERGE, num_prefix=1, **attrs)
        for value_info, dims in zip(model.graph.input, ([0, 120, 64], [0, 120, 16], [0, 120])):  # the batch varies
            for dim, size in zip(value_info.type.tensor_type.shape.dim, dims):
                if size:
                    dim.dim_value = size
        assert needs_op_library(model)
        path = save_model(model, tmp_path / "block_merge.onnx")
        engine = tmp_path / "block_merge.engine"
        vtrt.build_engine(path, engine, vtrt.BuildSettings(batches=[1, 8], compute_capability="SM89"))
        sidecar = json.loads(vtrt.sidecar_path(engine).read_text())
        assert sidecar["plugin_library"] is None and plugin_layers(engine) == 0


@pytest.mark.slow
def test_build_checks_the_rtx_link_before_parsing(graphs, tmp_path, monkeypatch, trt_plugin):
    """Without the link the process would die inside the parser; build_engine raises the clear error first."""
    monkeypatch.setattr(vtrt, "rtx_library_dirs", lambda: [tmp_path])
    monkeypatch.setenv("LD_LIBRARY_PATH", "")
    with pytest.raises(vx.VWTError, match="needs libtensorrt_rtx.so"):
        vtrt.build_engine(graphs["model.vwt.onnx"], tmp_path / "x.engine", vtrt.BuildSettings(compute_capability="SM89"))
    assert not (tmp_path / "x.engine").exists()


def test_a_v1_graph_is_refused_before_parsing(tmp_path):
    model = ops.single_op_model(ops.TOKEN_MERGE, num_prefix=1)
    next(o for o in model.opset_import if o.domain == "vwt").version = 1
    path = save_model(model, tmp_path / "v1.onnx")
    with pytest.raises(vx.VWTError, match="vwt ops version \\[1\\].*export the graph again"):
        vtrt.build_engine(path, tmp_path / "x.engine", vtrt.BuildSettings(compute_capability="SM89"))


@pytest.mark.slow
def test_loading_the_plugin_twice_logs_no_error(trt_plugin):
    """In a fresh process (the registry is process-wide): load_plugin twice logs no TensorRT error, while
    TensorRT's own load_library twice does (the control: the test can see the error it guards against)."""
    script = textwrap.dedent(f"""
        import tensorrt_rtx as trt
        from vwt_export.backends import tensorrt as vtrt
        errors = []
        class Logger(trt.ILogger):
            def __init__(self):
                trt.ILogger.__init__(self)
            def log(self, severity, msg):
                if int(severity) <= int(trt.ILogger.Severity.ERROR):
                    errors.append(msg)
        logger = Logger()
        builder = trt.Builder(logger)  # makes `logger` the process's TensorRT logger
        vtrt.load_plugin(trt, {str(trt_plugin)!r})
        vtrt.load_plugin(trt, {str(trt_plugin)!r})
        print("guarded", len(errors))
        trt.get_plugin_registry().load_library({str(trt_plugin)!r})
        print("unguarded", len(errors))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(Path(vx.__file__).parents[1])})
    assert out.returncode == 0, out.stderr[-2000:]
    assert "guarded 0" in out.stdout and "unguarded 0" not in out.stdout, out.stdout


@pytest.mark.slow
def test_custom_op_graph_without_the_plugin_is_a_clear_error(graphs, tmp_path, monkeypatch):
    monkeypatch.setenv("VWT_TRT_PLUGIN", str(tmp_path / "missing.so"))
    with pytest.raises(vx.VWTError, match="TensorRT plugin library was not found.*TENSORRT_ROOT"):
        vtrt.build_engine(graphs["model.vwt.onnx"], tmp_path / "x.engine", vtrt.BuildSettings(compute_capability="SM89"))


@pytest.mark.slow
def test_an_unsupported_target_is_refused(graphs, tmp_path):
    """TensorRT-RTX builds SM75-SM89 and SM120, not SM90 (Hopper is TensorRT proper's)."""
    with pytest.raises(vx.VWTError, match="cannot build for SM90 \\(it builds for SM75, SM80, SM86, SM89, SM120"):
        vtrt.build_engine(graphs["model.onnx"], tmp_path / "x.engine", vtrt.BuildSettings(compute_capability="SM90"))


@pytest.mark.slow
def test_an_engine_takes_its_graphs_precision(graphs, tmp_path):
    """Strongly typed: asking for FP16 from the FP32 graph is refused, naming the graph to use instead."""
    with pytest.raises(vx.VWTError, match="is an FP32 graph.*not FP16.*model.fp16.onnx"):
        vtrt.build_engine(graphs["model.onnx"], tmp_path / "x.engine", vtrt.BuildSettings(precision="fp16",
                                                                                          compute_capability="SM89"))
    assert not (tmp_path / "x.engine").exists()
