"""mode hybrid: VWT's local grouping before the first block, then ToMe's bipartite merging inside every block on
each image's own, already shortened sequence (vwt_export.hybrid: pads never merge, a batch equals its images run
one by one). It takes inter's options and ToMe's r, the same Option objects, with defaults of its own: grouping
removes the flat regions cheaply, the blocks then merge what is left, per image."""

from __future__ import annotations

from types import MappingProxyType

from ..hybrid.model import DEFAULTS
from .inter import Inter
from .registry import Method, register
from .tome import R


@register
class Hybrid(Method):
    name = variant = "hybrid"
    summary = "VWT local grouping, then ToMe merging in every block"
    options = (*Inter.options, R)
    defaults = MappingProxyType({k: DEFAULTS[k] for k in ("threshold", "r")})  # why: hybrid/model.py
    sweep_keys = ("threshold", "r")
    # least to most compression, along the real-data front (README, "Quality against speed on real data")
    search_ladder = ({"threshold": 0.01, "r": 0.03}, {"threshold": 0.01, "r": 0.06}, {"threshold": 0.02, "r": 0.06},
                     {"threshold": 0.02, "r": 0.08}, {"threshold": 0.03, "r": 0.1})
    needs_vocabulary = True
    precisions = ("fp32",)  # its float16 graph is not built (export_hybrid refuses it)
    stages = True  # cut at TokenMerge like inter's graph: tokenize + trunk
    groups_patches = True

    def build(self, model, spec, vocab=None):
        from ..hybrid import compress_hybrid

        return compress_hybrid(model, vocab, threshold=spec.threshold, r=spec.r, space=spec.space,
                               grouping=spec.grouping, prop_attn=spec.prop_attn)

    def graph(self, base, reference, spec):
        from ..graph.hybrid_export import export_hybrid  # torch.onnx + onnx-graphsurgeon: only where graphs are built

        return export_hybrid(reference, baseline=base)  # the run verifies every graph it writes

    def settings(self, spec, reference):
        return {"threshold": spec.threshold, "space": reference.space, "grouping": spec.grouping, "r": spec.r}

    def describe(self, settings):
        return (f", threshold {settings['threshold']} ({settings['grouping']}), {settings.get('vocab_size')} words, "
                f"r {settings['r']} in every block")

    def label(self, params):
        return f"hybrid t={params['threshold']:g} r={params['r']:g}"
