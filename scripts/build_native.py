#!/usr/bin/env python3
"""Build the native libraries in plugins/ with CMake: the one place that says how they are configured.

    python scripts/build_native.py                  # build/plugins -> vwt_export/lib/ (what `make setup` runs)
    python scripts/build_native.py --prefix DIR     # install into DIR/lib/ instead (the wheel build, hatch_build.py)

Both callers build with these settings, so an editable checkout and a wheel carry the same library. Everything
else (build type, warnings, CUDA architectures, what is optional) is in plugins/CMakeLists.txt. Settings read from
the environment:

    TENSORRT_ROOT            folder holding include/NvInferRuntime.h; default ~/.cache/vwt-export/tensorrt where it
                             exists. The TensorRT plugin is built only with these headers and a CUDA compiler.
    ONNXRUNTIME_INCLUDE_DIR  folder holding onnxruntime_cxx_api.h; default: fetched from Debian's
                             libonnxruntime-dev by scripts/fetch_ort_headers.py (a package registry, nothing else).
    VWT_WITH_CUDA            ON, OFF or AUTO (default AUTO: the CUDA kernels are compiled where nvcc is found).
    VWT_BUILD_DIR            the CMake build folder (default build/plugins in the source tree; incremental).
    CMAKE_BUILD_PARALLEL_LEVEL  parallel compile jobs (default: the number of CPUs).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MIN_CMAKE = (3, 18)  # cmake_minimum_required in plugins/CMakeLists.txt
LIBRARIES = ("libvwt_ort_ops.so", "libvwt_trt_plugin.so")  # installed into <prefix>/lib when built


def cmake_version(cmake: str | None = None) -> tuple[int, ...] | None:
    """The version of `cmake` (default: the first on PATH), or None when there is none."""
    cmake = cmake or shutil.which("cmake")
    if not cmake:
        return None
    try:
        out = subprocess.run([cmake, "--version"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    m = re.search(r"(\d+)\.(\d+)", out)
    return (int(m.group(1)), int(m.group(2))) if m else None


def tensorrt_root() -> str:
    """TENSORRT_ROOT, else the project's cache folder where it holds the headers, else '' (plugin skipped)."""
    if os.environ.get("TENSORRT_ROOT"):
        return str(Path(os.environ["TENSORRT_ROOT"]).expanduser().resolve())
    default = Path.home() / ".cache" / "vwt-export" / "tensorrt"
    return str(default) if (default / "include" / "NvInferRuntime.h").is_file() else ""


def configure_args(build_dir: Path, python: str) -> list[str]:
    # Every setting is passed on each configure, so a cached value from an earlier run never decides a build.
    return ["-S", str(ROOT / "plugins"), "-B", str(build_dir),
            f"-DPython3_EXECUTABLE={python}",  # runs scripts/fetch_ort_headers.py (standard library only)
            f"-DTENSORRT_ROOT={tensorrt_root()}",
            f"-DVWT_WITH_CUDA={os.environ.get('VWT_WITH_CUDA', 'AUTO')}",
            f"-DONNXRUNTIME_INCLUDE_DIR={os.environ.get('ONNXRUNTIME_INCLUDE_DIR', '')}"]


def build(prefix: Path, build_dir: Path | None = None, python: str | None = None, log=None) -> list[Path]:
    """Configure, build and install into prefix/lib; return the libraries installed. Output goes to `log` (a file
    object; default stderr). Raises SystemExit naming the log's last lines when a step fails."""
    cmake = shutil.which("cmake")
    version = cmake_version(cmake)
    if version is None or version < MIN_CMAKE:
        raise SystemExit(f"error: the native build needs cmake >= {'.'.join(map(str, MIN_CMAKE))} "
                         f"({'none on PATH' if version is None else 'found ' + '.'.join(map(str, version))}): "
                         "install it (`pip install cmake` or your system's package)")
    build_dir = Path(build_dir or os.environ.get("VWT_BUILD_DIR") or ROOT / "build" / "plugins")
    jobs = os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL") or str(os.cpu_count() or 2)
    steps = [[cmake, *configure_args(build_dir, python or sys.executable)],
             [cmake, "--build", str(build_dir), "-j", jobs],
             [cmake, "--install", str(build_dir), "--prefix", str(prefix)]]
    out = log or sys.stderr
    for step in steps:
        out.flush()
        r = subprocess.run(step, stdout=out, stderr=subprocess.STDOUT)
        if r.returncode != 0:
            raise SystemExit(f"error: `{' '.join(step)}` failed (exit {r.returncode}); its output is above"
                             + (f" and in {out.name}" if hasattr(out, "name") and out is not sys.stderr else ""))
    return [prefix / "lib" / name for name in LIBRARIES if (prefix / "lib" / name).is_file()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prefix", type=Path, default=ROOT / "vwt_export",
                        help="install into PREFIX/lib (default: the package, vwt_export/lib)")
    parser.add_argument("--build-dir", type=Path, default=None, help="CMake build folder (default build/plugins)")
    parser.add_argument("--log", type=Path, default=None, help="write CMake's output here instead of stderr")
    args = parser.parse_args()
    if args.log:
        args.log.parent.mkdir(parents=True, exist_ok=True)
        with open(args.log, "w") as log:
            built = build(args.prefix, args.build_dir, log=log)
        summary = [line for line in args.log.read_text().splitlines() if "vwt:" in line]
        print("\n".join(summary))
    else:
        built = build(args.prefix, args.build_dir)
    print("built: " + ", ".join(str(p) for p in built))


if __name__ == "__main__":
    main()
