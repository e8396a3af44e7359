"""The hybrid method: VWT grouping before the first block, ToMe-style merging inside the blocks.

    hmodel = compress_hybrid(model, vocab, threshold=0.1, r=8)     # model from vwt_export.load_model
    logits = hmodel(pixels); hmodel.last_token_counts, hmodel.last_block_tokens
    proto = vwt_export.graph.hybrid_export.export_hybrid(hmodel)   # vwt::TokenMerge, vwt::BlockMerge + standard ops
"""

from .merge import (Matching, bipartite_matching, decision_margin, merge_step, merge_tokens, output_slots, parse_rule,
                    parse_rules, removed, removed_per_image, schedule)
from .model import DEFAULTS, HybridViT, compress_hybrid, hybrid_block

__all__ = ["DEFAULTS", "HybridViT", "Matching", "bipartite_matching", "compress_hybrid", "decision_margin",
           "hybrid_block", "merge_step", "merge_tokens", "output_slots", "parse_rule", "parse_rules", "removed", "removed_per_image",
           "schedule"]
