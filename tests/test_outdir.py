"""One output folder, one run: the lock, the move of an earlier run's files, the manifest, and the checks that
runtime.load makes against it. Runs here are OutputRun blocks that write a few files (no model): fast."""

import contextlib
import hashlib
import json
import logging
import os
import signal
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from vwt_export import runtime
from vwt_export.errors import VWTError
from vwt_export.outdir import LOCK, MANIFEST, PREVIOUS, OutputRun, check_folder, manifest_problems, read_manifest


def fake_run(out, files, inputs=(), error=None, settings=None):
    """A run that writes `files` ({relative path: bytes}) into `out`, then raises `error` if given."""
    run = OutputRun(out, inputs, settings or {"mode": "test"}, "fake run")
    with contextlib.suppress(type(error)) if error is not None else contextlib.nullcontext():
        with run:
            run.begin()
            for name, data in files.items():
                (out / name).parent.mkdir(parents=True, exist_ok=True)
                (out / name).write_bytes(data)
            if error is not None:
                raise error
    return run


def manifest(out):
    return json.loads((out / MANIFEST).read_text())


def listing(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def test_a_run_lists_every_file_it_wrote_with_checksums_in_a_manifest_written_last(tmp_path):
    out = tmp_path / "out"
    run = fake_run(out, {"model.onnx": b"graph", "polygraphy/inputs.json": b"[]"}, settings={"r": 8})
    m = manifest(out)
    assert m["format"] == "vwt-export/manifest" and m["status"] == "complete" and m["run_id"] == run.run_id
    assert m["settings"] == {"r": 8} and m["command"] == "fake run" and m["previous"] is None
    assert m["files"] == {"model.onnx": {"bytes": 5, "sha256": hashlib.sha256(b"graph").hexdigest()},
                          "polygraphy/inputs.json": {"bytes": 2, "sha256": hashlib.sha256(b"[]").hexdigest()}}
    newest = max(os.stat(out / f).st_mtime_ns for f in m["files"])
    assert os.stat(out / MANIFEST).st_mtime_ns >= newest
    assert listing(out) == sorted([LOCK, MANIFEST, "model.onnx", "polygraphy/inputs.json"])


def test_a_second_run_moves_the_first_away_and_only_the_latest_earlier_run_is_kept(tmp_path):
    out = tmp_path / "out"
    first = fake_run(out, {"model.onnx": b"one", "report.json": b"{}", "plots/a.png": b"png"})
    second = fake_run(out, {"model.onnx": b"two"})
    assert listing(out) == sorted([LOCK, MANIFEST, "model.onnx", f"{PREVIOUS}/{first.run_id}/model.onnx",
                                   f"{PREVIOUS}/{first.run_id}/report.json", f"{PREVIOUS}/{first.run_id}/plots/a.png",
                                   f"{PREVIOUS}/{first.run_id}/{MANIFEST}"])
    assert (out / "model.onnx").read_bytes() == b"two" and not (out / "report.json").exists()
    assert manifest(out)["previous"]["run_id"] == first.run_id
    assert read_manifest(out / PREVIOUS / first.run_id)["run_id"] == first.run_id  # it can be put back as it was
    third = fake_run(out, {"summary.json": b"{}"})
    assert sorted(os.listdir(out / PREVIOUS)) == [second.run_id]
    assert manifest(out)["run_id"] == third.run_id and list(manifest(out)["files"]) == ["summary.json"]


def test_a_run_that_writes_nothing_leaves_the_folder_as_it_found_it(tmp_path):
    """A bad --weights is found after begin(): the earlier run's files must not be moved away for nothing."""
    out = tmp_path / "out"
    first = fake_run(out, {"model.onnx": b"one", "vocab.safetensors": b"precious"})
    before = {f: (out / f).read_bytes() for f in listing(out) if f != LOCK}  # the lock names its last holder
    fake_run(out, {}, error=VWTError("unknown model 'deit_ss'"))
    assert {f: (out / f).read_bytes() for f in listing(out) if f != LOCK} == before
    assert manifest(out)["run_id"] == first.run_id and not (out / PREVIOUS).exists()


def test_a_run_that_fails_before_writing_into_a_new_folder_leaves_no_folder(tmp_path):
    fake_run(tmp_path / "new" / "out", {}, error=VWTError("unknown model 'deit_ss'"))
    assert not (tmp_path / "new" / "out").exists()
    with pytest.raises(VWTError):
        with OutputRun(tmp_path / "new2"):  # failing before begin(), in the input checks
            raise VWTError("no images found")
    assert not (tmp_path / "new2").exists()


@pytest.mark.parametrize("error,status,why", [
    (ValueError("boom"), "failed", "ValueError: boom"),
    (VWTError("model.vwt.onnx differs from torch"), "failed", "model.vwt.onnx differs from torch"),
    (KeyboardInterrupt(), "interrupted", "KeyboardInterrupt"),
])
def test_a_failed_or_interrupted_run_says_so_in_its_manifest(tmp_path, error, status, why):
    out = tmp_path / "out"
    earlier = fake_run(out, {"report.json": b"old"})
    fake_run(out, {"vocab.safetensors": b"new"}, error=error)
    m = manifest(out)
    assert (m["status"], m["error"]) == (status, why) and list(m["files"]) == ["vocab.safetensors"]
    assert not (out / "report.json").exists()  # the earlier report is not mixed with the new vocabulary
    assert (out / PREVIOUS / earlier.run_id / "report.json").read_bytes() == b"old"


def test_sigterm_and_sighup_during_a_run_are_recorded_as_interruptions(tmp_path):
    for sig in (signal.SIGTERM, signal.SIGHUP):
        out = tmp_path / sig.name
        with pytest.raises(KeyboardInterrupt):
            with OutputRun(out) as run:
                run.begin()
                (out / "model.onnx").write_bytes(b"half")
                os.kill(os.getpid(), sig)
        assert (manifest(out)["status"], manifest(out)["error"]) == ("interrupted", sig.name)
        assert signal.getsignal(sig) == signal.SIG_DFL  # restored


def test_a_run_holding_the_folder_stops_a_second_one_at_once(tmp_path):
    out = tmp_path / "out"
    with OutputRun(out) as holder:
        holder.begin()
        with pytest.raises(VWTError, match=f"another vwt-export run is writing this folder \\(pid {os.getpid()}, "
                                           f"run {holder.run_id}"):
            with OutputRun(out):
                pass
        (out / "model.onnx").write_bytes(b"holder's")
    assert manifest(out)["run_id"] == holder.run_id and (out / "model.onnx").read_bytes() == b"holder's"
    fake_run(out, {"model.onnx": b"next"})  # released: the next run goes ahead


def test_the_lock_is_held_across_processes(tmp_path):
    out = tmp_path / "out"
    with OutputRun(out):
        script = ("import sys; sys.path.insert(0, sys.argv[2]); from vwt_export.outdir import OutputRun\n"
                  "try:\n    OutputRun(sys.argv[1]).__enter__()\nexcept Exception as e:\n    print(e)")
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        r = subprocess.run([sys.executable, "-c", script, str(out), root], capture_output=True, text=True,
                           timeout=120)
    assert "another vwt-export run is writing this folder" in r.stdout, r.stdout + r.stderr


def test_inputs_inside_the_folder_stay_where_they_are(tmp_path):
    """--demo writes its scenes into OUT/demo-images; --vocab OUT/vocab.safetensors reuses a learned vocabulary."""
    out = tmp_path / "out"
    first = fake_run(out, {"vocab.safetensors": b"words", "model.onnx": b"one", "demo-images/a.png": b"img"})
    fake_run(out, {"model.onnx": b"two"}, inputs=[out / "vocab.safetensors", out / "demo-images"])
    assert (out / "vocab.safetensors").read_bytes() == b"words" and (out / "demo-images" / "a.png").exists()
    m = manifest(out)
    assert m["inputs"] == ["demo-images", "vocab.safetensors"] and list(m["files"]) == ["model.onnx"]
    assert listing(out / PREVIOUS / first.run_id) == [MANIFEST, "model.onnx"]


def test_a_folder_of_files_vwt_export_does_not_write_is_refused_not_emptied(tmp_path):
    """--out ~ by mistake must not move a home folder away."""
    out = tmp_path / "home"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    (out / "model.onnx").write_bytes(b"?")
    with pytest.raises(VWTError, match=r"holds files vwt-export does not write \(thesis.tex\)"):
        fake_run(out, {"model.onnx": b"new"})
    assert listing(out) == sorted([LOCK, "model.onnx", "thesis.tex"])
    assert (out / "model.onnx").read_bytes() == b"?" and not (out / MANIFEST).exists()


def test_an_output_folder_of_an_older_version_is_moved_as_unrecorded(tmp_path):
    out = tmp_path / "out"
    for name in ("model.onnx", "report.json", "summary.json", "plots/tokens.png", "triton/README.md"):
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_bytes(b"old")
    fake_run(out, {"model.onnx": b"new"})
    (moved,) = os.listdir(out / PREVIOUS)
    assert moved.startswith("unrecorded-") and manifest(out)["previous"]["run_id"] == moved
    assert listing(out / PREVIOUS / moved) == ["model.onnx", "plots/tokens.png", "report.json", "summary.json",
                                               "triton/README.md"]


def test_out_equal_to_or_inside_an_input_folder_is_refused(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for out, where in ((images, "is the input folder"), (images / "out", "is inside the input folder"),
                       (images / "a" / ".." / "out", "is inside the input folder")):
        with pytest.raises(VWTError, match=f"--out {out} {where} {images}: the next run would read"):
            check_folder(out, [images])
    check_folder(tmp_path / "elsewhere", [images])  # a sibling is fine
    check_folder(tmp_path / "out", [images / "x.safetensors"])  # a file input is no folder to be inside


def test_out_that_is_a_file_or_under_a_file_is_refused(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(VWTError, match="exists and is not a folder"):
        check_folder(tmp_path / "f")
    with pytest.raises(VWTError, match=r"cannot be created \(.*f is a file\)"):
        check_folder(tmp_path / "f" / "out")


@pytest.fixture
def read_only_folder(tmp_path):
    """A folder nobody can write into: chmod, or for root (whom chmod does not stop) the immutable flag."""
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    flagged = False
    try:
        if os.access(folder, os.W_OK):  # root
            flagged = subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode == 0
            if not flagged:
                pytest.skip("running as root without chattr: no folder here is read-only")
        yield folder
    finally:
        if flagged:
            subprocess.run(["chattr", "-i", str(folder)], check=True)
        folder.chmod(0o755)


def test_a_read_only_out_is_refused_before_anything_else(read_only_folder):
    for out in (read_only_folder, read_only_folder / "new"):
        with pytest.raises(VWTError, match="cannot write .*; pass a writable --out"):
            check_folder(out)
    assert os.listdir(read_only_folder) == []


# -- runtime.load against the manifest -----------------------------------------------------------------------


def _identity_model() -> bytes:
    node = helper.make_node("Identity", ["pixels"], ["logits"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, [None, 3])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [None, 3])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10).SerializeToString()


def _warnings(caplog, load):
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="vwt_export"):
        f = load()
    assert np.array_equal(f(np.ones((1, 3), np.float32)), np.ones((1, 3), np.float32))  # it still loads and runs
    return [r.getMessage() for r in caplog.records]


def test_runtime_load_warns_where_a_file_differs_from_its_manifest(tmp_path, caplog):
    out = tmp_path / "out"
    run = fake_run(out, {"model.onnx": _identity_model(), "triton/m/1/model.onnx": _identity_model()})
    assert _warnings(caplog, lambda: runtime.load(out / "model.onnx")) == []
    assert _warnings(caplog, lambda: runtime.load(out / "triton" / "m" / "1" / "model.onnx")) == []  # 3 folders up

    onnx.save(onnx.load_from_string(_identity_model()), str(out / "model.int8.onnx"))  # put there afterwards
    (line,) = _warnings(caplog, lambda: runtime.load(out / "model.int8.onnx"))
    assert line == f"{out / 'model.int8.onnx'}: not written by run {run.run_id} (not in {out / MANIFEST}): it was put " \
                   "there afterwards"
    model = onnx.load(str(out / "model.onnx"))
    model.producer_name = "edited"
    onnx.save(model, str(out / "model.onnx"))
    (line,) = _warnings(caplog, lambda: runtime.load(out / "model.onnx"))
    assert f"model.onnx: changed since run {run.run_id} wrote it" in line


def test_runtime_load_warns_about_a_run_that_did_not_complete(tmp_path, caplog):
    out = tmp_path / "out"
    run = fake_run(out, {"model.onnx": _identity_model()}, error=KeyboardInterrupt("SIGINT"))
    (line,) = _warnings(caplog, lambda: runtime.load(out / "model.onnx"))
    assert line.startswith(f"{out / MANIFEST}: run {run.run_id} was interrupted (SIGINT)")
    m = manifest(out)
    m["status"] = "running"  # a run killed outright leaves "running", and no process holds the lock
    (out / MANIFEST).write_text(json.dumps(m))
    assert "stopped before it finished" in _warnings(caplog, lambda: runtime.load(out / "model.onnx"))[0]


def test_a_runs_own_loads_are_not_checked_and_foreign_manifests_are_ignored(tmp_path, caplog):
    out = tmp_path / "out"
    with OutputRun(out) as run:
        run.begin()
        (out / "model.onnx").write_bytes(_identity_model())
        assert _warnings(caplog, lambda: runtime.load(out / "model.onnx")) == []  # the pipeline's own checks
    other = tmp_path / "other"
    other.mkdir()
    (other / MANIFEST).write_text('{"name": "a web app manifest"}')
    (other / "model.onnx").write_bytes(_identity_model())
    assert _warnings(caplog, lambda: runtime.load(other / "model.onnx")) == []


def test_a_malformed_manifest_of_ours_is_one_line(tmp_path):
    out = tmp_path / "out"
    fake_run(out, {"model.onnx": b"x"})
    m = manifest(out)
    m["files"] = ["model.onnx"]
    (out / MANIFEST).write_text(json.dumps(m))
    (line,) = manifest_problems([out / "model.onnx"])
    assert line.startswith(f"{out / MANIFEST}: a malformed vwt-export manifest")
