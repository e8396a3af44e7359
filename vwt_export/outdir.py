"""One output folder, one run: a run locks `--out`, moves an earlier run's files away before it writes, and ends
with OUT/manifest.json, written last, listing every file it wrote with its checksum.

    with OutputRun.for_config(cfg) as run:     # --out checked (see below) and locked
        inputs = check_inputs(cfg)             # bad input fails here: nothing moved, nothing written
        run.begin()                            # the earlier run's files -> OUT/.previous/<its run id>/
        ...                                    # the stages write their files
                                               # on leaving: manifest.json (complete / interrupted / failed)

The one rule: a run moves or deletes only files that a vwt-export manifest lists (or, in a folder without one,
files under the names vwt-export writes, WRITTEN_NAMES), never anything else; anything else in OUT is refused by
name, before the lock file is even made (--out ~ by mistake leaves the home folder as it was). In detail
(the README's "One output folder, one run" says the same for users):
- Lock. OUT/.vwt-export.lock is held (flock) for the whole run; a second run into the same folder stops at once
  with one line naming the holder. The lock file stays (deleting it while another process opens it would let
  two runs lock two different files), except in a folder the run created and leaves empty: both go.
- Earlier run. Before this run writes, the files OUT's manifest lists (with that manifest) are moved to
  OUT/.previous/<that run's id>/: OUT never mixes two runs, and the last results stay at hand (a rename costs
  nothing however large the engines). Without a manifest, or with one left at "running" by a run killed before
  it could list its files, the entries whose names vwt-export writes are moved, and a manifest listing them is
  written beside them ("unrecorded" where there was none). The move is all or nothing. A run that writes nothing
  (a bad --weights, say) puts them back. Python's caches (__pycache__/, which Triton's Python backend writes
  when it serves OUT/triton) move and go with the folder that holds them.
- Refused, by name: files the manifest does not list; without one, names vwt-export does not write; another
  run's output folder inside OUT (its own manifest, or its lock held); and an --out inside another run's output
  folder. Files the run reads (an image folder or a vocabulary inside OUT, as --demo makes) stay where they are,
  listed under "inputs". --out equal to or inside an input folder is refused too (the next run would read this
  run's outputs).
- Pruning. Once this run has written a file, .previous/ keeps the run it moved there and, if that one did not
  complete, the newest run there that did; of the others, only the files their manifests list are deleted.
- Manifest. Written at the start with status "running", rewritten last with "complete", or "interrupted"
  (Ctrl-C, SIGTERM, SIGHUP) or "failed" (an error, with its line), listing the files then in OUT with their
  sizes, times and sha256. `manifest_problems` (used by runtime.load and serve) reports files that differ from
  the nearest manifest above them (hashing only files whose size or time changed), or whose run did not complete.
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
import re
import secrets
import shutil
import signal
import tempfile
import threading
from pathlib import Path, PurePosixPath
from typing import Any, Iterable, Iterator, Mapping

from .atomic import write_text
from .errors import VWTError

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
LOCK = ".vwt-export.lock"
PREVIOUS = ".previous"
FORMAT, VERSION = "vwt-export/manifest", 1
STATUSES = ("running", "complete", "interrupted", "failed", "unrecorded")  # unrecorded: moved, found with no manifest
RUN_ID = re.compile(r"(unrecorded-)?\d{8}T\d{6}Z-[0-9a-f]{6}")  # new_run_id(), or "unrecorded-" + one
# The names a run writes at the top of OUT (and atomic_path's temporary files, which a killed run leaves)
WRITTEN_NAMES = ("model*.onnx", "model*.engine", "model*.engine.json", "*.onnx.data", "vocab.safetensors",
                 "report.json", "report.md", "summary.json", "timing.cache", "polygraphy", "plots", "sweep",
                 "triton", "demo-images", ".*.tmp")
CACHES = ("__pycache__",)  # folders Python writes beside a module it imports: no run's, no user's
LISTED = 5  # refused files named in the error line; the rest are counted

# Output folders this process is writing now: their files are not checked against their manifest while the run
# changes them. Process-wide on purpose (a folder being written is being written, whichever thread asks); two
# runs cannot share one folder (the lock), so a folder is added and removed by one run only.
_active: set[Path] = set()


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


def file_entry(path: Path) -> dict:
    """What a manifest records of a file: size, modification time (ns) and sha256."""
    st = path.stat()
    return {"bytes": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha256(path)}


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


def config_paths(value: Any, skip: tuple[str, ...] = ("out", "command")) -> list[Path]:
    """Every path in a configuration (any dataclass tree): the files and folders a run reads. A string field
    that names an existing file (a checkpoint given as --weights my.pth) counts too."""
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
    elif isinstance(value, str) and os.path.isfile(value):  # isfile: False, not an error, for any odd string
        found.append(Path(value))
    return found


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _some(names: list[str]) -> str:
    return ", ".join(names[:LISTED]) + (f" and {len(names) - LISTED} more" if len(names) > LISTED else "")


def check_folder(out: str | os.PathLike, inputs: Iterable[str | os.PathLike] = ()) -> None:
    """--out can hold this run: a folder (or nothing yet), outside every input folder and every other run's
    output folder, writable. One line each."""
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
    for folder in real.parents:
        if _another_run(folder):
            raise VWTError(f"--out {out} is inside {folder}, the output folder of another run; pass an --out "
                           "outside it")
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


def _load(path: Path) -> dict | None:
    """The JSON of a vwt-export manifest (well-formed or not), or None: no file, or another tool's manifest.json."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) and data.get("format") == FORMAT else None


