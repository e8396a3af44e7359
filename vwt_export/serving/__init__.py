"""Serving with Triton Inference Server: a model repository for an export, and a local server to run it.

    from vwt_export.serving import write_repository, serve
    write_repository(Path("OUT"))           # OUT/triton/: Python-backend, onnxruntime and tensorrt models
    serve                                   # the click command behind `vwt-export serve OUT/triton`

Running a server needs nvidia-pytriton's tritonserver and tritonclient: `make setup` installs them, elsewhere
scripts/install_serving.sh (the 'serving' extra installs them too, but downgrades numpy below 2 through
nvidia-pytriton's pin). Writing a repository needs nothing beyond vwt-export.
"""

from .cli import serve
from .repository import ServingSettings, write_repository

__all__ = ["ServingSettings", "serve", "write_repository"]
