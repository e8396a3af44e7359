"""Malformed files at every entry point that reads one (vocabularies, engine sidecars, models for runtime.load,
Triton configs for serve): each gives one VWTError line naming the file, and exit 2 from the commands."""

import json

import onnx
import pytest
import torch
from onnx import TensorProto, helper
from safetensors.torch import save_file

from vwt_export import Vocabulary, runtime
from vwt_export.backends.tensorrt import read_sidecar
from vwt_export.cli import main
from vwt_export.errors import VWTError


def _vocab_with_metadata(path, metadata: str):
    save_file({"words": torch.randn(4, 12)}, str(path), metadata={"vwt_export": metadata})
    return path


GOOD = {"format": "vwt-export/vocabulary", "version": 1, "space": "image", "patch_size": 2, "channels": 3,
        "feature_dim": 12, "size": 4, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "source": {}}


@pytest.mark.parametrize("metadata,message", [
    ("[1, 2]", "a JSON list, not an object"),
    ('"text"', "a JSON str, not an object"),
    ("null", "a JSON NoneType, not an object"),
    (json.dumps({**GOOD, "version": "1"}), "version '1' is not a number"),
    (json.dumps({**GOOD, "version": 7}), "version 7, newer than this vwt-export reads"),
    (json.dumps({**GOOD, "format": "other/thing"}), "unsupported vocabulary format 'other/thing'"),
    (json.dumps({**GOOD, "space": 3}), "space 3 is not one of image, embed"),
    (json.dumps({**GOOD, "patch_size": "16"}), "patch_size '16' is not a positive whole number"),
    (json.dumps({**GOOD, "feature_dim": True}), "feature_dim True is not a positive whole number"),
    (json.dumps({**GOOD, "mean": "abc"}), "mean 'abc' is not a list of numbers"),
    (json.dumps({**GOOD, "std": [0.5, None, 0.5]}), "is not a list of numbers"),
    (json.dumps({**GOOD, "source": [1]}), "source is not an object"),
    (json.dumps({**GOOD, "size": 5}), "holds 4 words but the metadata says 5"),
    (json.dumps({**GOOD, "feature_dim": 13}), "words are 12 wide but the metadata says 13"),
])
def test_vocabulary_metadata_of_the_wrong_shape_is_one_line(tmp_path, metadata, message):
    path = _vocab_with_metadata(tmp_path / "v.safetensors", metadata)
    with pytest.raises(VWTError, match="v.safetensors") as e:
        Vocabulary.load(path)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_good_metadata_loads(tmp_path):
    vocab = Vocabulary.load(_vocab_with_metadata(tmp_path / "v.safetensors", json.dumps(GOOD)))
    assert vocab.size == 4 and vocab.patch_size == 2 and vocab.mean == (0.5, 0.5, 0.5)


def test_a_folder_named_like_a_vocabulary(tmp_path):
    (tmp_path / "v.safetensors").mkdir()
    with pytest.raises(VWTError, match="a folder, not a vocabulary file"):
        Vocabulary.load(tmp_path / "v.safetensors")


def test_the_cli_gives_one_line_and_exit_2_for_a_malformed_vocabulary(tmp_path, capsys):
    path = _vocab_with_metadata(tmp_path / "v.safetensors", "[1, 2]")
    (tmp_path / "imgs").mkdir()
    from PIL import Image

    Image.new("RGB", (64, 64)).save(tmp_path / "imgs" / "a.png")
    with pytest.raises(SystemExit) as exc:
        main(["vit_tiny_patch16_224", "--weights", "random", "--vocab", str(path), "--val", str(tmp_path / "imgs"),
              "--out", str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith(f"error: {path}: malformed vocabulary metadata")


# -- engine sidecars -------------------------------------------------------------------------------------------


SIDECAR = {"format": "vwt-export/engine", "version": 1, "tensorrt": {"flavour": "tensorrt-rtx", "version": "1.7"},
           "gpu": {"name": None, "compute_capability": "SM89"}, "plugin_library": None,
           "onnx": {"file": "model.onnx", "sha256": "0" * 64}}


@pytest.mark.parametrize("text,message", [
    ("[1, 2]", "not a vwt-export engine sidecar (a JSON list"),
    ('"x"', "not a vwt-export engine sidecar (a JSON str"),
    (json.dumps({**SIDECAR, "format": "x"}), "not a vwt-export engine sidecar"),
    (json.dumps({**SIDECAR, "tensorrt": {}}), "malformed sidecar (tensorrt.flavour is None)"),
    (json.dumps({**SIDECAR, "tensorrt": [1]}), "malformed sidecar (tensorrt is [1])"),
    (json.dumps({**SIDECAR, "gpu": None}), "malformed sidecar (gpu is None)"),
    (json.dumps({**SIDECAR, "gpu": {"compute_capability": 89}}), "gpu.compute_capability is 89"),
    (json.dumps({**SIDECAR, "plugin_library": "lib.so"}), "malformed sidecar (plugin_library is 'lib.so')"),
    ("{not json", "corrupt sidecar"),
])
def test_a_malformed_sidecar_is_one_line_from_runtime_load(tmp_path, text, message):
    (tmp_path / "model.fp32.engine").write_bytes(b"engine bytes")
    (tmp_path / "model.fp32.engine.json").write_text(text)
    for load in (read_sidecar, runtime.load):
        with pytest.raises(VWTError, match="model.fp32.engine.json") as e:
            load(tmp_path / "model.fp32.engine")
        assert message in str(e.value) and "\n" not in str(e.value)


def test_a_well_formed_sidecar_passes_the_shape_check(tmp_path):
    (tmp_path / "m.engine").write_bytes(b"x")
    (tmp_path / "m.engine.json").write_text(json.dumps(SIDECAR))
    assert read_sidecar(tmp_path / "m.engine")["gpu"]["compute_capability"] == "SM89"


# -- runtime.load ----------------------------------------------------------------------------------------------


def _no_input_model(path):
    const = helper.make_node("Constant", [], ["y"], value=helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0]))
    graph = helper.make_graph([const], "g", [], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10), str(path))
    return path


