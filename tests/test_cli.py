"""The command line as a user meets it: a full run, and one clear line for every kind of bad input."""

import json
import subprocess
import sys

import click
import pytest
import torch

import vwt_export as vx
from vwt_export import Vocabulary
from vwt_export.cli import main
from vwt_export.demo import write_demo_images

TINY = ["vit_tiny_patch16_224", "--model-arg", "img_size=64", "--model-arg", "depth=1", "--model-arg", "num_classes=10"]


def run_cli(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    out, err = capsys.readouterr()
    return exc.value.code, out, err


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return write_demo_images(tmp_path_factory.mktemp("imgs"), count=6, size=80)


@pytest.mark.slow
def test_inter_run_learns_saves_and_reuses_the_vocabulary(tmp_path, images, capsys):
    out = tmp_path / "out"
    code, stdout, err = run_cli(TINY + ["--weights", "random", "--calib", str(images), "--vocab-size", "16",
                                        "--out", str(out), "--quiet"], capsys)
    assert code == 0, err
    assert "tokens per image: mean" in stdout and "agreement with the uncompressed model on 6 images" in stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["weights_meaningful"] is False and summary["torch_check"]["images"] == 6
    assert summary["torch_check"]["tokens_mean"] <= summary["torch_check"]["tokens_in"] == 17
    vocab = Vocabulary.load(out / "vocab.safetensors")
    assert vocab.size == 16 and vocab.meta["source"]["images"] == 6
    for name in ("model.onnx", "model.vwt.onnx", "model.vwt.portable.onnx"):
        assert (out / name).is_file()
    assert all(v["verified"] and v["max_rel_err"] < 1e-4 for v in summary["onnx"].values())
    assert "verified model.vwt.onnx against torch" in err
    report = json.loads((out / "report.json").read_text())
    assert report["command"].startswith("vwt-export vit_tiny_patch16_224 --model-arg img_size=64")
    assert {v: report["variants"][v]["tokens"]["mean"] for v in ("fp32", "int8")} == {"fp32": 17, "int8": 17}
    # measured on the graph itself, not copied from the torch path; on these images both agree
    assert report["variants"]["vwt"]["tokens"]["mean"] == pytest.approx(summary["torch_check"]["tokens_mean"])

    code, stdout, err = run_cli(TINY + ["--weights", "random", "--vocab", str(out / "vocab.safetensors"), "--val",
                                        str(images), "--out", str(tmp_path / "again"), "--quiet", "--skip-export"], capsys)
    assert code == 0, err
    again = json.loads((tmp_path / "again" / "summary.json").read_text())
    assert again["torch_check"] == {**summary["torch_check"], "images_from": str(images)}
    assert not (tmp_path / "again" / "model.onnx").exists()


@pytest.mark.slow
def test_intra_run(tmp_path, images, capsys):
    code, stdout, err = run_cli(TINY + ["--weights", "random", "--mode", "intra", "--keep", "8", "--val", str(images),
                                        "--out", str(tmp_path), "--quiet"], capsys)
    assert code == 0, err
    assert "verified model.vwt.onnx" in err
    assert not (tmp_path / "model.vwt.portable.onnx").exists()  # intra graphs are standard ops: no portable twin
    assert "tokens per image: mean 9.0 of 17" in stdout


@pytest.mark.slow
def test_python_dash_m_and_help():
    r = subprocess.run([sys.executable, "-m", "vwt_export", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "--mode [none|intra|inter|tome|hybrid]" in r.stdout


def _bad_inputs(tmp_path, images):
    (tmp_path / "empty").mkdir()
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "a.txt").write_text("x")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "a.jpg").write_bytes(b"nope")
    (tmp_path / "corrupt.pth").write_bytes(b"garbage")
    (tmp_path / "corrupt.safetensors").write_bytes(b"garbage")
    Vocabulary(torch.randn(4, 3 * 14 * 14), patch_size=14).save(tmp_path / "p14.safetensors")
    rnd = TINY + ["--weights", "random"]
    img = ["--calib", str(images)]
    return {
        "unknown model": (["deit_ss", "--weights", "random"] + img, "unknown model 'deit_ss'"),
        "not a vit": (["resnet18", "--weights", "random"] + img, "not a timm VisionTransformer"),
        "missing weights": (TINY + ["--weights", str(tmp_path / "no.pth")] + img, "no such checkpoint"),
        "corrupt weights": (TINY + ["--weights", str(tmp_path / "corrupt.pth")] + img, "not a readable checkpoint"),
        "missing vocab": (rnd + ["--vocab", str(tmp_path / "no.safetensors"), "--val", str(images)], "no such vocabulary"),
        "corrupt vocab": (rnd + ["--vocab", str(tmp_path / "corrupt.safetensors"), "--val", str(images)], "corrupt"),
        "wrong patch vocab": (rnd + ["--vocab", str(tmp_path / "p14.safetensors"), "--val", str(images)], "patch size 14"),
        "empty calib": (rnd + ["--calib", str(tmp_path / "empty")], "no images found"),
        "non-image calib": (rnd + ["--calib", str(tmp_path / "texts")], "no images found"),
        "unreadable calib": (rnd + ["--calib", str(tmp_path / "broken")], "none of the 1 image files could be read"),
        "missing calib": (rnd + ["--calib", str(tmp_path / "nowhere")], "no such folder"),
        "threshold": (rnd + img + ["--threshold", "2.5"], "2.5 is not in the range"),
        "keep fraction": (rnd + img + ["--mode", "intra", "--keep", "1.5"], "keep=1.5 is out of range"),
        "keep count": (rnd + img + ["--mode", "intra", "--keep", "17"], "keep=17 patches is out of range"),
        "keep text": (rnd + img + ["--mode", "intra", "--keep", "lots"], "--keep lots"),
        "no vocab source": (rnd + ["--val", str(images)], "inter mode needs a vocabulary"),
        "no check images": (rnd + ["--mode", "intra"], "the checks need images"),
        "bad model arg": (rnd + img + ["--model-arg", "img_size"], "expected KEY=VALUE"),
        "wrong image size": (TINY + ["--weights", "random", "--model-arg", "patch_size=12"] + img,
                             "not divisible by the patch size 12"),
    }


def test_bad_input_gives_one_clear_line_and_keeps_existing_files(tmp_path, images, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "vocab.safetensors").write_bytes(b"precious")
    for name, (argv, msg) in _bad_inputs(tmp_path, images).items():
        code, stdout, err = run_cli(argv + ["--out", str(out), "--quiet"], capsys)
        lines = [line for line in err.splitlines() if line.strip()]
        assert code not in (0, None), name
        assert lines and lines[-1].startswith("error: ") and msg in lines[-1], (name, err)
        assert "Traceback" not in err, name
        assert (out / "vocab.safetensors").read_bytes() == b"precious", name


@pytest.mark.slow
def test_trt_backend_builds_every_engine_ahead_of_time(tmp_path, images, capsys):
    """--backend trt with TensorRT-RTX on this GPU-less machine: the FP16 graphs are written and verified, and all
    six strongly typed engines are built for SM89 with sidecars; running them is reported as not measured."""
    pytest.importorskip("tensorrt_rtx", reason="the tensorrt-rtx wheel is not installed; TensorRT cannot be "
                        "installed in this workplace")
    out = tmp_path / "out"
    code, stdout, err = run_cli(TINY + ["--weights", "random", "--calib", str(images), "--vocab-size", "16",
                                        "--backend", "trt", "--trt-target", "SM89", "--batch", "1,2", "--reps", "1",
                                        "--out", str(out), "--quiet"], capsys)
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    for key in ("model.fp16.onnx", "model.vwt.fp16.onnx", "model.vwt.fp16.portable.onnx"):
        assert summary["onnx"][key]["verified"] and summary["onnx"][key]["max_rel_err"] < 1e-2, key
    for stem in ("model", "model.vwt"):
        for precision in ("fp32", "fp16", "int8"):
            sidecar = json.loads((out / f"{stem}.{precision}.engine.json").read_text())
            assert sidecar["build"]["precision"] == precision and sidecar["gpu"]["compute_capability"] == "SM89"
    report = json.loads((out / "report.json").read_text())
    assert any("TensorRT engines" in m["what"] and "SM89" in m["why"] for m in report["not_measured"])
    for precision in ("fp32", "int8"):  # the trunk stage over a token-count profile, for length-aware batching
        sidecar = json.loads((out / f"model.vwt.trunk.{precision}.engine.json").read_text())
        assert sidecar["build"]["tokens"] == [2, 9, 17] and sidecar["onnx"]["file"] == f"model.vwt{'.int8' if precision == 'int8' else ''}.trunk.onnx"
    from vwt_export.plugins import trt_plugin_library

    try:
        trt_plugin_library()
        plugin_built = True
    except vx.VWTError:
        plugin_built = False
    assert summary["engines"]["vwt"]["from"] == ("model.vwt.onnx" if plugin_built else "model.vwt.portable.onnx")
    assert "TensorRT: " not in err  # no spurious TensorRT errors when building ahead of time


@pytest.mark.slow
def test_a_vocabulary_with_duplicate_words_completes_and_reports_near_ties(tmp_path, images, capsys):
    """The reference repository's vocabularies hold exact and near-duplicate words. Matching them is a coin toss
    that ONNX Runtime and torch may call differently; the run must complete and count the near-ties."""
    import vwt_export as vx

    model = vx.load_model(TINY[0], weights="random", img_size=64, depth=1, num_classes=10)
    learned = vx.learn_vocabulary(model, images, size=12, progress=False).words
    g = torch.Generator().manual_seed(0)
    near = learned * (1 + 1e-7 * torch.randn(learned.shape, generator=g))  # cosine ~ 1 - 1e-14: a near-duplicate
    torch.save(torch.cat([learned, learned, near]), tmp_path / "vocab.pt")  # a bare tensor, as the reference saves
    out = tmp_path / "out"
    code, stdout, err = run_cli(TINY + ["--weights", "random", "--vocab", str(tmp_path / "vocab.pt"), "--val",
                                        str(images), "--threshold", "0.2", "--skip-int8", "--reps", "1", "--out",
                                        str(out), "--quiet"], capsys)
    assert code == 0, err
    assert f"{3 * len(learned)} pairs of words are near-duplicates" in err  # learning left none among its own
    summary = json.loads((out / "summary.json").read_text())
    assert summary["near_ties"]["patches"] > 0 and summary["near_ties"]["images"] > 0
    for name in ("model.vwt.onnx", "model.vwt.portable.onnx"):
        check = summary["onnx"][name]
        assert check["verified"] and check["near_ties"] > 0 and check["matches_differ"] <= check["near_ties"]
    ties = summary["near_ties"]  # counted one way: the console, summary.json and report.md say the same numbers
    assert f"near-ties: {ties['patches']} patches in {ties['images']} of {ties['of_images']} verification images" in stdout
    worst = summary["onnx"][ties["file"]]
    assert (worst["near_ties"], worst["images_with_near_ties"]) == (ties["patches"], ties["images"])
    line = next(l for l in (out / "report.md").read_text().splitlines() if l.startswith(f"- `{ties['file']}`"))
    assert f"{ties['patches']} near-tie patches in {ties['images']} image" in line


@pytest.mark.slow
def test_demo_with_a_vocabulary_checks_on_the_demo_scenes(tmp_path, images, capsys):
    Vocabulary(torch.randn(8, 3 * 16 * 16), patch_size=16).save(tmp_path / "v.safetensors")
    out = tmp_path / "out"
    code, stdout, err = run_cli(TINY + ["--demo", "--vocab", str(tmp_path / "v.safetensors"), "--skip-int8", "--reps",
                                        "1", "--batch", "1", "--out", str(out), "--quiet"], capsys)
    assert code == 0, err
    assert "synthetic images" in err and json.loads((out / "summary.json").read_text())["torch_check"]["images"] == 32


def test_every_option_has_help_text():
    from vwt_export.cli import command
    from vwt_export.serving import serve

    bare = [p.opts[0] for c in (command, serve) for p in c.params if isinstance(p, click.Option) and not p.help]
    assert not bare, f"options without help text: {bare}"


@pytest.mark.slow
def test_the_triton_repository_is_reported_written_once(tmp_path, images, capsys):
    out = tmp_path / "out"
    code, _, err = run_cli(TINY + ["--weights", "random", "--mode", "intra", "--keep", "8", "--val", str(images),
                                   "--skip-checks", "--skip-int8", "--triton", "--out", str(out), "--quiet"], capsys)
    assert code == 0, err
    assert [line for line in err.splitlines() if str(out / "triton") in line and "wrote" in line] == [
        f"wrote {out / 'triton'}"], err
