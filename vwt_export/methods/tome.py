"""mode tome: Token Merging (Bolya et al., ICLR 2023), r merges in every block with proportional attention; a
comparator, exported in standard ops with static shapes."""

from __future__ import annotations

from ..errors import VWTError
from ..tome import compress_tome
from .options import Option
from .registry import Method, register

_R_TAKES = "a whole number of merges per block (8), or for hybrid a fraction of a block's tokens in (0, 0.5] (0.05)"


def parse_r(value: int | float | str) -> int | float:
    """`r` as given: merges per block (an int), or a fraction of each block's tokens (a float; the hybrid's
    sequences differ per image, so a count that suits one image empties another), or either as text."""
    if isinstance(value, str):
        try:
            value = float(value) if any(c in value for c in ".eE") else int(value)
        except ValueError:
            raise VWTError(f"r={value!r}: expected {_R_TAKES}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (isinstance(value, float)
                                                                          and not 0.0 < value <= 0.5):
        raise VWTError(f"r={value!r}: expected {_R_TAKES}")
    if isinstance(value, int) and value < 0:
        raise VWTError(f"r={value} is out of range: give the merges per block, >= 0")
    return value


R = Option("r", 8, "tome, hybrid: merges per block (hybrid: also a fraction of its tokens, 0.055)", parser=parse_r)


@register
class ToMe(Method):
    name = variant = "tome"
    summary = "ToMe's r merges in every block (a comparator)"
    options = (R,)
    sweep_keys = ("r",)
    search_ladder = tuple({"r": r} for r in (4, 8, 12, 16, 20))
    precisions = ("fp32",)  # its float16 graph is untested

    def check(self, spec):
        if isinstance(spec.r, float):
            raise VWTError(f"r={spec.r}: tome merges a whole number of tokens per block (a fraction of the tokens "
                           "applies to hybrid mode only)")

    def build(self, model, spec, vocab=None):
        return compress_tome(model, spec.r, prop_attn=True)  # ToMe's own setting, whatever prop_attn says

    def graph(self, base, reference, spec):
        from ..graph.tome_export import export_tome  # onnx-graphsurgeon: only where graphs are built
        return export_tome(reference)

    def settings(self, spec, reference):
        # r as used: a block merges fewer where too few tokens are left (ToMeViT warns once); r_requested as asked
        return {"r": list(reference.block_r), "r_requested": spec.r, "prop_attn": True,
                "block_tokens": list(reference.block_tokens)}

    def describe(self, settings):
        return f", r {settings.get('r_requested')} (ToMe, proportional attention; merges per block {settings.get('r')})"