@pytest.mark.parametrize("make,message", [
    (lambda p: (p / "model.onnx").mkdir(), "a folder, not a model file"),
    (lambda p: (p / "model.engine").mkdir(), "a folder, not a model file"),
    (lambda p: (p / "model.onnx").write_bytes(b""), "onnxruntime cannot load it"),
    (lambda p: (p / "model.onnx").write_text("[1, 2]"), "not a readable ONNX model"),
    (lambda p: _no_input_model(p / "model.onnx"), "cannot be run as a vwt-export model (it has no input)"),
    (lambda p: _no_input_model(p / "model.vwt.tokenize.onnx") and _no_input_model(p / "model.vwt.trunk.onnx"),
     "cannot be run as a vwt-export model (it has no input)"),
    (lambda p: (p / "model.vwt.tokenize.onnx").write_bytes(b"junk"), "the trunk stage of model.vwt.onnx is missing"),
    (lambda p: (p / "model.engine").write_bytes(b"x"), "model.engine.json: missing"),
])
def test_runtime_load_refuses_malformed_files_in_one_line(tmp_path, make, message):
    make(tmp_path)
    path = next(p for p in tmp_path.iterdir() if p.suffix in (".onnx", ".engine") and "trunk" not in p.name)
    with pytest.raises(VWTError) as e:
        runtime.load(path)
    assert message in str(e.value) and str(tmp_path) in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("error", [RuntimeError("a bug"), MemoryError()])
def test_runtime_load_lets_other_errors_through_as_themselves(tmp_path, monkeypatch, error):
    """Every exception while loading became a VWTError: a bug or running out of memory looked like bad input."""
    path = _no_input_model(tmp_path / "model.onnx")

    def failing(*args, **kwargs):
        raise error

    monkeypatch.setattr("vwt_export.backends.onnxruntime.create_session", failing)
    with pytest.raises(type(error)):
        runtime.load(path)


# -- serve ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind,message", [
    ("binary", "not text (byte"),
    ("folder", "not a file (a config.pbtxt is Triton's text model configuration)"),
    ("nul", "holds NUL bytes"),
    ("garbage", "line 1: expected"),
    ("empty", "give exactly one of backend"),
])
def test_serve_refuses_a_malformed_config_in_one_line(tmp_path, capsys, kind, message, tritonserver):
    """A binary config.pbtxt, or a folder of that name, gave a traceback."""
    config = tmp_path / "triton" / "m" / "config.pbtxt"
    config.parent.mkdir(parents=True)
    if kind == "binary":
        config.write_bytes(bytes(range(256)))
    elif kind == "folder":
        config.mkdir()
    elif kind == "nul":
        config.write_text('name: "m"\x00 backend: "python"')
    elif kind == "garbage":
        config.write_text("{{{ ]]")
    else:
        config.write_text("")
    with pytest.raises(SystemExit) as exc:
        main(["serve", str(tmp_path / "triton")])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {config}") and message in lines[0], err


def test_serve_on_a_file_or_nothing_is_one_line(tmp_path, capsys, tritonserver):
    (tmp_path / "file").write_text("x")
    for target in (tmp_path / "file", tmp_path / "nowhere", tmp_path):
        with pytest.raises(SystemExit) as exc:
            main(["serve", str(target)])
        err = capsys.readouterr().err
        assert exc.value.code == 2 and len(err.strip().splitlines()) == 1 and err.startswith("error: "), err
