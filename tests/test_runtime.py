"""Loading artefacts as production code does, and the op library's checks."""

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

import vwt_export as vx
from vwt_export import plugins, runtime
from vwt_export.graph.export import export_model, save_model
from vwt_export.graph.surgery import apply_vwt


@pytest.fixture(scope="module")
def vwt_file(tmp_path_factory):
    model = vx.load_model("vit_tiny_patch16_224", weights="random", img_size=32, depth=1)
    vocab = vx.Vocabulary(torch.randn(4, 768), patch_size=16)
    path = tmp_path_factory.mktemp("m") / "model.vwt.onnx"
    save_model(apply_vwt(export_model(model), "inter", vocab=vocab.words.numpy(), threshold=1.0), path)
    return model, vocab, path


def test_load_runs_a_vwt_graph_with_the_op_library(vwt_file):
    model, vocab, path = vwt_file
    x = torch.randn(3, 3, 32, 32)
    got = runtime.load(path)(x.numpy())
    expected = vx.compress(model, "inter", vocab=vocab, threshold=1.0)(x).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_library_version_matches_the_header():
    header = (Path(__file__).parents[1] / "plugins" / "common" / "vwt_version.h").read_text()
    assert re.search(r'#define VWT_LIBRARY_VERSION "([^"]+)"', header).group(1) == plugins.LIBRARY_VERSION


def _clear_cache():
    plugins.ort_library.cache_clear()


@pytest.mark.skipif(shutil.which("cc") is None, reason="needs a C compiler to build a stand-in library")
def test_a_library_of_another_version_is_refused(vwt_file, tmp_path, monkeypatch):
    src = tmp_path / "old.c"
    src.write_text('const char* vwt_library_version(void) { return "0.0.1"; }\n')
    lib = tmp_path / "libold.so"
    subprocess.run(["cc", "-shared", "-fPIC", str(src), "-o", str(lib)], check=True)
    monkeypatch.setenv("VWT_ORT_LIBRARY", str(lib))
    _clear_cache()
    try:
        with pytest.raises(vx.VWTError, match="version 0.0.1, but this vwt-export needs"):
            runtime.load(vwt_file[2])
    finally:
        _clear_cache()


def test_missing_or_foreign_library_is_a_clear_error(vwt_file, tmp_path, monkeypatch):
    monkeypatch.setenv("VWT_ORT_LIBRARY", str(tmp_path / "nope.so"))
    _clear_cache()
    try:
        with pytest.raises(vx.VWTError, match="op library was not found.*make setup"):
            runtime.load(vwt_file[2])
        (tmp_path / "junk.so").write_bytes(b"junk")
        monkeypatch.setenv("VWT_ORT_LIBRARY", str(tmp_path / "junk.so"))
        _clear_cache()
        with pytest.raises(vx.VWTError, match="not a vwt op library"):
            runtime.load(vwt_file[2])
    finally:
        _clear_cache()


def test_bad_model_files(tmp_path):
    (tmp_path / "bad.onnx").write_bytes(b"definitely not protobuf")
    with pytest.raises(vx.VWTError, match="not a readable ONNX model"):
        runtime.load(tmp_path / "bad.onnx")
    with pytest.raises(vx.VWTError, match="no such model file"):
        runtime.load(tmp_path / "missing.onnx")
    with pytest.raises(vx.VWTError, match="unknown model format"):
        runtime.load(tmp_path / "model.pb")