def _malformed(data: dict) -> str | None:
    """What is wrong with a manifest of ours, or None. Run ids and file names become paths: only safe ones pass."""
    run_id, status, files = data.get("run_id"), data.get("status"), data.get("files")
    if not isinstance(run_id, str) or not RUN_ID.fullmatch(run_id):
        return f"run_id {run_id!r} is not a run id"
    if status not in STATUSES:
        return f"status {status!r} is not one of {', '.join(STATUSES)}"
    if not isinstance(files, dict):
        return "files is not an object"
    for name, entry in files.items():
        parts = PurePosixPath(name).parts
        if not name or name.startswith("/") or "\\" in name or any(p in ("", ".", "..") for p in parts):
            return f"file {name!r} is not a path inside the folder"
        if not (isinstance(entry, dict) and isinstance(entry.get("sha256"), str) and isinstance(entry.get("bytes"), int)
                and isinstance(entry.get("mtime_ns", 0), int)):
            return f"file {name!r} has no sha256 and bytes"
    return None


def read_manifest(folder: str | os.PathLike) -> dict | None:
    """The manifest in `folder`, or None where there is none or it is not vwt-export's (another tool's
    manifest.json); VWTError for one of ours that is malformed."""
    path = Path(folder) / MANIFEST
    data = _load(path)
    if data is None:
        return None
    problem = _malformed(data)
    if problem:
        raise VWTError(f"{path}: a malformed vwt-export manifest ({problem}); delete it (the files beside it then "
                       "count as an earlier run's by their names) or pass another --out")
    return data


def _holder(fd: int) -> str:
    return os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"


