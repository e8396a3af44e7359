"""Token Merging (ToMe, Bolya et al., ICLR 2023) as a compression mode: merge r tokens in every block.

    tmodel = compress_tome(model, r=8)      # model from vwt_export.load_model
    logits = tmodel(pixels); tmodel.block_tokens, tmodel.tokens_in
    proto = vwt_export.graph.tome_export.export_tome(tmodel)   # standard ONNX ops, static shapes
"""

from .merge import (Matching, bipartite_matching, clamp_r, decision_margin, merge_tokens, parse_r, proportional_bias,
                    token_schedule)
from .model import ToMeViT, compress_tome

__all__ = ["Matching", "ToMeViT", "bipartite_matching", "clamp_r", "compress_tome", "decision_margin", "merge_tokens", "parse_r",
           "proportional_bias", "token_schedule"]
