"""OUT/triton/: the models written for an export, their configs valid for Triton's own proto and our checker, the
files each model needs in its version folder, and clear errors for a folder with nothing to serve."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vwt_export.errors import VWTError
from vwt_export.serving import ServingSettings, pbtxt, write_repository
from vwt_export.serving.repository import model_name


@pytest.fixture(scope="module")
def repo(export_dir):
    return write_repository(export_dir)


def configs(root):
    return {p.parent.name: pbtxt.loads(p.read_text(), str(p)) for p in root.glob("*/config.pbtxt")}


def test_models_and_files(repo, export_dir, op_library):
    cs = configs(repo)
    assert set(cs) == {"baseline_python", "vwt_python", "baseline_ort", "vwt_ort", "vwt_portable_ort"}
    assert {c["backend"] for c in cs.values()} == {"python", "onnxruntime"}
    # the VWT Python model serves the two stages (length-aware batching), the baseline its one graph
    assert pbtxt.parameters_of(cs["vwt_python"])["model_file"] == "model.vwt.tokenize.onnx"
    assert sorted(p.name for p in (repo / "vwt_python" / "1").iterdir()) == [
        "model.py", "model.vwt.tokenize.onnx", "model.vwt.trunk.onnx"]
    assert pbtxt.parameters_of(cs["baseline_python"])["model_file"] == "model.onnx"
    for name, src in (("baseline_ort", "model.onnx"), ("vwt_ort", "model.vwt.onnx"),
                      ("vwt_portable_ort", "model.vwt.portable.onnx")):
        assert (repo / name / "1" / "model.onnx").read_bytes() == (export_dir / src).read_bytes()
    # only the custom-op graph names the op library: the repository's own copy, by absolute path
    lib = cs["vwt_ort"]["model_operations"]["op_library_filename"]
    assert lib == [str((repo / "lib" / op_library.name).resolve())] and os.path.isabs(lib[0])
    assert open(lib[0], "rb").read() == op_library.read_bytes()
    assert "model_operations" not in cs["vwt_portable_ort"] and "model_operations" not in cs["baseline_ort"]
    for c in cs.values():
        assert c["input"][0]["dims"] == [3, 64, 64] and c["output"][0]["dims"] == [10]
        assert c["input"][0]["name"] == "pixels" and c["output"][0]["name"] == "logits"
        assert c["max_batch_size"] == 32 and c["dynamic_batching"]["max_queue_delay_microseconds"] == 2000
    assert "--backend-config=tensorrt,plugins=" in (repo / "README.md").read_text()


def test_configs_pass_triton_proto(repo):
    mc = pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="tritonclient[grpc] not installed")
    from google.protobuf import text_format

    for path in repo.glob("*/config.pbtxt"):
        proto = text_format.Parse(path.read_text(), mc.ModelConfig())
        assert proto.name == path.parent.name and proto.dynamic_batching.max_queue_delay_microseconds == 2000


def test_settings_and_rewrite(export_dir, tmp_path):
    s = ServingSettings(max_batch_size=8, preferred_batch_sizes=(4, 8, 16), max_queue_delay_us=50, cpu_instances=2,
                        call_overhead=12.5)
    root = write_repository(export_dir, files=[export_dir / "model.vwt.onnx"], settings=s, triton_dir=tmp_path / "t")
    (root / "stale").mkdir()
    c = configs(root)["vwt_python"]
    assert c["dynamic_batching"]["preferred_batch_size"] == [4, 8]  # 16 > max_batch_size is left out
    assert c["instance_group"][0]["count"] == 2 and pbtxt.parameters_of(c)["call_overhead"] == "12.5"
    assert set(configs(root)) == {"vwt_python", "vwt_ort"}  # only the files given
    root = write_repository(export_dir, files=[export_dir / "model.onnx"], triton_dir=tmp_path / "t")
    assert sorted(p.name for p in root.iterdir()) == ["README.md", "baseline_ort", "baseline_python"]


def test_tensorrt_config_from_engine_sidecar(export_dir, tmp_path):
    """Config only (no TensorRT here): an engine file's sidecar gives max_batch_size; tensor names and shapes come
    from the ONNX graph it was built from. The engine bytes are never read, so a placeholder file stands for it."""
    folder = tmp_path / "out"
    folder.mkdir()
    for name in ("model.onnx", "model.vwt.portable.onnx"):
        (folder / name).write_bytes((export_dir / name).read_bytes())
    (folder / "model.vwt.fp16.engine").write_bytes(b"placeholder, never loaded")
    (folder / "model.vwt.fp16.engine.json").write_text(json.dumps(
        {"build": {"batches": [1, 8, 16]}, "plugin_library": None, "tensorrt": {"flavour": "tensorrt"}}))
    root = write_repository(folder)
    c = configs(root)["vwt_fp16_trt"]
    assert c["backend"] == "tensorrt" and c["max_batch_size"] == 16
    assert c["instance_group"] == [{"kind": "KIND_GPU", "count": 1}]
    assert c["dynamic_batching"]["preferred_batch_size"] == [8, 16]
    assert (root / "vwt_fp16_trt" / "1" / "model.plan").read_bytes() == b"placeholder, never loaded"
    assert "UNVERIFIED" in (root / "vwt_fp16_trt" / "config.pbtxt").read_text()


def test_names():
    assert [model_name(f, b) for f, b in [("model.onnx", "ort"), ("model.vwt.portable.onnx", "ort"),
                                          ("model.vwt.int8.onnx", "ort"), ("model.fp32.engine", "trt")]] == [
        "baseline_ort", "vwt_portable_ort", "vwt_int8_ort", "baseline_fp32_trt"]


def test_nothing_to_serve(tmp_path):
    with pytest.raises(VWTError, match="neither model.onnx nor model.vwt.onnx"):
        write_repository(tmp_path)


def test_a_foreign_folder_is_never_overwritten(export_dir, tmp_path):
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "precious.txt").write_text("keep")
    with pytest.raises(VWTError, match="not a repository written by vwt-export"):
        write_repository(export_dir, files=[export_dir / "model.onnx"], triton_dir=tmp_path / "t")
    assert (tmp_path / "t" / "precious.txt").read_text() == "keep"


def test_op_library_path_works_from_any_working_directory(export_dir, tmp_path, monkeypatch, op_library):
    """A repository written through a relative path still names the library absolutely, and the README names the
    same file. What Triton's onnxruntime backend does with the config (RegisterCustomOpsLibrary on the string, then a
    session on MODEL/1/model.onnx) runs from an unrelated working directory and gives the graph's own outputs."""
    monkeypatch.chdir(tmp_path)
    root = write_repository(export_dir, files=[export_dir / "model.vwt.onnx"], triton_dir=Path("rel") / "triton")
    assert not root.is_absolute()
    config = configs(root)["vwt_ort"]
    (lib,) = config["model_operations"]["op_library_filename"]
    assert lib == str((tmp_path / "rel" / "triton" / "lib" / op_library.name).resolve())
    readme = (root / "README.md").read_text()
    assert f"by absolute path, {lib}" in readme and f"vwt-export serve {(tmp_path / 'rel' / 'triton').resolve()}" in readme
    assert "pip install 'vwt-export[serving]'\n" not in readme  # not given as the install line (it downgrades numpy)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    probe = ("import sys, numpy as np, onnxruntime as ort\n"
             "so = ort.SessionOptions(); so.register_custom_ops_library(sys.argv[1])\n"
             "s = ort.InferenceSession(sys.argv[2], so, providers=['CPUExecutionProvider'])\n"
             "np.save(sys.argv[4], s.run(None, {s.get_inputs()[0].name: np.load(sys.argv[3])})[0])\n")
    model_file = (root / "vwt_ort" / "1" / "model.onnx").resolve()
    env = {k: v for k, v in os.environ.items() if k != "VWT_ORT_LIBRARY"}
    subprocess.run([sys.executable, "-c", probe, lib, str(model_file), str(tmp_path / "x.npy"), str(tmp_path / "y.npy")],
                   cwd=elsewhere, env=env, check=True)
    from vwt_export import runtime

    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), runtime.load(export_dir / "model.vwt.onnx")(x),
                               rtol=1e-5, atol=1e-6)
