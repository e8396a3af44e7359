"""The server never outlives its command: `serve` stops it on SIGHUP (a closed terminal or SSH session) and SIGQUIT
as on SIGINT/SIGTERM, and when the command is killed outright the server follows it (the kernel's parent-death
signal, and the watchdog). `serve` also warns about files that differ from the export folder's manifest."""

import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from vwt_export.outdir import OutputRun
from vwt_export.serving import ServingSettings, write_repository
from vwt_export.serving import server as srv
from vwt_export.serving.watchdog import alive, group_members, process_stat


WATCHDOG = Path(srv.__file__).with_name("watchdog.py")


@pytest.fixture(scope="module")
def repo(tritonserver, export_dir, tmp_path_factory):  # skipped, saying why, without the serving extra
    """OUT/triton inside an export folder whose manifest lists it (a run of OutputRun around write_repository)."""
    out = tmp_path_factory.mktemp("lifecycle") / "out"
    with OutputRun(out) as run:
        run.begin()
        write_repository(export_dir, settings=ServingSettings(), triton_dir=out / "triton")
    return out / "triton"


def _serve(repo, *args):
    proc = subprocess.Popen([sys.executable, "-m", "vwt_export.serving", str(repo), "--model", "baseline_python",
                             *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []
    threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True).start()
    deadline = time.monotonic() + 120
    while not any(line.startswith("  pid") for line in lines) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert any(line.startswith("  pid") for line in lines), (lines, proc.poll() is not None and proc.stderr.read())
    pgid = int(next(line for line in lines if line.startswith("  pid")).split()[1])
    assert len(group_members(pgid)) >= 2  # the server and the model's stub
    return proc, pgid


def _gone(pgid, within):
    deadline = time.monotonic() + within
    while group_members(pgid) and time.monotonic() < deadline:
        time.sleep(0.2)
    return group_members(pgid) == []


def test_the_repository_as_written_gives_no_warning(repo):
    assert srv.TritonServer(repo).warnings == []


@pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGQUIT])
def test_serve_stops_the_server_on_sighup_and_sigquit(repo, sig):
    """SIGHUP left tritonserver and its stubs running."""
    proc, pgid = _serve(repo)
    proc.send_signal(sig)
    rc = proc.wait(60)
    err = proc.stderr.read()
    assert rc == 0 and f"stopping ({sig.name})" in err and "stopped (tritonserver exit code 0)" in err, err
    assert _gone(pgid, 10)


def test_the_server_follows_a_command_killed_outright(repo):
    proc, pgid = _serve(repo)
    watchdogs = _children_named(proc.pid, "watchdog.py")
    os.kill(proc.pid, signal.SIGKILL)  # no handler runs: only the kernel's guard and the watchdog are left
    proc.wait(10)
    assert _gone(pgid, 30), f"left behind: {group_members(pgid)}"
    assert len(watchdogs) == 1 and _wait_gone(watchdogs[0], 20)  # its work done, the watchdog is gone too


def _children_named(pid, needle):
    found = []
    for proc in Path("/proc").iterdir():
        stat = process_stat(proc.name) if proc.name.isdigit() else None
        if stat is not None and stat[1] == pid:
            try:
                if needle in (proc / "cmdline").read_bytes().decode(errors="replace"):
                    found.append(int(proc.name))
            except OSError:
                continue
    return found


def _wait_gone(pid, within):
    deadline = time.monotonic() + within
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    return not alive(pid)


def test_the_watchdog_ends_a_group_that_ignores_sigterm_once_its_starter_goes(tmp_path):
    stubborn = subprocess.Popen(["sh", "-c", "trap '' TERM; sleep 300 & wait"], start_new_session=True)
    read_fd, write_fd = os.pipe()
    watchdog = subprocess.Popen([sys.executable, "-I", str(WATCHDOG), str(stubborn.pid), str(read_fd), "1"],
                                pass_fds=(read_fd,), start_new_session=True)
    os.close(read_fd)
    time.sleep(0.5)
    assert len(group_members(stubborn.pid)) == 2 and watchdog.poll() is None  # waits while the starter lives
    os.close(write_fd)  # what the kernel does when the starter dies
    assert watchdog.wait(20) == 0
    stubborn.wait(5)
    assert group_members(stubborn.pid) == []


def test_the_parent_death_guard_makes_no_library_lookup_in_the_forked_child(monkeypatch):
    """preexec_fn called ctypes.CDLL (a dlopen) after the fork, which can deadlock with the parent's threads."""
    guard = srv.parent_death_guard(os.getpid())  # prctl looked up here, in the parent

    def dlopen_in_the_child(*args, **kwargs):
        raise AssertionError("a library lookup after fork")

    monkeypatch.setattr(ctypes, "CDLL", dlopen_in_the_child)
    read_back = "import ctypes; v = ctypes.c_int(); ctypes.CDLL(None).prctl(2, ctypes.byref(v)); print(v.value)"
    r = subprocess.run([sys.executable, "-c", read_back], preexec_fn=guard, capture_output=True, text=True, timeout=60)
    assert r.stdout.strip() == str(int(signal.SIGTERM)), r.stderr  # PR_GET_PDEATHSIG in the child: SIGTERM


def test_serve_warns_about_a_file_that_differs_from_the_manifest(repo, tmp_path):
    config = repo / "baseline_python" / "config.pbtxt"
    original = config.read_text()
    try:
        config.write_text(original + "\n# edited by hand\n")
        warnings = srv.TritonServer(repo).warnings
    finally:
        config.write_text(original)
    assert len(warnings) == 1 and warnings[0].startswith(f"{config}: changed since run")
