"""mode intra: keep the K patches whose features vary most (VWT's intra-image tokenizer), drop the rest."""

from __future__ import annotations

from ..errors import VWTError
from ..vwt import defaults
from ..vwt.features import SPACES
from ..vwt.model import CompressedViT
from .options import Option
from .registry import Method, register


def parse_keep(value: int | float | str) -> int | float:
    """`keep` as given: a count (147), a fraction (0.75), or either as text. Whether a count fits the model is
    checked when the model is built (vwt.intra.resolve_keep)."""
    if isinstance(value, str):
        try:
            value = float(value) if any(c in value for c in ".eE") else int(value)
        except ValueError:
            raise VWTError(f"--keep {value}: give a fraction like 0.75 or a patch count like 147") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise VWTError(f"keep must be a count or a fraction, not {value!r}")
    if isinstance(value, float) and not 0.0 < value <= 1.0:
        raise VWTError(f"keep={value} is out of range: give a fraction in (0, 1] or a patch count")
    if isinstance(value, int) and value < 1:
        raise VWTError(f"keep={value} patches is out of range: keep at least 1")
    return value


KEEP = Option("keep", defaults.KEEP, "intra: fraction of patches (0.75) or a count (147)", parser=parse_keep)
SPACE = Option("space", None, "feature space patches are compared in  [default: the vocabulary's, else image]",
               kind=str, choices=SPACES)


@register
class Intra(Method):
    name, variant = "intra", "vwt"
    summary = "keep the highest-variance patches"
    options = (KEEP, SPACE)
    sweep_keys = ("keep",)

    def build(self, model, spec, vocab=None):
        return CompressedViT(model, "intra", vocab=vocab, keep=spec.keep, space=spec.space,
                             prop_attn=spec.prop_attn).eval()

    def graph(self, base, reference, spec):
        from ..graph.surgery import intra_graph  # onnx-graphsurgeon: only where graphs are built
        return intra_graph(base, reference.keep_count, space=reference.space)

    def settings(self, spec, reference):
        return {"keep": spec.keep, "space": reference.space}

    def describe(self, settings):
        return f", keep {settings.get('keep')}"
