"""Start and stop the tritonserver binary of the nvidia-pytriton wheel on a model repository, on 127.0.0.1 only.

    with TritonServer("OUT/triton") as server:        # free ports, waits until every loadable model is READY
        server.http_url, server.grpc_url, server.metrics_url

Why the binary and not PyTriton's Python layer: `Triton(...).bind` fails on Python 3.11.7 (its tensor store uses
an RLock attribute that release lacks); the server binary with a plain model repository works.

What the wheel needs to run (found by trying, not documented by the wheel):
  - its bundled libraries (nvidia_pytriton.libs/) on LD_LIBRARY_PATH, for the server and the Python backend stub;
  - a backend folder holding the Python backend plus the stub built for *this* Python (the wheel ships one stub per
    Python version; PyTriton copies the matching one the same way);
  - the stub embeds libpython3.X.so of the system and finds the environment's packages (vwt_export, onnxruntime)
    through the `python3` first on PATH (this interpreter's bin/ goes first) and PYTHONPATH (this vwt_export's
    folder goes first, so the server runs the same code as the caller).
The wheel's server ships the Python backend only: models of other backends (onnxruntime, tensorrt) are skipped,
with a message, by loading the others explicitly (--model-control-mode=explicit).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import VWTError
from . import pbtxt
from .watchdog import group_members

HOST = "127.0.0.1"  # never another address: the server is for this machine; put a proxy in front to expose it
EXTRA = "pip install 'vwt-export[serving]'"


@dataclass(frozen=True)
class TritonDist:
    binary: Path
    libs: Path
    backends: Path  # the wheel's backends/ (python/ inside)
    stubs: Path  # python_backend_stubs/<major.minor>/triton_python_backend_stub


def find_triton() -> TritonDist:
    """The tritonserver of the installed nvidia-pytriton wheel; a clear VWTError naming the extra if missing."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise VWTError(f"serving needs the tritonserver of the nvidia-pytriton wheel, which is not installed: {EXTRA}")
    pkg = Path(list(spec.submodule_search_locations)[0])
    dist = pkg / "tritonserver"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    found = TritonDist(dist / "bin" / "tritonserver", pkg.parent / "nvidia_pytriton.libs", dist / "backends",
                       dist / "python_backend_stubs" / version / "triton_python_backend_stub")
    for path, what in ((found.binary, "the tritonserver binary"), (found.libs, "its libraries"),
                       (found.backends / "python" / "libtriton_python.so", "its Python backend")):
        if not path.exists():
            raise VWTError(f"{path}: {what} is missing from the nvidia-pytriton install; reinstall: {EXTRA}")
    if not found.stubs.is_file():
        raise VWTError(f"the nvidia-pytriton wheel has no Python backend stub for Python {version} ({found.stubs})")
    return found


def available_backends(dist: TritonDist) -> set[str]:
    return {p.name for p in dist.backends.iterdir() if p.is_dir()}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _port_free(port: int) -> bool:
    """Nothing listens on it (SO_REUSEADDR: a closed connection's TIME_WAIT does not count, as for the server)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
            return True
        except OSError:
            return False


def repository_models(repository: Path) -> dict[str, dict]:
    """Every model folder's parsed and checked config.pbtxt, by model name."""
    if not repository.is_dir():
        raise VWTError(f"{repository}: not a folder; write a model repository with vwt-export --triton first")
    models = {}
    for config_file in sorted(repository.glob("*/config.pbtxt")):
        if not config_file.is_file():
            raise VWTError(f"{config_file}: not a file (a config.pbtxt is Triton's text model configuration); "
                           "write the repository again with vwt-export --triton")
        try:
            text = config_file.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise VWTError(f"{config_file}: not text (byte {e.start} is not UTF-8), so not a model configuration; "
                           "write the repository again with vwt-export --triton") from None
        except OSError as e:
            raise VWTError(f"{config_file}: cannot be read ({e.strerror or e})") from None
        if "\x00" in text:
            raise VWTError(f"{config_file}: holds NUL bytes, so it is not a text model configuration; write the "
                           "repository again with vwt-export --triton")
        config = pbtxt.loads(text, str(config_file))
        pbtxt.check_model_config(config, str(config_file), config_file.parent.name)
        models[config.get("name", config_file.parent.name)] = config
    if not models:
        raise VWTError(f"{repository}: no model folders with a config.pbtxt; is this a Triton model repository?")
    return models


