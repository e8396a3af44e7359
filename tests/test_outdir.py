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
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from vwt_export import outdir, runtime
from vwt_export.config import ExportConfig
from vwt_export.errors import VWTError
from vwt_export.outdir import (LOCK, MANIFEST, PREVIOUS, OutputRun, check_folder, config_paths, manifest_problems,
                               read_manifest)


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
    assert m["files"] == {
        "model.onnx": {"bytes": 5, "mtime_ns": os.stat(out / "model.onnx").st_mtime_ns,
                       "sha256": hashlib.sha256(b"graph").hexdigest()},
        "polygraphy/inputs.json": {"bytes": 2, "mtime_ns": os.stat(out / "polygraphy/inputs.json").st_mtime_ns,
                                   "sha256": hashlib.sha256(b"[]").hexdigest()}}
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


def test_a_ctrl_c_while_the_earlier_run_moves_puts_back_what_had_moved(tmp_path, monkeypatch):
    out = tmp_path / "out"
    fake_run(out, {"model.onnx": b"one", "report.json": b"{}", "summary.json": b"{}"})
    before = {f: (out / f).read_bytes() for f in listing(out) if f != LOCK}
    calls = []
    real = outdir._replace

    def interrupted_on_the_second_move(source, target):
        calls.append(source)
        if len(calls) == 2:
            raise KeyboardInterrupt
        real(source, target)

    monkeypatch.setattr(outdir, "_replace", interrupted_on_the_second_move)
    with pytest.raises(KeyboardInterrupt):
        fake_run(out, {"model.onnx": b"two"})
    assert {f: (out / f).read_bytes() for f in listing(out) if f != LOCK} == before and not (out / PREVIOUS).exists()


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
    """--out ~ by mistake must not move a home folder away (nor leave a lock file in it)."""
    out = tmp_path / "home"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    (out / "model.onnx").write_bytes(b"?")
    with pytest.raises(VWTError, match=r"holds files that are not an earlier run's \(thesis.tex\)"):
        fake_run(out, {"model.onnx": b"new"})
    assert listing(out) == ["model.onnx", "thesis.tex"] and (out / "model.onnx").read_bytes() == b"?"


def test_files_beside_a_manifest_that_it_does_not_list_are_refused_by_name(tmp_path):
    """They were moved to .previous/ with the earlier run's files, and deleted by the run after that."""
    out = tmp_path / "out"
    fake_run(out, {"model.onnx": b"one", "plots/a.png": b"png"})
    (out / "notes.txt").write_text("mine")
    (out / "mine").mkdir()
    (out / "mine" / "data.csv").write_text("1,2")
    (out / "plots" / "mine.png").write_bytes(b"my plot")
    before = {f: (out / f).read_bytes() for f in listing(out)}
    with pytest.raises(VWTError, match=r"holds files that are not an earlier run's \(mine/, notes.txt, "
                                       r"plots/mine.png\); move them out of the folder or pass another --out"):
        fake_run(out, {"model.onnx": b"two"})
    assert {f: (out / f).read_bytes() for f in listing(out)} == before and not (out / PREVIOUS).exists()


def test_a_nested_output_folder_is_refused_both_ways(tmp_path):
    """A run into OUT/sub, then a run into OUT: OUT/sub went to .previous/ and was deleted by the next run."""
    out = tmp_path / "out"
    fake_run(out, {"model.onnx": b"outer"})
    with pytest.raises(VWTError, match=f"--out {out / 'sub'} is inside {out}, the output folder of another run; "
                                       "pass an --out outside it"):
        fake_run(out / "sub", {"model.onnx": b"inner"})
    assert not (out / "sub").exists()
    lone = tmp_path / "lone"  # made before OUT held a run (a name vwt-export writes, too): refused by OUT's run
    fake_run(lone / "plots", {"model.onnx": b"inner"})
    with pytest.raises(VWTError, match=r"holds plots, the output folder of another run \(its manifest\.json\); "
                                       "move it out of the folder or pass another --out"):
        fake_run(lone, {"model.onnx": b"outer"})
    assert (lone / "plots" / "model.onnx").read_bytes() == b"inner" and not (lone / MANIFEST).exists()


def test_a_folder_another_run_is_writing_is_never_moved(tmp_path):
    """A run into OUT moved OUT/plots while another run held it; that run then ended with a traceback."""
    out = tmp_path / "out"
    out.mkdir()
    with OutputRun(out / "plots") as inner:  # locked, not begun yet: no manifest in it
        with pytest.raises(VWTError, match=f"holds plots, the output folder of another run \\(pid {os.getpid()}, "
                                           f"run {inner.run_id}"):
            fake_run(out, {"model.onnx": b"outer"})
        inner.begin()
        (out / "plots" / "a.png").write_bytes(b"inner's")
    assert manifest(out / "plots")["status"] == "complete" and not (out / MANIFEST).exists()


