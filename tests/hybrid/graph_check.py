"""The hybrid graph against its torch model, as the tests check it (the run's own check is check/verify.py)."""

import numpy as np
import onnx
import torch

from vwt_export.errors import VWTError
from vwt_export.graph import ops
from vwt_export.vwt.inter import NEAR_TIE_EPS


def check_against_torch(proto: onnx.ModelProto, hmodel: torch.nn.Module, pixels: torch.Tensor, rtol: float = 1e-4,
                        eps: float = NEAR_TIE_EPS) -> dict:
    """Run the graph in ONNX Runtime and the torch model on the same pixels, in two parts (DESIGN, "Verification
    of discrete decisions"):

      1. the graph's keys ("vwt/keys") equal torch's except at key near-ties (vwt.inter.near_ties), counted;
      2. given the graph's keys, the images whose in-block merge decisions are clear (HybridViT.decision_margins
         >= eps) give the same logits within rtol (relative to the largest); the others are in-block near-ties,
         counted, never an error.

    Returns {"compared", "near_ties" (images with an in-block near-tie), "key_near_ties" (patches),
    "matches_differ" (patches), "max_rel_err"}; VWTError when a key differs away from a near-tie or a compared
    image differs by more than rtol."""
    from vwt_export.backends.onnxruntime import OrtRunner
    from vwt_export.vwt.inter import match_keys, near_ties

    logits, extras = OrtRunner(proto, extra_outputs={ops.KEYS_TENSOR: onnx.TensorProto.INT64}).infer_extras(
        pixels.float().cpu().numpy())
    keys = extras[ops.KEYS_TENSOR]
    with torch.no_grad():
        features = hmodel.features(pixels)
        ours = match_keys(features, hmodel.unit_words, hmodel.threshold).cpu().numpy()
        ties = near_ties(features, hmodel.unit_words, hmodel.threshold).cpu().numpy()
        graph_keys = torch.from_numpy(keys).to(pixels.device)
        expected = hmodel(pixels, keys=graph_keys).float().cpu().numpy()
        clear = (hmodel.decision_margins(pixels, graph_keys) >= eps).cpu().numpy()
    differ = keys != ours
    unexplained = differ & ~ties
    if unexplained.any():
        b, n = map(int, np.argwhere(unexplained)[0])
        raise VWTError(f"the hybrid graph's patch matches differ from torch away from any near-tie (image {b}, "
                       f"patch {n}: graph key {int(keys[b, n])}, torch key {int(ours[b, n])})")
    if logits.shape != expected.shape:
        raise VWTError(f"the hybrid graph returns {logits.shape}, torch {expected.shape}")
    result = {"compared": int(clear.sum()), "near_ties": int((~clear).sum()), "key_near_ties": int(ties.sum()),
              "matches_differ": int(differ.sum()), "max_rel_err": 0.0}
    if clear.any():
        a, e = logits[clear], expected[clear]
        result["max_rel_err"] = err = float(np.abs(a - e).max() / max(float(np.abs(e).max()), 1e-6))
        if not err <= rtol:
            raise VWTError(f"the hybrid graph differs from torch by {err:.2e} (relative), more than {rtol:.0e}")
    return result