def _lock_holder(folder: Path) -> str | None:
    """Who holds the folder's lock now ('pid N, run ID, ...'), or None when nobody does."""
    import fcntl

    try:
        fd = os.open(folder / LOCK, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            with contextlib.suppress(OSError):
                return _holder(fd)
            return "another process"
        return None
    finally:
        os.close(fd)


def _another_run(folder: Path) -> str | None:
    """How `folder` shows it is a run's output folder ('its manifest.json', or who holds its lock), or None."""
    holder = _lock_holder(folder)
    if holder:
        return holder
    return f"its {MANIFEST}" if _load(folder / MANIFEST) is not None else None


def _files(entry: Path) -> Iterator[Path]:
    """The files below `entry` (itself if it is a file or a link), Python's caches left out."""
    if entry.is_symlink() or not entry.is_dir():
        yield entry
        return
    for root, dirs, names in os.walk(entry):
        dirs[:] = [d for d in dirs if d not in CACHES]
        yield from (Path(root) / n for n in names)


def _unchanged(path: Path, entry: dict) -> bool:
    st = path.stat()
    if st.st_size != entry["bytes"]:
        return False
    return st.st_mtime_ns == entry.get("mtime_ns") or sha256(path) == entry["sha256"]


def _find_manifest(path: Path) -> Path | None:
    """The nearest folder above `path` holding a manifest.json."""
    return next((folder for folder in path.parents if (folder / MANIFEST).is_file()), None)


def manifest_problems(paths: Iterable[str | os.PathLike]) -> list[str]:
    """One line for each file among `paths` that differs from the vwt-export manifest of the nearest folder above
    it holding one, and for a manifest whose run did not complete. Files with no manifest above them, Python's
    caches, and folders this process is writing are not checked. A file whose size and modification time are
    those the manifest records is taken as unchanged; others are hashed."""
    problems: list[str] = []
    seen: dict[Path, dict | None] = {}
    for given in paths:
        path = Path(given).absolute()
        folder = _find_manifest(path)
        if (folder is None or folder.resolve() in _active or not path.is_file()
                or any(part in CACHES for part in path.relative_to(folder).parts)):
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
        entry = manifest["files"].get(path.relative_to(folder).as_posix())
        if entry is None:
            problems.append(f"{path}: not written by run {manifest['run_id']} (not in {folder / MANIFEST}): it was "
                            "put there afterwards")
        elif not _unchanged(path, entry):
            problems.append(f"{path}: changed since run {manifest['run_id']} wrote it (its checksum differs from "
                            f"{folder / MANIFEST})")
    return problems


def _why_incomplete(folder: Path, manifest: dict) -> str:
    if manifest["status"] == "running":
        holder = _lock_holder(folder)
        return f"is still writing this folder ({holder})" if holder else "stopped before it finished (killed?)"
    if manifest["status"] == "unrecorded":
        return "left these files without a manifest"
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
        self.previous: dict | None = None  # the earlier run begin() moved: run_id, status, moved_to, entries
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
        if self.out.is_dir():
            holder = _lock_holder(self.out)
            if holder:
                raise self._busy(holder)
            self.earlier_run()  # refused files are named before the lock file is made; begin() checks again
        self._created = not self.out.exists()
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.out / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise VWTError(f"{self.out}: cannot write there ({e.strerror or e}); pass a writable --out") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = _holder(fd)
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise VWTError(f"{self.out / LOCK}: cannot be locked ({e.strerror}); pass another --out") from None
            raise self._busy(holder) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}, run {self.run_id}, started {self.started}\n".encode(), 0)
        self._lock_fd = fd
        _active.add(self.out.resolve())
        return self

    def _busy(self, holder: str) -> VWTError:
        return VWTError(f"{self.out}: another vwt-export run is writing this folder ({holder}); wait for it to finish "
                        "or pass another --out")

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

    # -- the earlier run -----------------------------------------------------------------------------------

    def _holds_input(self, entry: Path) -> bool:
        entry = entry.resolve()
        return any(_inside(p.resolve(), entry) for p in self.inputs)

    def earlier_run(self) -> tuple[dict | None, list[Path]]:
        """The earlier run in OUT: its manifest (None where there is none, or it lists nothing yet: "running") and
        the top-level entries of OUT that begin() moves. VWTError naming whatever is not that run's (see the module
        docstring); a malformed manifest of ours is one too."""
        manifest = read_manifest(self.out)
        listed = manifest["files"] if manifest is not None and manifest["status"] != "running" else None
        tops = {name.split("/")[0] for name in listed} if listed is not None else set()
        entries, foreign, runs = [], [], []
        for entry in sorted(self.out.iterdir()):
            if entry.name in (LOCK, PREVIOUS) or self._holds_input(entry):
                continue
            if entry.name == MANIFEST and manifest is not None:
                entries.append(entry)
                continue
            if not (entry.name in tops if listed is not None else _looks_written(entry.name)):
                foreign.append(entry.name + ("/" if entry.is_dir() and not entry.is_symlink() else ""))
                continue  # not walked: it may be a whole home folder
            entries.append(entry)
            for path in _files(entry):
                rel = path.relative_to(self.out).as_posix()
                how = _another_run(path.parent) if path.name in (LOCK, MANIFEST) else None
                if how:
                    runs.append(f"{path.parent.relative_to(self.out).as_posix()}, the output folder of another run "
                                f"({how})")
                elif listed is not None and rel not in listed:
                    foreign.append(rel)
        if runs:
            raise VWTError(f"{self.out}: holds {'; '.join(sorted(set(runs)))}; move it out of the folder or pass "
                           "another --out")
        if foreign:
            raise VWTError(f"{self.out}: holds files that are not an earlier run's ({_some(sorted(foreign))}); move "
                           "them out of the folder or pass another --out")
        return manifest, entries

    def begin(self) -> None:
        """Move the earlier run's files away, write the "running" manifest, and turn SIGTERM/SIGHUP into an
        interruption that the manifest records."""
        if self._lock_fd is None:
            raise RuntimeError("OutputRun.begin() outside its with-block")
        # A Ctrl-C during the move puts back what had moved before it propagates (_move_earlier_run is all or
        # nothing), so the block is left with OUT as it was found; after it, __exit__ records or undoes the run.
        self.previous = self._move_earlier_run()
        self._begun = True  # from here on, leaving the block with nothing written puts the earlier run back
        self.write_manifest("running")
        self._catch_signals()

    def _move_earlier_run(self) -> dict | None:
        manifest, entries = self.earlier_run()
        if not entries:
            return None
        status = manifest["status"] if manifest is not None else "unrecorded"
        run_id = manifest["run_id"] if manifest is not None else "unrecorded-" + new_run_id()
        dest = self.out / PREVIOUS / run_id
        dest.mkdir(parents=True, exist_ok=True)
        moved: list[str] = []
        # All or nothing: a Ctrl-C (or a failed rename) part-way puts back what had moved, so OUT never holds half
        # a run with its manifest gone. The manifest goes last: until then OUT still says whose files these are.
        try:
            for entry in sorted(entries, key=lambda e: e.name == MANIFEST):
                _replace(entry, dest / entry.name)
                moved.append(entry.name)
            if manifest is None or status == "running":  # list what moved, so that a later run can prune exactly it
                self._record(dest, manifest, run_id)
        except BaseException:
            for name in reversed(moved):
                _replace(dest / name, self.out / name)
            (dest / MANIFEST).unlink(missing_ok=True)
            with contextlib.suppress(OSError):  # only if empty
                dest.rmdir()
                dest.parent.rmdir()
            raise
        log.info("moved the %d files and folders of the earlier run %s to %s", len(moved), run_id, dest)
        return {"run_id": run_id, "status": status, "moved_to": f"{PREVIOUS}/{run_id}", "entries": sorted(moved)}

    @staticmethod
    def _record(dest: Path, manifest: dict | None, run_id: str) -> None:
        """A manifest for moved files that none listed: the killed run's own, with its files; or an unrecorded one."""
        record = dict(manifest or {
            "format": FORMAT, "version": VERSION, "run_id": run_id, "status": "unrecorded", "started": None,
            "finished": None, "error": "found without a manifest (an older vwt-export?) and moved here",
            "command": None, "settings": None, "previous": None, "inputs": []})
        record["files"] = {p.relative_to(dest).as_posix(): file_entry(p)
                           for p in _files(dest) if p != dest / MANIFEST and p.is_file()}
        write_text(dest / MANIFEST, json.dumps(record, indent=2) + "\n")

    def _put_back(self) -> None:
        """Undo begin(): the run's "running" manifest goes, the earlier run's files come back."""
        (self.out / MANIFEST).unlink(missing_ok=True)
        if self.previous is None:
            return
        dest = self.out / self.previous["moved_to"]
        for name in sorted(self.previous["entries"], key=lambda n: n == MANIFEST):
            if (dest / name).exists() or (dest / name).is_symlink():
                _replace(dest / name, self.out / name)
        (dest / MANIFEST).unlink(missing_ok=True)  # the one _record wrote, where there was none
        with contextlib.suppress(OSError):  # only if empty
            dest.rmdir()
            dest.parent.rmdir()
        log.info("nothing was written: the earlier run's files are back in %s", self.out)

    def _prune_previous(self) -> None:
        """.previous/ keeps the run begin() moved there and, if that one did not complete, the newest run there
        that did; of the others, the files their manifests list are deleted (nothing else)."""
        if self.previous is None:
            return
        runs: dict[Path, dict | None] = {}
        for folder in sorted((self.out / PREVIOUS).iterdir()):
            try:
                runs[folder] = read_manifest(folder) if folder.is_dir() and not folder.is_symlink() else None
            except VWTError:
                runs[folder] = None
        keep = {self.previous["run_id"]}
        if self.previous["status"] != "complete":  # a failed run moved there must not cost the last good one
            complete = [(m.get("finished") or "", f.name) for f, m in runs.items() if m and m["status"] == "complete"]
            keep |= {max(complete)[1]} if complete else set()
        for folder, manifest in runs.items():
            if folder.name in keep:
                continue
            if manifest is None or self._holds_input(folder) or _lock_holder(folder):
                log.info("left %s (no vwt-export manifest lists its files, or a run reads or writes it)", folder)
                continue
            _delete_listed(folder, manifest)

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
        """{relative path: {bytes, mtime_ns, sha256}} of written_paths()."""
        return {p.relative_to(self.out).as_posix(): file_entry(p) for p in self.written_paths()}

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


def _delete_listed(folder: Path, manifest: dict) -> None:
    """Delete the files `manifest` lists in `folder` (read_manifest checked their names stay inside it), Python's
    caches, the folders left empty, and last the manifest; files it does not list stay, with their folders."""
    for name in manifest["files"]:
        with contextlib.suppress(FileNotFoundError, IsADirectoryError):
            (folder / name).unlink()
    for root, dirs, _names in os.walk(folder, topdown=False):
        for d in dirs:
            path = Path(root) / d
            if d in CACHES and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            with contextlib.suppress(OSError):  # only if empty
                path.rmdir()
    (folder / MANIFEST).unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # only if empty
        folder.rmdir()
    if folder.exists():
        left = sorted(p.relative_to(folder).as_posix() for p in _files(folder))
        log.warning("deleted the files of run %s in %s but for those its manifest did not list: %s",
                    manifest["run_id"], folder, _some(left))
    else:
        log.info("deleted %s (runs before the previous one are not kept)", folder)