def loadable(models: dict[str, dict], backends: set[str]) -> tuple[list[str], dict[str, str]]:
    """(models this server can load, {skipped model: why}). An ensemble loads when every step does."""
    ok, skipped = [], {}
    for name, config in models.items():
        backend = config.get("backend")
        if backend and backend not in backends:
            skipped[name] = f"backend '{backend}' is not in this tritonserver (it has: {', '.join(sorted(backends))})"
        elif not backend and config.get("platform") != "ensemble":
            skipped[name] = f"platform '{config.get('platform')}' needs a backend this tritonserver lacks"
        else:
            ok.append(name)
    for name in [n for n in ok if models[n].get("platform") == "ensemble"]:
        steps = [s["model_name"] for s in models[name]["ensemble_scheduling"]["step"]]
        if any(s not in ok for s in steps):
            ok.remove(name)
            skipped[name] = "an ensemble step's model is skipped"
    return ok, skipped


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def parent_death_guard(parent: int) -> Callable[[], None]:
    """A preexec_fn for the server: the kernel SIGTERMs it when the thread that started it ends (watchdog.py is the
    second guard), and it ends at once if `parent` is already gone.

    PR_SET_PDEATHSIG follows the starting *thread*, not its process: start the server from a thread that lives as
    long as the server should (`serve` starts it from the main thread). prctl is looked up here, in the parent:
    the forked child only calls that pointer, because a dlopen or dlsym there (ctypes.CDLL) could deadlock on a
    loader lock that another thread of the parent (torch's) held at the fork."""
    import ctypes

    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
        prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
        prctl.restype = ctypes.c_int
    except (OSError, AttributeError):  # no prctl (not Linux): the watchdog alone
        prctl = None
    sigterm = int(signal.SIGTERM)

    def guard() -> None:
        if prctl is not None:
            prctl(PR_SET_PDEATHSIG, sigterm, 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)

    return guard


