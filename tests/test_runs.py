"""Whole runs into one output folder: a rerun with other settings leaves only its own files (and the documented
polygraphy commands pass on them), bad output folders fail in one line before any slow work, an interrupted run
says so in its manifest, and unreadable images among good ones are skipped with one warning each."""

import hashlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from vwt_export import data
from vwt_export.demo import write_demo_images
from vwt_export.outdir import LOCK, MANIFEST, PREVIOUS, OutputRun

from .files import png
from .test_cli import run_cli
from .test_outdir import fake_run

TINY = ["vit_tiny_patch16_224", "--model-arg", "img_size=64", "--model-arg", "depth=1", "--model-arg", "num_classes=10",
        "--weights", "random"]
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Six scenes, a JPEG truncated past its header and a decompression bomb."""
    folder = write_demo_images(tmp_path_factory.mktemp("imgs"), count=6, size=80)
    jpeg = folder / "truncated.jpg"
    from PIL import Image

    Image.open(folder / "scene_000.png").convert("RGB").save(jpeg, quality=90)
    jpeg.write_bytes(jpeg.read_bytes()[: jpeg.stat().st_size // 2])
    (folder / "zz_bomb.png").write_bytes(png(16000, 12000, 8, 2))  # a header: 192 MP, over twice the limit
    return folder


def _files_now(out: Path) -> dict[str, str]:
    """Every file of OUT but the lock, the manifest and .previous/, with its sha256."""
    found = {}
    for p in out.rglob("*"):
        rel = p.relative_to(out).as_posix()
        if p.is_file() and rel not in (LOCK, MANIFEST) and not rel.startswith(PREVIOUS + "/"):
            found[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return found


def _assert_only_this_run(out: Path) -> dict:
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["status"] == "complete"
    assert _files_now(out) == {f: e["sha256"] for f, e in manifest["files"].items()}
    return manifest


def _polygraphy_passes(command: str) -> None:
    exe = Path(sys.executable).parent / "polygraphy"
    argv = shlex.split(command)
    r = subprocess.run([str(exe) if exe.exists() else shutil.which("polygraphy"), *argv[1:]], capture_output=True,
                       text=True)
    assert r.returncode == 0 and "PASSED" in r.stdout + r.stderr, (command, (r.stdout + r.stderr)[-2000:])


def test_a_rerun_with_other_settings_leaves_only_its_own_files(tmp_path, images, capsys, monkeypatch, op_library):
    """Three runs into one folder (inter; intra; ToMe with --skip-checks): after each, every file in OUT is the
    last run's (its manifest's checksums), the earlier run's files are in OUT/.previous/<its id>/, and the
    polygraphy commands of the report pass. Images are decoded once per run, and the two bad ones are each named
    in one warning."""
    out = tmp_path / "out"
    decodes = Counter()
    real_load = data.load_image
    monkeypatch.setattr(data, "load_image", lambda path, *a, **k: decodes.update([Path(path).name]) or
                        real_load(path, *a, **k))

    code, stdout, err = run_cli(TINY + ["--calib", str(images), "--vocab-size", "12", "--batch", "1", "--reps", "1",
                                        "--skip-int8", "--out", str(out), "--quiet"], capsys)
    assert code == 0, err
    first = _assert_only_this_run(out)
    assert {"vocab.safetensors", "model.vwt.tokenize.onnx", "report.json", "polygraphy/inputs.json"} <= set(first["files"])
    assert err.count("truncated.jpg") == 1 and err.count("zz_bomb.png") == 1, err
    assert "too large to decode safely" in err and "DecompressionBombError" not in err
    assert max(decodes.values()) == 1 and decodes["truncated.jpg"] == 1 and "zz_bomb.png" not in decodes, decodes

    decodes.clear()
    code, stdout, err = run_cli(TINY + ["--mode", "intra", "--keep", "8", "--val", str(images), "--batch", "1",
                                        "--reps", "1", "--out", str(out), "--quiet"], capsys)
    assert code == 0, err
    second = _assert_only_this_run(out)
    assert second["previous"]["run_id"] == first["run_id"] and max(decodes.values()) == 1
    assert not {"vocab.safetensors", "model.vwt.tokenize.onnx", "model.vwt.trunk.onnx"} & set(second["files"])
    assert (out / PREVIOUS / first["run_id"] / "vocab.safetensors").is_file()
    report = json.loads((out / "report.json").read_text())
    summary = json.loads((out / "summary.json").read_text())
    assert report["settings"]["mode"] == summary["mode"] == "intra" and report["settings"]["keep"] == 8
    assert second["settings"]["compression"]["mode"] == "intra"
    commands = report["polygraphy"]["commands"]
    assert len(commands) == 2 and any("model.vwt.onnx" in c for c in commands)
    for command in commands:
        assert str(out / "polygraphy") in command
        _polygraphy_passes(command)

    code, stdout, err = run_cli(TINY + ["--mode", "tome", "--r", "1000", "--skip-checks", "--skip-int8", "--out",
                                        str(out), "--quiet"], capsys)
    assert code == 0, err
    third = _assert_only_this_run(out)
    assert not (out / "report.json").exists() and not (out / "polygraphy").exists()  # the intra run's: moved
    assert sorted(os.listdir(out / PREVIOUS)) == [second["run_id"]]
    warned = [line for line in err.splitlines() if line.startswith("warning:") and "r=1000" in line]
    assert len(warned) == 1 and "merging 8 tokens per block instead" in warned[0], err
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["settings"]["r"], summary["settings"]["r_requested"]) == ([8], 1000)  # merges per block
    assert set(third["files"]) == {"model.onnx", "model.tome.onnx", "summary.json"}


def test_bad_output_folders_fail_in_one_line_before_any_slow_work(tmp_path, images, capsys, monkeypatch,
                                                                  read_only_folder):
    """A read-only --out failed after the model load and k-means, with "unexpected PermissionError"; an --out in
    the image folder made the next run learn from its own plots."""
    slow = []
    monkeypatch.setattr("vwt_export.models.load_model", lambda *a, **k: slow.append("load") or 1 / 0)
    calib = tmp_path / "calib"
    shutil.copytree(images, calib)
    (tmp_path / "a_file").write_text("x")
    before = sorted(p.name for p in calib.rglob("*"))
    locked = tmp_path / "locked"
    fake_run(locked, {"model.onnx": b"the holder's"})
    cases = {
        "equal to the images": (calib, f"--out {calib} is the input folder {calib}"),
        "inside the images": (calib / "out", f"--out {calib / 'out'} is inside the input folder {calib}"),
        "read-only": (read_only_folder, f"{read_only_folder}: cannot write in it"),
        "under read-only": (read_only_folder / "out", f"{read_only_folder / 'out'}: cannot write in {read_only_folder}"),
        "a file": (tmp_path / "a_file", "exists and is not a folder"),
        "locked": (locked, f"{locked}: another vwt-export run is writing this folder (pid {os.getpid()}"),
    }
    with OutputRun(locked):  # a run in progress
        for name, (out, message) in cases.items():
            code, stdout, err = run_cli(TINY + ["--calib", str(calib), "--vocab-size", "12", "--out", str(out)],
                                        capsys)
            lines = [line for line in err.splitlines() if line.strip()]
            assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], (name, err)
    assert slow == [] and sorted(p.name for p in calib.rglob("*")) == before
    assert (locked / "model.onnx").read_bytes() == b"the holder's"


# The run of the interrupt test, made to wait once it has written its vocabulary: the signal then always finds it
# running (a tiny run could otherwise finish before the test sees the file, and exit 0).
WAITING_RUN = """
import pathlib, sys, time
from vwt_export.vwt.vocab import Vocabulary
save = Vocabulary.save
def save_then_wait(self, path):
    written = save(self, path)
    pathlib.Path(sys.argv[1]).touch()
    time.sleep(600)
    return written
