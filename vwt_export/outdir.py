"""One output folder, one run: a run locks `--out`, moves an earlier run's files away before it writes, and ends
with OUT/manifest.json, written last, listing every file it wrote with its checksum.

    with OutputRun.for_config(cfg) as run:     # --out checked (a folder, writable, outside the input folders), locked
        inputs = check_inputs(cfg)             # bad input fails here: nothing moved, nothing written
        run.begin()                            # an earlier run's files -> OUT/.previous/<its run id>/
        ...                                    # the stages write their files
                                               # on leaving: manifest.json (complete / interrupted / failed)

The rules (the README's "Output folder" section says the same for users):
- Lock. OUT/.vwt-export.lock is held (flock) for the whole run; a second run into the same folder stops at once
  with one line naming the holder. The lock file stays (deleting it would let two runs lock two different files).
- Earlier files. What an earlier run left in OUT is moved, before this run writes anything, into
  OUT/.previous/<that run's id>/ (its manifest goes along), so OUT never mixes two runs' files and the last results
  stay at hand. Moved, not deleted: a rerun with other settings must not destroy results nobody copied yet, and a
  rename costs nothing however large the engines. Only that run is kept: once this run has written a file, an
  older one in .previous/ is deleted, so the folder holds at most two runs. A run that stops before writing
  anything (a bad --weights, say) puts the earlier files back. Files the run reads (an image folder or a
  vocabulary inside OUT, as --demo makes) stay where they are, listed under "inputs". A folder without a manifest
  whose files do not all have the names vwt-export writes is refused, not emptied: it is probably not an output
  folder (--out ~ by mistake).
- Manifest. Written at the start with status "running", rewritten last with "complete", or "interrupted"
  (Ctrl-C, SIGTERM, SIGHUP) or "failed" (an error, with its line), each time listing the files then in OUT with
  their sizes and sha256. `manifest_problems` (used by runtime.load and serve) reports files that differ from the
  manifest beside them, or that come from a run that did not complete.
- Inputs. --out equal to or inside an input folder is refused (the next run would read its own outputs).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import errno
import fnmatch
import hashlib
import json
import logging
import os
import secrets
import shutil
import signal
import tempfile
import threading
from pathlib import Path
from typing import Any, Iterable, Mapping

from .atomic import write_text
from .errors import VWTError

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
LOCK = ".vwt-export.lock"
PREVIOUS = ".previous"
FORMAT, VERSION = "vwt-export/manifest", 1
STATUSES = ("running", "complete", "interrupted", "failed")
MANIFEST_SEARCH_DEPTH = 4  # a served file sits at OUT/triton/<model>/1/<file>: its manifest is 3 folders up
# The names a run writes at the top of OUT: a folder without a manifest holding only these is an earlier run's
WRITTEN_NAMES = ("model*.onnx", "model*.engine", "model*.engine.json", "*.onnx.data", "vocab.safetensors",
                 "report.json", "report.md", "summary.json", "timing.cache", MANIFEST, "polygraphy", "plots", "sweep",
                 "triton", "demo-images")

_active: set[Path] = set()  # output folders this process is writing now (their own loads are not checked)


def new_run_id() -> str:
    """Sortable and unique: UTC time and 6 random hex digits."""
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def plain(value: Any) -> Any:
    """A configuration as JSON: dataclasses and mappings as objects, paths as strings."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [plain(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)


