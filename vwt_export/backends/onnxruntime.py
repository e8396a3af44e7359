"""ONNX Runtime sessions for vwt-export models: the one place that registers the vwt op library.

    session = create_session("OUT/model.vwt.onnx")                 # the library is registered if the graph needs it
    f = OrtRunner("OUT/model.vwt.onnx", extra_outputs={"vwt/keys": onnx.TensorProto.INT64})
    logits = f(pixels); logits, extras = f.infer_extras(pixels); extras["vwt/keys"]
    logits, tokens = OrtRunner("OUT/model.vwt.onnx", count_tokens=True).infer_tokens(pixels)   # tokens per image

With `profile=True` the session records every kernel's time; `kernel_times(session)` reads it back per run.
"""

from __future__ import annotations

import bisect
import json
import os
import tempfile
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import onnx

from ..errors import VWTError
from ..graph import ops
from ..plugins import ort_library
from .base import Runner


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


# the graph tensors a compressed graph's tokens are read from: TokenMerge's sizes (inter), the selection (intra)
TOKEN_PROBES = (ops.SIZES_TENSOR, ops.SELECTED_TENSOR)


class OrtRunner(Runner):
    """A model (a path or a proto) on ONNX Runtime; the vwt op library is registered when the graph needs it.

    `extra_outputs` ({tensor name: onnx element type}) are returned by `infer_extras` beside the output.
    `count_tokens`: `infer_tokens` counts each image's tokens from the graph itself: the sizes TokenMerge returns,
    the length of an intra selection, a ToMe graph's static schedule (the same mean tokens for every image), or a
    hybrid's tokens per block, averaged over its blocks."""

    kind = "onnxruntime-cpu"

    def __init__(self, model: str | os.PathLike | onnx.ModelProto, providers: Sequence[str] | None = None,
                 threads: int | None = None, extra_outputs: Mapping[str, int] | None = None, spinning: bool = True,
                 count_tokens: bool = False):
        super().__init__(str(model) if not isinstance(model, onnx.ModelProto) else "model")
        extra = dict(extra_outputs or {})
        self.probe, self.fixed_tokens = None, None
        self.block_probes: list[str] = []
        if count_tokens:
            from ..graph.hybrid_export import block_sizes
            from ..graph.tome_export import read_schedule

            proto = load_proto(model)
            schedule = read_schedule(proto)
            produced = {o for n in proto.graph.node for o in n.output}
            self.probe = next((t for t in TOKEN_PROBES if t in produced), None) if schedule is None else None
            self.fixed_tokens = schedule["mean_tokens"] if schedule is not None else None
            self.block_probes = [t for t in block_sizes(proto) or [] if t in produced]  # a hybrid: mean over blocks
            for probe in [self.probe] * bool(self.probe) + self.block_probes:
                extra.setdefault(probe, onnx.TensorProto.FLOAT)
        self.session = create_session(model, providers, threads, extra_outputs=extra, spinning=spinning)
        first_input_output(self.session, model)  # a graph without an input or output is one line, not an IndexError
        if providers and providers[0] != "CPUExecutionProvider":
            self.kind = f"onnxruntime-{providers[0].removesuffix('ExecutionProvider').lower()}"
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.extra = list(extra)

    def run(self, *inputs: np.ndarray, outputs: Sequence[str] | None = None) -> list[np.ndarray]:
        """The named outputs (default: all the graph's) for inputs in the graph's input order, as given."""
        if len(inputs) != len(self.inputs):
            raise VWTError(f"{self.name}: the model takes {len(self.inputs)} inputs ({', '.join(self.inputs)}), "
                           f"got {len(inputs)}")
        return self.session.run(list(outputs or self.outputs), dict(zip(self.inputs, inputs)))

    def infer(self, *inputs: np.ndarray) -> np.ndarray:
        return self.run(*(np.ascontiguousarray(x, dtype=np.float32) for x in inputs), outputs=self.outputs[:1])[0]

    def infer_extras(self, pixels: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        first, *extras = self.run(np.ascontiguousarray(pixels, dtype=np.float32), outputs=self.outputs[:1] + self.extra)
        return first, dict(zip(self.extra, extras))

    def infer_tokens(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        if self.block_probes:
            out, extras = self.infer_extras(pixels)
            return out, np.mean([(extras[t] > 0).sum(axis=1) for t in self.block_probes], axis=0)
        if self.probe is not None:
            out, extras = self.infer_extras(pixels)
            probe = extras[self.probe]  # sizes [B, T]: the real (size > 0) ones; a selection [B, T, D]: all T
            return out, (probe > 0).sum(axis=1) if probe.ndim == 2 else np.full(len(probe), probe.shape[1])
        if self.fixed_tokens is not None:
            return self.infer(pixels), np.full(len(pixels), self.fixed_tokens)
        return self.infer(pixels), None

    @property
    def metadata(self) -> dict:
        return {**super().metadata, "inputs": self.inputs, "outputs": self.outputs, "extra_outputs": self.extra,
                "providers": self.session.get_providers()}


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