class TritonServer:
    """A tritonserver process on 127.0.0.1 serving the loadable models of `repository`."""

    def __init__(self, repository: str | os.PathLike, http_port: int | None = None, grpc_port: int | None = None,
                 metrics_port: int | None = None, models: list[str] | None = None, log_verbose: int = 0):
        self.repository = Path(repository).resolve()
        self.dist = find_triton()
        all_models = repository_models(self.repository)
        ok, self.skipped = loadable(all_models, available_backends(self.dist))
        if models:
            unknown = [m for m in models if m not in all_models]
            if unknown:
                raise VWTError(f"{self.repository}: no model {unknown} (it has {', '.join(all_models)})")
            bad = [m for m in models if m not in ok]
            if bad:
                raise VWTError(f"cannot serve {bad} here: {self.skipped[bad[0]]}")
            self.skipped.update({m: "not asked for" for m in ok if m not in models})
            ok = list(models)
        if not ok:
            raise VWTError(f"{self.repository}: no model this tritonserver can load ({self.skipped})")
        self.models = ok
        ports = [p for p in (http_port, grpc_port, metrics_port) if p]
        if len(set(ports)) != len(ports):
            raise VWTError(f"the HTTP, gRPC and metrics ports must differ, got {ports}")
        for p in ports:
            if not _port_free(p):
                raise VWTError(f"port {p} on {HOST} is in use; choose another or leave it out for a free one")
        chosen = []
        for p in (http_port, grpc_port, metrics_port):
            while not p or p in chosen:  # free ports, distinct from the given ones and from each other
                p = free_port()
            chosen.append(p)
        self.http_port, self.grpc_port, self.metrics_port = chosen
        self.log_verbose = log_verbose
        self.process: subprocess.Popen | None = None
        self.watchdog: subprocess.Popen | None = None
        self._watch_fd: int | None = None  # the pipe whose closing (a stop, or this process's death) wakes it
        self.workdir: Path | None = None
        self.log_path: Path | None = None
        self.final_log = ""  # the log's end, kept when stop() removes the work folder
        # files that differ from the manifest of the export folder holding the repository (vwt_export.outdir)
        from ..outdir import manifest_problems

        self.warnings = manifest_problems(sorted(p for p in self.repository.rglob("*") if p.is_file()))

    http_url = property(lambda self: f"http://{HOST}:{self.http_port}")
    grpc_url = property(lambda self: f"{HOST}:{self.grpc_port}")
    metrics_url = property(lambda self: f"http://{HOST}:{self.metrics_port}/metrics")

    def _backend_dir(self) -> Path:
        """A private backends/python/ with the stub of this Python beside the backend library (where it looks)."""
        python = self.workdir / "backends" / "python"
        python.mkdir(parents=True)
        for f in (self.dist.backends / "python").iterdir():
            if f.is_file():
                shutil.copy2(f, python / f.name)
        shutil.copy2(self.dist.stubs, python / "triton_python_backend_stub")
        return python.parent

    def _env(self) -> dict[str, str]:
        env = os.environ.copy()
        env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [str(self.dist.libs), env.get("LD_LIBRARY_PATH")]))
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        here = str(Path(__file__).resolve().parents[2])  # the folder holding this vwt_export
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [here, env.get("PYTHONPATH")]))
        return env

    def command(self, backend_dir: Path) -> list[str]:
        cmd = [str(self.dist.binary), f"--model-repository={self.repository}", f"--backend-directory={backend_dir}",
               f"--http-address={HOST}", f"--grpc-address={HOST}", f"--metrics-address={HOST}",
               f"--http-port={self.http_port}", f"--grpc-port={self.grpc_port}", f"--metrics-port={self.metrics_port}",
               "--allow-metrics=true", "--allow-gpu-metrics=false", "--model-control-mode=explicit",
               "--exit-timeout-secs=10", f"--log-verbose={self.log_verbose}"]
        return cmd + [f"--load-model={m}" for m in self.models]

    def start(self, timeout: float = 120.0) -> "TritonServer":
        self.workdir = Path(tempfile.mkdtemp(prefix="vwt-triton-"))
        self.log_path = self.workdir / "tritonserver.log"
        cmd = self.command(self._backend_dir())
        guard = parent_death_guard(os.getpid())
        with open(self.log_path, "wb") as log:
            # a session of its own: stop() can end the server and its Python backend stubs as one group; and it
            # ends when this process does, by the kernel's parent-death signal and by the watchdog
            self.process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            env=self._env(), start_new_session=True,
                                            preexec_fn=guard)
        self._start_watchdog()
        try:
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _start_watchdog(self) -> None:
        """watchdog.py, in a session of its own, holding the read end of a pipe only this process writes to."""
        read_fd, self._watch_fd = os.pipe()
        try:
            self.watchdog = subprocess.Popen(
                [sys.executable, "-I", str(Path(__file__).with_name("watchdog.py")), str(self.process.pid),
                 str(read_fd)], pass_fds=(read_fd,), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                start_new_session=True)
        finally:
            os.close(read_fd)

    def _release_watchdog(self) -> None:
        if self._watch_fd is not None:
            os.close(self._watch_fd)  # EOF: it finds the group empty and exits
            self._watch_fd = None
        if self.watchdog is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.watchdog.wait(10)

    def log_tail(self, lines: int = 25) -> str:
        if self.log_path is None or not self.log_path.is_file():
            return "\n".join(self.final_log.splitlines()[-lines:]) or "(no server log)"
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def _get(self, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(f"{self.http_url}{path}", timeout=timeout) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def wait_ready(self, timeout: float) -> None:
        """Poll the health endpoints until the server and every model it loads are READY."""
        deadline = time.monotonic() + timeout
        pending = list(self.models)
        while True:
            if self.process.poll() is not None:
                raise VWTError(f"tritonserver exited with code {self.process.returncode} before it was ready"
                               f"{self._hint()}; its log ends:\n{self.log_tail()}")
            with contextlib.suppress(OSError):
                if self._get("/v2/health/live")[0] == 200:
                    pending = [m for m in pending if self._get(f"/v2/models/{m}/ready")[0] != 200]
                    if not pending and self._get("/v2/health/ready")[0] == 200:
                        return
            if time.monotonic() > deadline:
                raise VWTError(f"tritonserver was not ready after {timeout:.0f} s (models not ready: "
                               f"{', '.join(pending) or 'none'}); its log ends:\n{self.log_tail()}")
            time.sleep(0.25)

    def _hint(self) -> str:
        """The one failure of this wheel we know a fix for: the stub links the system's libpython3.X.so."""
        if "libpython" in self.log_tail(200):
            v = f"{sys.version_info.major}.{sys.version_info.minor}"
            return f" (the Python backend stub needs libpython{v}.so.1.0, e.g. apt-get install libpython{v})"
        return ""

    def statistics(self, model: str) -> dict:
        status, body = self._get(f"/v2/models/{model}/stats")
        if status != 200:
            raise VWTError(f"statistics of '{model}': HTTP {status} {body[:200]!r}")
        return json.loads(body)["model_stats"][0]

    def metrics(self) -> str:
        with urllib.request.urlopen(self.metrics_url, timeout=5) as r:
            return r.read().decode()

    def pids(self) -> list[int]:
        """Processes still in the server's process group (the server, its stubs); empty once it has stopped."""
        return group_members(self.process.pid) if self.process is not None else []

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM the server (it unloads the models and ends its stubs), wait, then SIGKILL what is left of its
        process group. Returns the server's exit code."""
        if self.process is None:
            return None
        pgid = self.process.pid  # start_new_session: the group id is the server's pid
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pgid, signal.SIGKILL)
                self.process.wait(5)
        deadline = time.monotonic() + 5
        while self.pids() and time.monotonic() < deadline:  # stubs exit a moment after the server
            time.sleep(0.1)
        if self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
        self._release_watchdog()
        code = self.process.returncode
        if self.workdir is not None:
            self.final_log = self.log_tail(200)
            shutil.rmtree(self.workdir, ignore_errors=True)
        return code

    def __enter__(self) -> "TritonServer":
        return self.start() if self.process is None else self

    def __exit__(self, *exc) -> None:
        self.stop()
