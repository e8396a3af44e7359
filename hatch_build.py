"""hatchling build hook: the wheel carries the native ONNX Runtime op library (and the TensorRT plugin where it is
built), compiled by scripts/build_native.py, the same build `make setup` runs.

    pip install .                  # builds the library, installs a wheel that holds vwt_export/lib/libvwt_ort_ops.so
    pip wheel --no-deps -w dist .  # dist/vwt_export-<version>-py3-none-<platform>.whl
    pip install -e .               # editable: builds the library into the checkout's vwt_export/lib/, as make setup

Set VWT_SKIP_NATIVE=1 for a pure-Python build (graphs with vwt nodes then need VWT_ORT_LIBRARY or the portable
form). Why hatchling and a hook rather than scikit-build-core: scikit-build-core's editable installs put an import
finder first on sys.meta_path, so an editable install would shadow any checkout on PYTHONPATH (how several
worktrees share one environment here); hatchling's editable install is a plain path entry. The hook asks for
PyPI's cmake only where no cmake >= 3.18 is on PATH, as scikit-build-core would.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sysconfig
import tempfile
from pathlib import Path

from hatchling.builders.hooks.plugin.interface import BuildHookInterface


def _build_native_module(root: str):
    spec = importlib.util.spec_from_file_location("vwt_build_native", Path(root) / "scripts" / "build_native.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class NativeLibraryHook(BuildHookInterface):
    PLUGIN_NAME = "custom"

    def _skip(self) -> bool:
        return os.environ.get("VWT_SKIP_NATIVE", "") not in ("", "0")

    def dependencies(self) -> list[str]:
        if self._skip():
            return []
        native = _build_native_module(self.root)
        version = native.cmake_version()
        return [] if version and version >= native.MIN_CMAKE else [f"cmake>={'.'.join(map(str, native.MIN_CMAKE))}"]

    def initialize(self, version: str, build_data: dict) -> None:
        if self.target_name != "wheel" or self._skip():
            return
        native = _build_native_module(self.root)
        if version == "editable":
            # the checkout's package folder, as make setup does: the .pth of an editable install points at it
            native.build(Path(self.root) / "vwt_export")
            return
        self._stage = Path(tempfile.mkdtemp(prefix="vwt-native-"))  # install prefix for this wheel only
        built = native.build(self._stage)
        if not any(p.name == "libvwt_ort_ops.so" for p in built):
            raise RuntimeError(f"the native build installed no libvwt_ort_ops.so into {self._stage / 'lib'}")
        for lib in built:
            build_data["force_include"][str(lib)] = f"vwt_export/lib/{lib.name}"
        # The library is native code but links no Python: one wheel per platform serves every Python 3. The tag is
        # the plain platform (linux_x86_64), not manylinux: no auditwheel has checked the glibc it needs.
        build_data["pure_python"] = False
        build_data["tag"] = "py3-none-" + sysconfig.get_platform().replace("-", "_").replace(".", "_")

    def finalize(self, version: str, build_data: dict, artifact_path: str) -> None:
        if getattr(self, "_stage", None) is not None:
            shutil.rmtree(self._stage, ignore_errors=True)