def config_paths(value: Any, skip: tuple[str, ...] = ("out",)) -> list[Path]:
    """Every path in a configuration (any dataclass tree): the files and folders a run reads. A string field
    that names an existing file (a checkpoint given as --weights PATH) counts too."""
    found: list[Path] = []
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            if f.name not in skip:
                found += config_paths(getattr(value, f.name), ())
    elif isinstance(value, Mapping):
        for v in value.values():
            found += config_paths(v, ())
    elif isinstance(value, os.PathLike):
        found.append(Path(value))
    elif isinstance(value, str) and os.sep in value and Path(value).is_file():
        found.append(Path(value))
    return found


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_folder(out: str | os.PathLike, inputs: Iterable[str | os.PathLike] = ()) -> None:
    """--out can hold this run: a folder (or nothing yet), outside every input folder, writable. One line each."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise VWTError(f"{out}: exists and is not a folder; pass another --out")
    real = out.resolve()
    for given in inputs:
        folder = Path(given)
        if folder.is_dir() and _inside(real, folder.resolve()):
            where = "is" if real == folder.resolve() else "is inside"
            raise VWTError(f"--out {out} {where} the input folder {folder}: the next run would read this run's "
                           "files as its input; pass an --out outside it")
    probe = real
    while not probe.exists():  # the folder that will hold the new one
        probe = probe.parent
    if not probe.is_dir():
        raise VWTError(f"{out}: cannot be created ({probe} is a file); pass another --out")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".vwt-export-probe-", dir=probe)
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise VWTError(f"{out}: cannot write {'in it' if probe == real else f'in {probe}'} "
                       f"({e.strerror or e}); pass a writable --out") from None


# -- the manifest ---------------------------------------------------------------------------------------------


def read_manifest(folder: str | os.PathLike) -> dict | None:
    """The manifest in `folder`, or None where there is none or it is not vwt-export's (another tool's
    manifest.json); VWTError for one of ours that is malformed."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        return None
    files = data.get("files")
    if (not isinstance(data.get("run_id"), str) or data.get("status") not in STATUSES or not isinstance(files, dict)
            or not all(isinstance(v, dict) and isinstance(v.get("sha256"), str) and isinstance(v.get("bytes"), int)
                       for v in files.values())):
        raise VWTError(f"{path}: a malformed vwt-export manifest (run_id, status and files with sha256 and bytes "
                       "are required); rerun the export that wrote the folder")
    return data


def _lock_holder(folder: Path) -> str | None:
    """Who holds the folder's lock now ('pid N, run ID'), or None when nobody does."""
    import fcntl

    path = folder / LOCK
    if not path.is_file():
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            with contextlib.suppress(OSError):
                return os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            return "another process"
        return None
    finally:
        os.close(fd)


def _find_manifest(path: Path) -> Path | None:
    for folder in list(path.parents)[:MANIFEST_SEARCH_DEPTH]:
        if (folder / MANIFEST).is_file():
            return folder
    return None


def manifest_problems(paths: Iterable[str | os.PathLike]) -> list[str]:
    """One line for each file among `paths` that differs from the vwt-export manifest beside it (in its folder or
    up to MANIFEST_SEARCH_DEPTH folders up), and for a manifest whose run did not complete. Files with no manifest
    around them, and folders this process is writing, are not checked."""
    problems: list[str] = []
    seen: dict[Path, dict | None] = {}
    for given in paths:
        path = Path(given).absolute()
        folder = _find_manifest(path)
        if folder is None or folder.resolve() in _active or not path.is_file():
            continue
        if folder not in seen:
            try:
                seen[folder] = manifest = read_manifest(folder)
            except VWTError as e:
                seen[folder] = None
                problems.append(str(e))
                continue
            if manifest is not None and manifest["status"] != "complete":
                problems.append(f"{folder / MANIFEST}: run {manifest['run_id']} {_why_incomplete(folder, manifest)}; "
                                "its files may not belong together (rerun the export)")
        manifest = seen[folder]
        if manifest is None:
            continue
        rel = path.relative_to(folder).as_posix()
        entry = manifest["files"].get(rel)
        if entry is None:
            problems.append(f"{path}: not written by run {manifest['run_id']} (not in {folder / MANIFEST}): it was "
                            "put there afterwards")
        elif path.stat().st_size != entry["bytes"] or sha256(path) != entry["sha256"]:
            problems.append(f"{path}: changed since run {manifest['run_id']} wrote it (its checksum differs from "
                            f"{folder / MANIFEST})")
    return problems


def _why_incomplete(folder: Path, manifest: dict) -> str:
    if manifest["status"] == "running":
        holder = _lock_holder(folder)
        return f"is still writing this folder ({holder})" if holder else "stopped before it finished (killed?)"
    if manifest["status"] == "failed":
        return f"failed ({manifest.get('error') or 'no reason recorded'})"
    return f"was interrupted ({manifest.get('error') or 'no reason recorded'})"


# -- the run ------------------------------------------------------------------------------------------------


