"""TensorRT: the sidecar checks (pure logic, always run) and, where the tensorrt-rtx wheel is installed, real
TensorRT parsing and ahead-of-time engine building of the exported graphs on this CPU-only machine."""

import json

import pytest
import torch

import vwt_export as vx
from vwt_export.backends import tensorrt as vtrt
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


trt_rtx = pytest.importorskip("tensorrt_rtx", reason="the tensorrt-rtx wheel is not installed (make setup installs it "
                              "where PyPI has it); TensorRT itself cannot be installed in this workplace")


@pytest.fixture(scope="module")
def graphs(tmp_path_factory, op_library):
    out = tmp_path_factory.mktemp("trt")
    model = vx.load_model("vit_tiny_patch16_224", weights="random", img_size=64, depth=2)
    x = blocky_images(8, 64, cells=4, seed=1)
    vocab = vx.learn_vocabulary(model, [x], size=8, progress=False)
    base = export_model(model)
    vwt = apply_vwt(base, "inter", vocab=vocab.words.numpy(), threshold=0.3)
    half = export_model(model, precision="fp16")
    batches = [x[:4].numpy(), x[4:].numpy()]
    files = {
        "model.onnx": base, "model.vwt.portable.onnx": make_portable(vwt),
        "model.fp16.onnx": half,
        "model.vwt.fp16.portable.onnx": make_portable(apply_vwt(half, "inter", vocab=vocab.words.numpy(), threshold=0.3)),
        "model.int8.onnx": quantize_int8(base, batches),
        "model.vwt.int8.portable.onnx": quantize_int8(vwt, batches, portable=True),
    }
    return {name: save_model(proto, out / name) for name, proto in files.items()}


def _precision(name):
    return next((p for p in ("fp16", "int8") if p in name), "fp32")


@pytest.mark.parametrize("name", ["model.onnx", "model.vwt.portable.onnx", "model.fp16.onnx", "model.vwt.fp16.portable.onnx",
                                  "model.int8.onnx", "model.vwt.int8.portable.onnx"])
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
    if not torch.cuda.is_available():
        with pytest.raises(vx.VWTError, match="no CUDA GPU is visible"):
            vx.runtime.load(engine)


def test_custom_op_graph_without_the_plugin_is_a_clear_error(graphs, tmp_path, monkeypatch):
    monkeypatch.setenv("VWT_TRT_PLUGIN", str(tmp_path / "missing.so"))
    vwt = tmp_path / "model.vwt.onnx"
    import onnx

    m = onnx.load(str(graphs["model.vwt.portable.onnx"]))
    del m.functions[:]
    onnx.save(m, str(vwt))
    with pytest.raises(vx.VWTError, match="TensorRT plugin library is not built"):
        vtrt.build_engine(vwt, tmp_path / "x.engine", vtrt.BuildSettings(compute_capability="SM89"))


def test_an_engine_takes_its_graphs_precision(graphs, tmp_path):
    """Strongly typed: asking for FP16 from the FP32 graph is refused, naming the graph to use instead."""
    with pytest.raises(vx.VWTError, match="is an FP32 graph.*not FP16.*model.fp16.onnx"):
        vtrt.build_engine(graphs["model.onnx"], tmp_path / "x.engine", vtrt.BuildSettings(precision="fp16",
                                                                                          compute_capability="SM89"))
    assert not (tmp_path / "x.engine").exists()