def test_after_a_failed_run_the_last_complete_run_is_kept(tmp_path):
    """Run A completed, run B failed after writing a file, run C deleted A and kept only the failed B."""
    out = tmp_path / "out"
    a = fake_run(out, {"model.onnx": b"a", "report.json": b"a's report"})
    b = fake_run(out, {"vocab.safetensors": b"b"}, error=VWTError("model.vwt.onnx differs from torch"))
    c = fake_run(out, {"model.onnx": b"c"})
    assert sorted(os.listdir(out / PREVIOUS)) == sorted([a.run_id, b.run_id])
    assert (out / PREVIOUS / a.run_id / "report.json").read_bytes() == b"a's report"
    fake_run(out, {"model.onnx": b"d"}, error=KeyboardInterrupt())  # moves C (complete): A and B go
    assert os.listdir(out / PREVIOUS) == [c.run_id]


def test_pruning_deletes_only_the_files_a_manifest_lists(tmp_path):
    out = tmp_path / "out"
    first = fake_run(out, {"model.onnx": b"1", "plots/a.png": b"a"})
    fake_run(out, {"model.onnx": b"2"})
    (out / PREVIOUS / first.run_id / "plots" / "kept.txt").write_text("put here by hand")
    (out / PREVIOUS / "mine").mkdir()
    (out / PREVIOUS / "mine" / "x.txt").write_text("no manifest: not a run")
    fake_run(out, {"model.onnx": b"3"})
    assert listing(out / PREVIOUS / first.run_id) == ["plots/kept.txt"]
    assert (out / PREVIOUS / "mine" / "x.txt").read_text() == "no manifest: not a run"


@pytest.mark.parametrize("field,value,why", [
    ("run_id", "", "run_id '' is not a run id"),
    ("run_id", "/abs", "run_id '/abs' is not a run id"),
    ("run_id", "../x", "run_id '../x' is not a run id"),
    ("files", {"../escape": {"bytes": 1, "sha256": "0" * 64}}, "file '../escape' is not a path inside the folder"),
    ("files", {"/etc/hosts": {"bytes": 1, "sha256": "0" * 64}}, "file '/etc/hosts' is not a path inside the folder"),
    ("status", "done", "status 'done' is not one of running, complete, interrupted, failed, unrecorded"),
    ("files", ["model.onnx"], "files is not an object"),
])
def test_a_manifest_with_an_unsafe_or_malformed_field_is_one_line_with_a_way_out(tmp_path, field, value, why):
    """run_id "" moved the earlier files straight into .previous/ (and the next run deleted them); "/abs" or
    "../x" moved them out of OUT. The error said "rerun the export", which failed the same way."""
    out = tmp_path / "out"
    fake_run(out, {"model.onnx": b"x"})
    m = manifest(out)
    m[field] = value
    (out / MANIFEST).write_text(json.dumps(m))
    before = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*"))
    with pytest.raises(VWTError) as e:
        fake_run(out, {"model.onnx": b"y"})
    assert str(e.value) == (f"{out / MANIFEST}: a malformed vwt-export manifest ({why}); delete it (the files "
                            "beside it then count as an earlier run's by their names) or pass another --out")
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == before
    (out / MANIFEST).unlink()  # the way out the line gives
    fake_run(out, {"model.onnx": b"y"})
    (moved,) = os.listdir(out / PREVIOUS)
    assert moved.startswith("unrecorded-") and (out / PREVIOUS / moved / "model.onnx").read_bytes() == b"x"


def test_the_files_of_a_run_killed_outright_are_moved_by_their_names(tmp_path):
    """A killed run's manifest says "running" and lists nothing; its files (an atomic write's temporary file too)
    are known by their names, and the manifest moved with them lists them, so a later run can prune them."""
    out = tmp_path / "out"
    out.mkdir()
    killed = OutputRun(out)
    killed.write_manifest("running")
    (out / "model.onnx").write_bytes(b"killed")
    (out / ".vocab.safetensors.k2j3h4.tmp").write_bytes(b"half")
    fake_run(out, {"model.onnx": b"next"})
    moved = read_manifest(out / PREVIOUS / killed.run_id)
    assert moved["status"] == "running" and sorted(moved["files"]) == [".vocab.safetensors.k2j3h4.tmp", "model.onnx"]
    fake_run(out, {"model.onnx": b"after"})
    fake_run(out, {"model.onnx": b"and after"})
    assert killed.run_id not in os.listdir(out / PREVIOUS)


