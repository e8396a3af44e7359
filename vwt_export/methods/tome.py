"""mode tome: Token Merging (Bolya et al., ICLR 2023), r merges in every block with proportional attention; a
comparator, exported in standard ops with static shapes."""

from __future__ import annotations

from ..tome import compress_tome
from .options import Option
from .registry import Method, register

R = Option("r", 8, "tome: merges per block", kind=int, bounds=(0, None), why="give the merges per block, >= 0")


@register
class ToMe(Method):
    name = variant = "tome"
    summary = "ToMe's r merges in every block (a comparator)"
    options = (R,)
    sweep_keys = ("r",)
    precisions = ("fp32",)  # its float16 graph is untested

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