class RunInterrupted(KeyboardInterrupt):
    """SIGTERM or SIGHUP during a run: unwinds like Ctrl-C, so the manifest says the run was interrupted."""


def _looks_written(name: str) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in WRITTEN_NAMES)


class OutputRun:
    """The output folder of one run (see the module docstring)."""

    def __init__(self, out: str | os.PathLike, inputs: Iterable[str | os.PathLike] = (),
                 settings: Any = None, command: str | None = None):
        self.out = Path(out)
        self.inputs = [Path(p) for p in inputs]
        self.settings = plain(settings)
        self.command = command
        self.run_id = new_run_id()
        self.started = _now()
        self.previous: dict | None = None
        self._lock_fd: int | None = None
        self._created = False  # the run made OUT: if it ends with nothing in it, OUT goes too
        self._begun = False
        self._signals: dict[int, Any] = {}

    @classmethod
    def for_config(cls, cfg: Any) -> "OutputRun":
        """For an ExportConfig: its `out`, the paths it reads, its settings and command."""
        return cls(cfg.out, config_paths(cfg), cfg, getattr(cfg, "command", None))

    # -- lock --------------------------------------------------------------------------------------------

    def __enter__(self) -> "OutputRun":
        import fcntl

        check_folder(self.out, self.inputs)
        self._created = not self.out.exists()
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.out / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise VWTError(f"{self.out}: cannot write there ({e.strerror or e}); pass a writable --out") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise VWTError(f"{self.out / LOCK}: cannot be locked ({e.strerror}); pass another --out") from None
            raise VWTError(f"{self.out}: another vwt-export run is writing this folder ({holder}); wait for it to "
                           "finish or pass another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}, run {self.run_id}, started {self.started}\n".encode(), 0)
        self._lock_fd = fd
        _active.add(self.out.resolve())
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if self._begun:
                self._restore_signals()
                if exc_type is not None and not self.written_paths():
                    self._put_back()  # failed before writing anything: the folder is left as it was found
                else:
                    if exc_type is None:
                        self.write_manifest("complete")
                    elif issubclass(exc_type, Exception):
                        self.write_manifest("failed", str(exc) if isinstance(exc, VWTError)
                                            else f"{exc_type.__name__}: {exc}")
                    else:
                        self.write_manifest("interrupted", str(exc) or exc_type.__name__)
                    self._prune_previous()
        finally:
            _active.discard(self.out.resolve())
            if self._lock_fd is not None:
                if self._created and [e.name for e in self.out.iterdir()] == [LOCK]:  # bad input: no empty OUT left
                    with contextlib.suppress(OSError):
                        (self.out / LOCK).unlink()
                        self.out.rmdir()
                os.close(self._lock_fd)  # releases the flock
                self._lock_fd = None

    # -- start -------------------------------------------------------------------------------------------

    def _holds_input(self, entry: Path) -> bool:
        entry = entry.resolve()
        return any(_inside(p.resolve(), entry) for p in self.inputs)

    def begin(self) -> None:
        """Move an earlier run's files away, write the "running" manifest, and turn SIGTERM/SIGHUP into an
        interruption that the manifest records."""
        if self._lock_fd is None:
            raise RuntimeError("OutputRun.begin() outside its with-block")
        self.previous = self._move_earlier_files()
        self.write_manifest("running")
        self._begun = True
        self._catch_signals()

    def _move_earlier_files(self) -> dict | None:
        entries = sorted(e for e in self.out.iterdir()
                         if e.name not in (LOCK, PREVIOUS) and not self._holds_input(e))
        if not entries:
            return None
        old = read_manifest(self.out)
        if old is not None:
            old_id = old["run_id"]
        else:
            foreign = [e.name for e in entries if not _looks_written(e.name)]
            if foreign:
                raise VWTError(f"{self.out}: holds files vwt-export does not write ({', '.join(foreign[:3])}"
                               f"{', ...' if len(foreign) > 3 else ''}); pass an empty or new --out (or the folder "
                               "of an earlier run)")
            newest = max(e.lstat().st_mtime for e in entries)
            old_id = "unrecorded-" + datetime.datetime.fromtimestamp(newest, datetime.timezone.utc).strftime(
                "%Y%m%dT%H%M%SZ")
        dest = self.out / PREVIOUS / old_id
        dest.mkdir(parents=True, exist_ok=True)
        entries.sort(key=lambda e: e.name == MANIFEST)  # the manifest last: a broken-off move resumes from it
        for entry in entries:
            _replace(entry, dest / entry.name)
        log.info("moved the %d files and folders of the earlier run %s to %s", len(entries), old_id, dest)
        return {"run_id": old_id, "moved_to": f"{PREVIOUS}/{old_id}", "entries": sorted(e.name for e in entries)}

    def _put_back(self) -> None:
        """Undo begin(): the run's "running" manifest goes, the earlier run's files come back."""
        (self.out / MANIFEST).unlink(missing_ok=True)
        if self.previous is None:
            return
        dest = self.out / self.previous["moved_to"]
        for name in sorted(self.previous["entries"], key=lambda n: n == MANIFEST):
            if (dest / name).exists() or (dest / name).is_symlink():
                _replace(dest / name, self.out / name)
        with contextlib.suppress(OSError):  # only if empty
            dest.rmdir()
            dest.parent.rmdir()
        log.info("nothing was written: the earlier run's files are back in %s", self.out)

    def _prune_previous(self) -> None:
        """Keep only the run this one moved away in .previous/ (an older one there goes)."""
        if self.previous is None:
            return
        for stale in (self.out / PREVIOUS).iterdir():
            if stale.name != self.previous["run_id"] and not self._holds_input(stale):
                shutil.rmtree(stale) if stale.is_dir() and not stale.is_symlink() else stale.unlink()
                log.info("deleted %s (runs before the previous one are not kept)", stale)

    # -- signals -----------------------------------------------------------------------------------------

    def _catch_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return

        def interrupted(signum, _frame):
            raise RunInterrupted(signal.Signals(signum).name)

        for sig in (signal.SIGTERM, signal.SIGHUP):
            if signal.getsignal(sig) == signal.SIG_DFL:  # a caller's own handler stays in charge
                self._signals[sig] = signal.signal(sig, interrupted)

    def _restore_signals(self) -> None:
        for sig, handler in self._signals.items():
            signal.signal(sig, handler)
        self._signals.clear()

    # -- the manifest --------------------------------------------------------------------------------------

    def kept_entries(self) -> list[str]:
        """The top-level entries of OUT that hold a file or folder the run reads: they stay where they are."""
        return sorted(e.name for e in self.out.iterdir() if e.name not in (LOCK, PREVIOUS) and self._holds_input(e))

    def written_paths(self) -> list[Path]:
        """Every file now in OUT but the lock, the manifest, .previous/ and the kept entries (inputs), sorted."""
        skip = {LOCK, MANIFEST, PREVIOUS, *self.kept_entries()}
        found = []
        for root, dirs, names in os.walk(self.out):
            here = Path(root)
            if here == self.out:
                dirs[:] = [d for d in dirs if d not in skip]
                names = [n for n in names if n not in skip]
            found += [here / n for n in names if (here / n).is_file()]
        return sorted(found)

    def written_files(self) -> dict[str, dict]:
        """{relative path: {bytes, sha256}} of written_paths()."""
        return {p.relative_to(self.out).as_posix(): {"bytes": p.stat().st_size, "sha256": sha256(p)}
                for p in self.written_paths()}

    def write_manifest(self, status: str, error: str | None = None) -> Path:
        assert status in STATUSES
        manifest = {
            "format": FORMAT, "version": VERSION, "run_id": self.run_id, "status": status,
            "started": self.started, "finished": None if status == "running" else _now(), "error": error,
            "command": self.command, "settings": self.settings, "previous": self.previous,
            "inputs": self.kept_entries(),
            "files": {} if status == "running" else self.written_files(),
        }
        path = self.out / MANIFEST
        write_text(path, json.dumps(manifest, indent=2) + "\n")
        return path


def _replace(source: Path, target: Path) -> None:
    """Move `source` to `target`, replacing what is there (a rename within one file system)."""
    if target.is_dir() and not target.is_symlink():
        shutil.rmtree(target)
    elif target.exists() or target.is_symlink():
        target.unlink()
    shutil.move(str(source), str(target))
