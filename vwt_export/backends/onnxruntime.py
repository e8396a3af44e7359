"""ONNX Runtime sessions for vwt-export models: the one place that registers the vwt op library.

    session = create_session("OUT/model.vwt.onnx")                 # the library is registered if the graph needs it
    f = runner("OUT/model.vwt.onnx", extra_outputs={"vwt/keys": onnx.TensorProto.INT64})
    logits = f(pixels); logits, keys = f.with_extras(pixels)

With `profile=True` the session records every kernel's time; `kernel_times(session)` reads it back per run.
"""

from __future__ import annotations

import bisect
import json
import os
import tempfile
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import onnx

from ..errors import VWTError
from ..graph import ops
from ..plugins import ort_library


def needs_op_library(model: onnx.ModelProto) -> bool:
    """True when the graph has vwt nodes without portable function bodies."""
    functions = {(f.domain, f.name) for f in model.functions}
    return any(n.domain == ops.DOMAIN and (n.domain, n.op_type) not in functions for n in model.graph.node)


def load_proto(model: str | os.PathLike | onnx.ModelProto) -> onnx.ModelProto:
    """The graph of `model` (a path or a proto) without external weights: enough to inspect its structure."""
    if isinstance(model, onnx.ModelProto):
        return model
    path = Path(model)
    if not path.is_file():
        raise VWTError(f"{path}: no such model file")
    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as e:
        raise VWTError(f"{path}: not a readable ONNX model ({type(e).__name__}: {str(e)[:120]})") from None


def session_options(proto: onnx.ModelProto, name: str = "model", profile: bool = False, threads: int | None = None,
                    spinning: bool = True):
    """SessionOptions with the vwt op library registered when (and only when) the graph needs it. `spinning=False`
    lets idle intra-op threads sleep instead of spinning (for a session that waits while another one works)."""
    import onnxruntime as ort

    try:
        ops.check_version(proto)
    except VWTError as e:
        raise VWTError(f"{name}: {e}") from None
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
    if not spinning:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if profile:
        so.enable_profiling = True
        so.profile_file_prefix = str(Path(tempfile.mkdtemp(prefix="vwt-profile-")) / "ort")
    return register_op_library(so, proto)


def register_op_library(so, proto: onnx.ModelProto, library: str | os.PathLike | None = None):
    """Register the vwt op library on SessionOptions `so` if the graph needs it; returns `so`."""
    import onnxruntime as ort

    if needs_op_library(proto):
        lib = library or ort_library()
        try:
            so.register_custom_ops_library(str(lib))
        except Exception as e:
            first = (str(e).splitlines() or [""])[0][:200]
            raise VWTError(f"{lib}: onnxruntime {ort.__version__} refused the vwt op library: {first}") from None
    return so


def with_outputs(proto: onnx.ModelProto, extra: Mapping[str, int]) -> onnx.ModelProto:
    """A copy of the graph that also returns the named intermediate tensors ({name: onnx element type})."""
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    produced = {o for n in copy.graph.node for o in n.output}
    for name, elem_type in extra.items():
        if name not in produced:
            raise VWTError(f"the graph has no tensor '{name}' to read (was it exported by this vwt-export?)")
        copy.graph.output.append(onnx.helper.make_tensor_value_info(name, elem_type, None))
    return copy


def create_session(model: str | os.PathLike | onnx.ModelProto, providers: Sequence[str] | None = None,
                   threads: int | None = None, profile: bool = False, extra_outputs: Mapping[str, int] | None = None,
                   spinning: bool = True):
    """An InferenceSession for a path or a proto; the vwt op library is registered if the graph needs it."""
    import onnxruntime as ort

    name = str(model) if not isinstance(model, onnx.ModelProto) else "model"
    proto = load_proto(model)
    so = session_options(proto, name, profile, threads, spinning)
    if extra_outputs:
        source = with_outputs(proto, extra_outputs).SerializeToString()
    else:
        source = str(model) if not isinstance(model, onnx.ModelProto) else model.SerializeToString()
    try:
        return ort.InferenceSession(source, so, providers=list(providers or ["CPUExecutionProvider"]))
    except Exception as e:
        first = (str(e).splitlines() or [""])[0][:200]
        raise VWTError(f"{name}: onnxruntime cannot load it ({type(e).__name__}: {first})") from None


def first_input_output(session, model: str | os.PathLike | onnx.ModelProto) -> tuple[str, str]:
    """The names of a session's first input and output; one line for a graph without either (runnable in ONNX
    Runtime, but nothing vwt-export can call)."""
    for kind, values in (("input", session.get_inputs()), ("output", session.get_outputs())):
        if not values:
            name = str(model) if not isinstance(model, onnx.ModelProto) else "model"
            raise VWTError(f"{name}: cannot be run as a vwt-export model (it has no {kind}); export it with vwt-export")
    return session.get_inputs()[0].name, session.get_outputs()[0].name


def runner(model: str | os.PathLike | onnx.ModelProto, providers: Sequence[str] | None = None,
           threads: int | None = None, extra_outputs: Mapping[str, int] | None = None) -> Callable:
    """f(pixels float32 [B, C, H, W]) -> the first output as a numpy array. With `extra_outputs`, the same
    session also serves f.with_extras(pixels) -> (first output, *those tensors)."""
    session = create_session(model, providers, threads, extra_outputs=extra_outputs)
    name, first = first_input_output(session, model)

    def run(pixels: np.ndarray) -> np.ndarray:
        return session.run([first], {name: np.ascontiguousarray(pixels, dtype=np.float32)})[0]

    def with_extras(pixels: np.ndarray) -> tuple[np.ndarray, ...]:
        return tuple(session.run([first, *(extra_outputs or {})], {name: np.ascontiguousarray(pixels, dtype=np.float32)}))

    run.session = session  # type: ignore[attr-defined]
    run.with_extras = with_extras  # type: ignore[attr-defined]
    return run


def kernel_times(session, by: str = "op") -> list[dict[str, float]]:
    """Ends a profiling session's profile. Per run, in run order: milliseconds of kernel time by op type
    (`by="op"`) or node name (`by="node"`), without session overhead (a portable form's time is that of the
    standard-op nodes its function body became)."""
    profile = Path(session.end_profiling())
    events = json.loads(profile.read_text())
    profile.unlink()
    if profile.parent.name.startswith("vwt-profile-"):
        profile.parent.rmdir()
    starts = sorted(e["ts"] for e in events if e.get("cat") == "Session" and e.get("name") == "model_run")
    per_run: list[dict[str, float]] = [{} for _ in starts]
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and starts:
            run = per_run[max(bisect.bisect_right(starts, e["ts"]) - 1, 0)]
            key = e.get("args", {}).get("op_name", "?") if by == "op" else e["name"][: -len("_kernel_time")]
            run[key] = run.get(key, 0.0) + e["dur"] / 1e3
    return per_run