def test_python_caches_in_a_served_repository_move_and_go_with_it(tmp_path):
    """Triton's Python backend writes __pycache__/ into OUT/triton when it serves: no manifest lists it."""
    out = tmp_path / "out"
    first = fake_run(out, {"triton/m/1/model.py": b"code"})
    (out / "triton/m/1/__pycache__").mkdir()
    (out / "triton/m/1/__pycache__/model.cpython-311.pyc").write_bytes(b"cache")
    fake_run(out, {"model.onnx": b"2"})
    assert (out / PREVIOUS / first.run_id / "triton/m/1/__pycache__/model.cpython-311.pyc").is_file()
    fake_run(out, {"model.onnx": b"3"})
    assert not (out / PREVIOUS / first.run_id).exists()


def test_a_relative_checkpoint_path_is_an_input(tmp_path, monkeypatch):
    """--weights my.pth (no folder in the name) was not seen as a file the run reads."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "my.pth").write_bytes(b"weights")
    cfg = ExportConfig.from_options("deit_s", mode="tome", weights="my.pth", skip_checks=True,
                                     out=tmp_path / "out")
    assert Path("my.pth") in config_paths(cfg)
    assert config_paths(ExportConfig.from_options("deit_s", mode="tome", weights="random", skip_checks=True,
                                                         out=tmp_path / "out")) == []


def test_an_output_folder_of_an_older_version_is_moved_as_unrecorded(tmp_path):
    out = tmp_path / "out"
    for name in ("model.onnx", "report.json", "summary.json", "plots/tokens.png", "triton/README.md"):
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_bytes(b"old")
    fake_run(out, {"model.onnx": b"new"})
    (moved,) = os.listdir(out / PREVIOUS)
    assert moved.startswith("unrecorded-") and manifest(out)["previous"]["run_id"] == moved
    files = ["model.onnx", "plots/tokens.png", "report.json", "summary.json", "triton/README.md"]
    assert listing(out / PREVIOUS / moved) == sorted([MANIFEST, *files])
    recorded = read_manifest(out / PREVIOUS / moved)  # what was moved, so that a later run deletes only that
    assert recorded["status"] == "unrecorded" and sorted(recorded["files"]) == files
    fake_run(out, {"model.onnx": b"newer"})
    fake_run(out, {"model.onnx": b"newest"})
    assert moved not in os.listdir(out / PREVIOUS)


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


def test_a_stage_pair_not_written_with_the_graph_is_not_used_for_it(tmp_path, caplog):
    out = tmp_path / "out"
    fake_run(out, {"model.vwt.onnx": _identity_model()})
    for stage in ("model.vwt.tokenize.onnx", "model.vwt.trunk.onnx"):  # put there afterwards (and not stages at all)
        (out / stage).write_bytes(_identity_model())
    lines = _warnings(caplog, lambda: runtime.load(out / "model.vwt.onnx"))  # runs the one graph (identity)
    assert len(lines) == 1 and "running the one graph, not the stage pair beside it" in lines[0]
    with pytest.raises(VWTError, match="may not belong to it"):
        runtime.load(out / "model.vwt.onnx", stages=True)


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


def test_an_unchanged_file_is_not_hashed_again(tmp_path, monkeypatch):
    """runtime.load and serve hashed every file on each start: seconds for engines of gigabytes."""
    out = tmp_path / "out"
    fake_run(out, {"model.onnx": b"x" * 1000})
    hashed = []
    real = outdir.sha256
    monkeypatch.setattr(outdir, "sha256", lambda path: hashed.append(path) or real(path))
    assert manifest_problems([out / "model.onnx"]) == [] and hashed == []  # same size and time: not read
    os.utime(out / "model.onnx", ns=(10**18, 10**18))  # touched, the same bytes: read once, no warning
    assert manifest_problems([out / "model.onnx"]) == [] and len(hashed) == 1
    (out / "model.onnx").write_bytes(b"y" * 1000)
    (line,) = manifest_problems([out / "model.onnx"])
    assert "changed since run" in line


def test_a_file_at_any_depth_is_checked_and_python_caches_are_not(tmp_path):
    """Only files up to 4 folders below the manifest were checked (a magic number that left __pycache__ out)."""
    out = tmp_path / "out"
    fake_run(out, {"triton/m/1/assets/deeper/x.bin": b"x"})
    (out / "triton/m/1/assets/deeper/x.bin").write_bytes(b"y")
    (line,) = manifest_problems([out / "triton/m/1/assets/deeper/x.bin"])
    assert "changed since run" in line
    (out / "triton/m/1/__pycache__").mkdir()
    (out / "triton/m/1/__pycache__/model.cpython-311.pyc").write_bytes(b"written by Python when served")
    assert manifest_problems([out / "triton/m/1/__pycache__/model.cpython-311.pyc"]) == []
