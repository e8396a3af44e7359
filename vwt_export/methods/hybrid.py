"""mode hybrid: VWT's local grouping before the first block, then ToMe's bipartite merging inside every block on
each image's own, already shortened sequence (vwt_export.hybrid: pads never merge, a batch equals its images run
one by one). It takes inter's options and ToMe's r, the same Option objects, with defaults of its own: grouping
removes the flat regions cheaply, the blocks then merge what is left, per image."""

from __future__ import annotations

from types import MappingProxyType

from ..hybrid.model import DEFAULTS, check_tile
from .inter import Inter
from .options import Option
from .registry import Method, register
from .tome import R


def parse_tile(value: int | str) -> int:
    """--tile's value (text from the command line or --sweep, else a number) checked as the model checks it."""
    if isinstance(value, str):
        try:
            value = int(value)
        except ValueError:
            pass  # check_tile names the text
    return check_tile(value)


# why: a group then stands for nearby patches only; on the real data it kept more quality at every threshold
# (hybrid/model.py DEFAULTS)
TILE = Option("tile", DEFAULTS["tile"], "hybrid: no group spans more than a tile x tile square of patches (0: unbounded)",
              kind=int, parser=parse_tile)


@register
class Hybrid(Method):
    name = variant = "hybrid"
    summary = "VWT local grouping, then ToMe merging in every block"
    options = (*Inter.options, R, TILE)
    defaults = MappingProxyType({k: DEFAULTS[k] for k in ("threshold", "r")})  # why: hybrid/model.py
    sweep_keys = ("threshold", "r", "tile")
    # least to most compression (tile 2), around the real-data front (README, "Quality against speed on real data")
    search_ladder = tuple({"threshold": t, "r": r} for t, r in ((0.01, 0.05), (0.015, 0.055), (0.03, 0.05), (0.05, 0.05),
                                                                (0.1, 0.05), (0.2, 0.08)))
    needs_vocabulary = True
    precisions = ("fp32",)  # its float16 graph is not built (export_hybrid refuses it)
    stages = True  # cut at TokenMerge like inter's graph: tokenize + trunk
    groups_patches = True

    def build(self, model, spec, vocab=None):
        from ..hybrid import compress_hybrid

        return compress_hybrid(model, vocab, threshold=spec.threshold, r=spec.r, space=spec.space,
                               grouping=spec.grouping, prop_attn=spec.prop_attn, tile=spec.tile)

    def graph(self, base, reference, spec):
        from ..graph.hybrid_export import export_hybrid  # torch.onnx + onnx-graphsurgeon: only where graphs are built

        return export_hybrid(reference, baseline=base)  # the run verifies every graph it writes

    def settings(self, spec, reference):
        return {"threshold": spec.threshold, "space": reference.space, "grouping": spec.grouping, "r": spec.r,
                "tile": spec.tile}

    def describe(self, settings):
        return (f", threshold {settings['threshold']} ({settings['grouping']}), {settings.get('vocab_size')} words, "
                f"r {settings['r']} in every block" + (f", groups within {settings['tile']}x{settings['tile']} squares"
                                                  if settings.get("tile") else ""))

    def label(self, params):
        tile = params.get("tile", DEFAULTS["tile"])  # named where it is not the default, as other options are not
        tile = "" if tile == DEFAULTS["tile"] else f" tile={tile}"
        return f"hybrid t={params['threshold']:g} r={params['r']:g}{tile}"
