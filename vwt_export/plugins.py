"""Find and check the native libraries built from plugins/ (by `make setup`).

Search order: the VWT_ORT_LIBRARY environment variable, the package's lib/ folder (where `make setup`
installs it), then a development build in build/plugins/. A library whose version differs from this package's
is refused: it would run ops with other semantics.
"""

from __future__ import annotations

import ctypes
import functools
import os
from pathlib import Path

from .errors import VWTError

LIBRARY_VERSION = "0.1.0"  # must equal VWT_LIBRARY_VERSION in plugins/common/vwt_version.h
ORT_LIBRARY_NAME = "libvwt_ort_ops.so"
_HERE = Path(__file__).parent
_FIX = "build it with `make setup` (needs cmake and a C++ compiler), or set VWT_ORT_LIBRARY"


def ort_library_candidates() -> list[Path]:
    env = os.environ.get("VWT_ORT_LIBRARY")
    if env:
        return [Path(env)]
    return [_HERE / "lib" / ORT_LIBRARY_NAME, _HERE.parent / "build" / "plugins" / ORT_LIBRARY_NAME]


@functools.cache
def ort_library() -> Path:
    """The ONNX Runtime op library, checked; a clear error if missing or of another version."""
    for path in ort_library_candidates():
        if path.is_file():
            check_library_version(path)
            return path.resolve()
    where = ", ".join(str(p) for p in ort_library_candidates())
    raise VWTError(f"the vwt ONNX Runtime op library was not found (looked at {where}); {_FIX}")


def check_library_version(path: Path) -> str:
    try:
        lib = ctypes.CDLL(str(path))
        lib.vwt_library_version.restype = ctypes.c_char_p
        version = lib.vwt_library_version().decode()
    except (OSError, AttributeError) as e:
        raise VWTError(f"{path}: not a vwt op library ({e}); {_FIX}") from None
    if version != LIBRARY_VERSION:
        raise VWTError(f"{path}: vwt op library version {version}, but this vwt-export needs {LIBRARY_VERSION}; "
                       f"rebuild it with `make setup`")
    return version


def library_has_cuda(path: Path) -> bool:
    lib = ctypes.CDLL(str(path))
    return bool(lib.vwt_has_cuda())
