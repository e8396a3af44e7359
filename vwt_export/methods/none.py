"""mode none: no compression. The run writes and measures the baseline variants only (fp32, int8, ...)."""

from __future__ import annotations

from ..vwt.model import CompressedViT
from .registry import Method, register


@register
class NoCompression(Method):
    name = "none"
    summary = "the uncompressed model only"

    def build(self, model, spec, vocab=None):
        return CompressedViT(model, "none").eval()  # the model behind the compressed models' interface
