"""mode inter: patches that match the same visual word merge into one token (VWT's inter-image tokenizer);
with grouping local, only 4-connected patches of a word merge (after ImagePiece's locality)."""

from __future__ import annotations

from ..vwt import defaults
from ..vwt.inter import GROUPINGS
from ..vwt.model import CompressedViT
from .intra import SPACE
from .options import Option
from .registry import Method, register

THRESHOLD = Option("threshold", defaults.THRESHOLD, "inter, hybrid: largest cosine distance at which a patch matches a word",
                   bounds=(0.0, 2.0), why="cosine distance lies in [0, 2]")
GROUPING = Option("grouping", defaults.GROUPING, "inter, hybrid: global merges every patch matching a word; local only touching ones",
                  kind=str, choices=GROUPINGS)


@register
class Inter(Method):
    name, variant = "inter", "vwt"
    summary = "merge patches matching the same visual word"
    options = (THRESHOLD, GROUPING, SPACE)
    sweep_keys = ("threshold", "grouping")
    sweep_group = "vwt"
    search_ladder = tuple({"threshold": t} for t in (0.01, 0.02, 0.05, 0.1, 0.2))
    needs_vocabulary = True
    stages = True
    groups_patches = True

    def build(self, model, spec, vocab=None):
        return CompressedViT(model, "inter", vocab=vocab, threshold=spec.threshold, space=spec.space,
                             prop_attn=spec.prop_attn, grouping=spec.grouping).eval()

    def graph(self, base, reference, spec):
        from ..graph.surgery import inter_graph  # onnx-graphsurgeon: only where graphs are built
        return inter_graph(base, reference.unit_words.cpu().numpy(), spec.threshold, space=reference.space,
                           grid_w=reference.grid_w, prop_attn=spec.prop_attn, pooling=reference.model.global_pool)

    def settings(self, spec, reference):
        return {"threshold": spec.threshold, "space": reference.space, "grouping": spec.grouping}

    def describe(self, settings):
        return f", threshold {settings['threshold']}, {settings.get('vocab_size')} words"

    def label(self, params):
        return f"vwt {params['grouping']} t={params['threshold']:g}"
