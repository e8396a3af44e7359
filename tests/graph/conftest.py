import numpy as np
import torch
from onnx import TensorProto

from vwt_export.graph import ops
from vwt_export.vwt.merge import token_merge


def merge_model(num_prefix=1, grid_w=0, token_type=TensorProto.FLOAT, portable=False):
    """vwt::TokenMerge alone: tokens [B,T,D], keys [B,N] -> merged, sizes, length."""
    return ops.single_op_model(ops.TOKEN_MERGE, portable=portable, token_type=token_type, num_prefix=num_prefix,
                               grid_w=grid_w)


def reference(tokens: np.ndarray, keys: np.ndarray, num_prefix: int, grid_w: int = 0):
    """The torch spec: (merged, sizes, length) as numpy, length = P + M = merged.shape[1]."""
    merged, sizes = token_merge(torch.from_numpy(tokens), torch.from_numpy(keys), num_prefix, grid_w)
    return merged.numpy(), sizes.numpy(), merged.shape[1]
