import pytest
import torch

from vwt_export import VWTError
from vwt_export.vwt.intra import keep_indices, resolve_keep, select_tokens, variance_scores


@pytest.mark.parametrize("keep,n,k", [(0.75, 196, 147), (1.0, 196, 196), (0.001, 196, 1), (5, 16, 5), (16, 16, 16)])
def test_resolve_keep(keep, n, k):
    assert resolve_keep(keep, n) == k


@pytest.mark.parametrize("keep", [0, 17, 0.0, 1.5, -0.2, True])
def test_resolve_keep_out_of_range(keep):
    with pytest.raises(VWTError):
        resolve_keep(keep, 16)


def test_keeps_highest_variance_in_raster_order():
    f = torch.tensor([[[0.0, 0, 0], [0, 5, 0], [1, 2, 3], [0, 0, 9]]])
    torch.testing.assert_close(variance_scores(f)[0], torch.tensor([0.0, 25 / 3, 1.0, 27.0]))  # unbiased
    idx = keep_indices(f, 2)
    assert idx.tolist() == [[1, 3]]
    tokens = torch.arange(5 * 2, dtype=torch.float32).reshape(1, 5, 2)  # 1 prefix + 4 patches
    assert select_tokens(tokens, idx, 1).tolist() == [[[0, 1], [4, 5], [8, 9]]]
