"""Find and check the native libraries built from plugins/ (by `make setup`).

    ort_library()         libvwt_ort_ops.so, the ONNX Runtime custom-op library (always built)
    trt_plugin_library()  libvwt_trt_plugin.so, the TensorRT plugin (built where TensorRT headers exist)

Both are found the same way: an environment variable naming the file, else the package's lib/ folder (an
installed wheel carries them there; in a checkout `make setup` or `pip install -e .` builds them there), else, in a
checkout only, CMake's build folder build/plugins/. A library whose version differs from this package's is refused:
it would run ops with other semantics.
"""

from __future__ import annotations

import ctypes
import functools
import os
from dataclasses import dataclass
from pathlib import Path

from .errors import OpLibraryMissing, VWTError

LIBRARY_VERSION = "0.3.0"  # must equal VWT_LIBRARY_VERSION in plugins/common/vwt_version.h
_HERE = Path(__file__).parent


@dataclass(frozen=True)
class _Library:
    what: str
    file: str
    env: str       # environment variable naming the file
    build_dir: str  # where cmake leaves it, relative to build/plugins
    fix: str


ORT = _Library("vwt ONNX Runtime op library", "libvwt_ort_ops.so", "VWT_ORT_LIBRARY", ".",
               "build it with `make setup` in a checkout, or install vwt-export from its wheel (`pip install .` builds "
               "one; both need cmake and a C++ compiler), or set VWT_ORT_LIBRARY")
TRT = _Library("vwt TensorRT plugin library", "libvwt_trt_plugin.so", "VWT_TRT_PLUGIN", "tensorrt",
               "it is built only where TensorRT headers exist: set TENSORRT_ROOT (the folder holding include/NvInferRuntime.h) and run "
               "`make setup`; or build from model.vwt.portable.onnx, which needs no plugin")


def library_candidates(lib: _Library) -> list[Path]:
    env = os.environ.get(lib.env)
    if env:
        return [Path(env)]
    candidates = [_HERE / "lib" / lib.file]
    if (_HERE.parent / "plugins" / "CMakeLists.txt").is_file():  # a checkout, not site-packages
        candidates.append(_HERE.parent / "build" / "plugins" / lib.build_dir / lib.file)
    return candidates


def find_library(lib: _Library) -> Path:
    """The first candidate that exists, version-checked; a clear error if none does."""
    return _find(lib, os.environ.get(lib.env))


@functools.cache
def _find(lib: _Library, env: str | None) -> Path:  # cached per environment value, so tests can redirect it
    candidates = library_candidates(lib)
    for path in candidates:
        if path.is_file():
            check_library_version(path)
            return path.resolve()
    where = ", ".join(str(p) for p in candidates)
    raise OpLibraryMissing(f"the {lib.what} was not found (looked at {where}); {lib.fix}")


def ort_library() -> Path:
    """The ONNX Runtime op library, checked; a clear error if missing or of another version."""
    return find_library(ORT)


def trt_plugin_library() -> Path:
    """The TensorRT plugin library, checked; a clear error if missing or of another version."""
    return find_library(TRT)


# Callers that change the files themselves (tests building stand-in libraries) reset the lookup with this.
ort_library.cache_clear = trt_plugin_library.cache_clear = _find.cache_clear  # type: ignore[attr-defined]


def check_library_version(path: Path) -> str:
    try:
        lib = ctypes.CDLL(str(path))
        lib.vwt_library_version.restype = ctypes.c_char_p
        version = lib.vwt_library_version().decode()
    except (OSError, AttributeError) as e:
        raise VWTError(f"{path}: not a vwt op library ({e}); rebuild it with `make setup`") from None
    if version != LIBRARY_VERSION:
        raise VWTError(f"{path}: vwt op library version {version}, but this vwt-export needs {LIBRARY_VERSION}; "
                       f"rebuild it with `make setup`")
    return version