Vocabulary.save = save_then_wait
from vwt_export.cli import main
main(sys.argv[2:])
"""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_run_leaves_a_manifest_that_says_so(tmp_path, images, sig):
    """SIGINT or SIGTERM partway through left a new vocabulary beside the old run's graphs, or new graphs beside
    the old report, with nothing to say so."""
    out = tmp_path / "out"
    earlier = fake_run(out, {"report.json": b"{}", "model.onnx": b"old graph", "polygraphy/inputs.json": b"[]"})
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    waiting = tmp_path / "vocabulary-written"
    proc = subprocess.Popen([sys.executable, "-c", WAITING_RUN, str(waiting), *TINY, "--calib", str(images),
                             "--vocab-size", "12", "--out", str(out), "--quiet"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 240
    while not waiting.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert waiting.exists(), proc.poll() is not None and proc.communicate()[1]
    proc.send_signal(sig)
    stdout, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and err.strip().splitlines()[-1] == "interrupted", err
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["status"] == "interrupted" and manifest["error"] in (sig.name, "KeyboardInterrupt")
    assert "vocab.safetensors" in manifest["files"] and manifest["previous"]["run_id"] == earlier.run_id
    assert _files_now(out) == {f: e["sha256"] for f, e in manifest["files"].items()}  # nothing of the earlier run
    assert (out / PREVIOUS / earlier.run_id / "report.json").read_bytes() == b"{}"


def test_demo_into_a_folder_of_other_files_writes_nothing(tmp_path, capsys):
    """--demo --out ~ wrote 32 PNGs into the home folder, then refused the folder."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "thesis.tex").write_text("years of work")
    code, stdout, err = run_cli(TINY + ["--demo", "--out", str(home)], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert lines[0] == (f"error: {home}: holds files that are not an earlier run's (thesis.tex); move them out of "
                        "the folder or pass another --out")
    assert os.listdir(home) == ["thesis.tex"]
