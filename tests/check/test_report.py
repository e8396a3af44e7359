"""The full job on a tiny model: four variants, report.json/md, plots, and the polygraphy commands it prints."""

import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from vwt_export.check import report as rep
from vwt_export.cli import main
from vwt_export.demo import write_demo_images

pytestmark = pytest.mark.slow  # every test reads one whole CLI run: left out of make test-fast

TINY = ["vit_tiny_patch16_224", "--model-arg", "img_size=64", "--model-arg", "depth=1", "--model-arg", "num_classes=10"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, op_library):
    root = tmp_path_factory.mktemp("job")
    calib = write_demo_images(root / "calib", count=8, size=80, seed=1)
    val = root / "val"
    for cls in ("0", "1"):
        write_demo_images(val / cls, count=3, size=80, seed=int(cls) + 5)
    out = root / "out"
    with pytest.raises(SystemExit) as exc:
        main(TINY + ["--weights", "random", "--calib", str(calib), "--val", str(val), "--vocab-size", "12",
                     "--batch", "1,2", "--reps", "2", "--out", str(out), "--quiet"])
    assert exc.value.code == 0
    return out


def test_report_json_follows_the_schema(run_dir):
    report = json.loads((run_dir / "report.json").read_text())
    rep.validate(report)
    assert list(report["variants"]) == ["fp32", "int8", "vwt", "vwt+int8"]
    assert report["images"] == {**report["images"], "count": 6, "labelled": True}
    for name, v in report["variants"].items():
        assert set(v["accuracy"]) == {"top1", "top5"}
        assert set(v["fidelity"]) == {"top1_agreement", "top5_overlap", "kl_divergence", "cosine_similarity"}
        assert set(v["latency"]) == {"1", "2"} and v["latency"]["1"]["runs"] == 2
        assert v["energy"]["available"] is False and v["energy"]["reason"]
        assert (v["merge_share"] is not None) == v["vwt"]
        assert len(v["tokens"]["counts"]) == 6
    assert report["variants"]["fp32"]["fidelity"]["top1_agreement"] == 1.0
    assert report["model"]["weights_meaningful"] is False
    whats = {x["what"] for x in report["not_measured"]}
    assert {"energy", "FP16 variants on ONNX Runtime CPU"} <= whats


def test_report_md_and_plots(run_dir):
    md = (run_dir / "report.md").read_text()
    assert "| **vwt+int8** |" in md and "Random weights" in md and "polygraphy run" in md
    for png in ("plots/accuracy_vs_latency.png", "plots/tokens.png"):
        assert (run_dir / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_validate_rejects_a_broken_report(run_dir):
    report = json.loads((run_dir / "report.json").read_text())
    del report["variants"]["vwt"]["energy"]["reason"]
    with pytest.raises(ValueError, match="needs a reason"):
        rep.validate(report)


def test_the_printed_polygraphy_commands_pass(run_dir):
    report = json.loads((run_dir / "report.json").read_text())
    commands = report["polygraphy"]["commands"]
    assert len(commands) == 3 and any("model.vwt.onnx" in c for c in commands)
    exe = Path(sys.executable).parent / "polygraphy"
    for command in commands:
        argv = shlex.split(command)
        r = subprocess.run([str(exe) if exe.exists() else shutil.which("polygraphy"), *argv[1:]],
                           capture_output=True, text=True)
        assert r.returncode == 0 and "PASSED" in r.stdout + r.stderr, (command, (r.stdout + r.stderr)[-2000:])


def test_polygraphy_without_the_extension_cannot_run_the_vwt_graph(run_dir):
    """The extension is what makes --onnxrt work: plain polygraphy fails on the custom-op graph."""
    from polygraphy.backend.onnxrt import loader

    from vwt_export import polygraphy_ext

    saved = loader.onnxrt
    try:
        loader.onnxrt = saved._real if isinstance(saved, polygraphy_ext._OnnxRuntimeWithVwtOps) else saved
        with pytest.raises(Exception):
            loader.SessionFromOnnx(str(run_dir / "model.vwt.onnx"))()
        polygraphy_ext.install()
        assert loader.SessionFromOnnx(str(run_dir / "model.vwt.onnx"))() is not None
    finally:
        loader.onnxrt = saved
