"""A `polygraphy run` extension: graphs with vwt ops run under `--onnxrt` with no extra code.

Installed as the entry point `polygraphy.run.plugins: vwt` (pyproject.toml). Polygraphy instantiates the
argument group below in every `polygraphy run`; parsing it wraps the onnxruntime module that Polygraphy's
ONNX Runtime loader uses, so that a session whose model has vwt nodes without portable bodies gets the vwt op
library registered first. Other models are untouched.

    polygraphy run OUT/model.vwt.onnx --onnxrt --load-inputs OUT/polygraphy/inputs.json \\
        --load-outputs OUT/polygraphy/model.vwt.outputs.json --atol 1e-4 --rtol 1e-3
"""

from __future__ import annotations

from polygraphy.tools.args.base import BaseArgs


class _OnnxRuntimeWithVwtOps:
    """Forwards to onnxruntime; InferenceSession registers the vwt op library when the model needs it."""

    def __init__(self, real, library: str | None):
        self._real, self._library = real, library

    def __getattr__(self, name):
        return getattr(self._real, name)

    def InferenceSession(self, model, sess_options=None, providers=None, **kwargs):  # noqa: N802 (onnxruntime's name)
        import onnx

        from .backends.onnxruntime import load_proto, register_op_library

        proto = onnx.load_from_string(model) if isinstance(model, bytes) else load_proto(model)
        sess_options = register_op_library(sess_options or self._real.SessionOptions(), proto, self._library)
        return self._real.InferenceSession(model, sess_options=sess_options, providers=providers, **kwargs)


def install(library: str | None = None) -> None:
    """Make Polygraphy's ONNX Runtime loader vwt-aware (idempotent)."""
    from polygraphy.backend.onnxrt import loader

    real = loader.onnxrt._real if isinstance(loader.onnxrt, _OnnxRuntimeWithVwtOps) else loader.onnxrt
    loader.onnxrt = _OnnxRuntimeWithVwtOps(real, library)


class VwtOpsArgs(BaseArgs):
    """
    vwt ops: loading the vwt custom-op library for graphs that need it (vwt-export extension)
    """

    def add_parser_args_impl(self):
        self.group.add_argument("--vwt-op-library", help="Path to the vwt ONNX Runtime op library "
                                "(default: the one vwt-export built)", default=None)

    def parse_impl(self, args):
        self.library = getattr(args, "vwt_op_library", None)
        install(self.library)


def export_argument_groups():
    return [VwtOpsArgs()]
