"""The hybrid as a registered method: `vwt-export MODEL --mode hybrid` runs end to end as the other methods do
(export, op-library and portable graphs, INT8, the stage pair, verification against the torch reference, report),
and its graph counts the tokens its torch reference counts."""

import json

import pytest

from vwt_export import methods
from vwt_export.cli import main
from vwt_export.demo import write_demo_images

TINY = ["vit_tiny_patch16_224", "--model-arg", "img_size=64", "--model-arg", "depth=2", "--model-arg", "num_classes=10"]


def test_hybrid_takes_inter_options_and_tomes_r():
    from vwt_export.methods.inter import Inter
    from vwt_export.methods.tome import R

    hybrid = methods.get("hybrid")
    assert all(a is b for a, b in zip(hybrid.options, (*Inter.options, R)))
    assert hybrid.variant == "hybrid" and hybrid.stages and hybrid.needs_vocabulary
    assert [m.name for m in methods.swept({"threshold": (0.1,)})] == ["inter", "hybrid"]


@pytest.mark.parametrize("given,expected", [(0, 0), (2, 2), ("4", 4), (1, None), (-2, None), (2.0, None), ("x", None),
                                            (True, None)])
def test_tile_is_unbounded_or_a_square_of_two_patches_or_more(given, expected):
    from vwt_export.errors import VWTError

    if expected is None:
        with pytest.raises(VWTError, match="tile="):
            methods.spec("hybrid", tile=given)
        return
    spec = methods.spec("hybrid", tile=given)
    hybrid = methods.get("hybrid")
    assert spec.tile == expected
    label = hybrid.label({k: spec.values[k] for k in hybrid.sweep_keys})
    assert label.endswith(f" tile={expected}") == (expected != 2)  # the default (2) goes unnamed
    with pytest.raises(VWTError, match="applies to hybrid mode only"):
        methods.spec("inter", tile=4)  # (2 is the default: harmless)


@pytest.mark.slow
def test_mode_hybrid_runs_end_to_end_from_the_command_line(tmp_path, capsys):
    images = write_demo_images(tmp_path / "imgs", count=6, size=64)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exc:
        main(TINY + ["--weights", "random", "--mode", "hybrid", "--threshold", "0.3", "--r", "0.25", "--tile", "2", "--calib",
                     str(images), "--vocab-size", "8", "--batch", "1", "--reps", "1", "--out", str(out), "--quiet"])
    stdout, err = capsys.readouterr()
    assert exc.value.code == 0, err
    written = {p.name for p in out.iterdir()}
    assert {"model.onnx", "model.int8.onnx", "model.hybrid.onnx", "model.hybrid.portable.onnx",
            "model.hybrid.int8.onnx", "model.hybrid.int8.portable.onnx", "model.hybrid.tokenize.onnx",
            "model.hybrid.trunk.onnx", "model.hybrid.int8.tokenize.onnx", "model.hybrid.int8.trunk.onnx",
            "report.md", "report.json", "summary.json", "vocab.safetensors"} <= written
    summary = json.loads((out / "summary.json").read_text())
    assert summary["mode"] == "hybrid" and summary["settings"]["r"] == 0.25 and summary["settings"]["threshold"] == 0.3
    assert summary["settings"]["tile"] == 2  # groups inside 2 x 2 squares, in the graphs too (verified below)
    for name in ("model.hybrid.onnx", "model.hybrid.portable.onnx", "model.hybrid.tokenize.onnx"):
        assert summary["onnx"][name]["verified"] and summary["onnx"][name]["max_rel_err"] < 1e-4, name
    assert summary["onnx"]["model.hybrid.onnx"]["patches"] == 6 * 16  # its word matches were compared with torch's
    report = json.loads((out / "report.json").read_text())
    assert {"fp32", "int8", "hybrid", "hybrid+int8"} <= set(report["variants"])
    assert report["measured"]["model.hybrid.int8.onnx"]["against"] == "model.hybrid.onnx"
    # the graph counts its own tokens per block, as the torch reference does (mean over the blocks)
    assert report["variants"]["hybrid"]["tokens"]["mean"] == pytest.approx(summary["torch_check"]["tokens_mean"])
    assert summary["torch_check"]["tokens_mean"] < 17
    assert "Mode **hybrid**" in (out / "report.md").read_text()

