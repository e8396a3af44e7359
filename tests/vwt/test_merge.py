import pytest
import torch

from vwt_export.vwt.merge import PAD_BIAS, attention_bias, pool_tokens, token_merge


def test_token_merge_hand_computed_with_padding():
    tokens = torch.tensor([[[9.0], [1], [2], [3], [4]], [[8.0], [10], [20], [30], [40]]])  # P=1, N=4
    labels = torch.tensor([[0, 1, 0, 1], [0, 0, 0, 0]])
    merged, sizes = token_merge(tokens, labels, num_prefix=1)
    assert merged.squeeze(-1).tolist() == [[9, 2, 3], [8, 25, 0]]
    assert sizes.tolist() == [[1, 2, 2], [1, 4, 0]]


def test_token_merge_takes_any_integer_keys():
    tokens = torch.tensor([[[9.0], [1], [2], [3], [4]]])  # P=1, N=4
    keys = torch.tensor([[2**40, -5, 2**40, 1000]])  # groups in ascending key order: -5, 1000, 2**40
    merged, sizes = token_merge(tokens, keys, num_prefix=1)
    assert merged.squeeze(-1).tolist() == [[9, 2, 4, 2]]
    assert sizes.tolist() == [[1, 1, 1, 2]]


def test_token_merge_local_grouping_splits_groups_into_components():
    # grid 2 wide, P=2:  7 7 / 3 7 / 7 3 : the three top-right 7s touch; the bottom-left 7 and the 3s do not
    tokens = torch.arange(8.0).reshape(1, 8, 1)
    keys = torch.tensor([[7, 7, 3, 7, 7, 3]])
    merged, sizes = token_merge(tokens, keys, num_prefix=2, grid_w=2)
    # order (key, first patch): (3, 2) (3, 5) (7, 0) (7, 4); the patch tokens are 2..7
    torch.testing.assert_close(merged.squeeze(-1), torch.tensor([[0, 1, 4, 7, (2 + 3 + 5) / 3, 6]]))
    assert sizes.tolist() == [[1, 1, 1, 1, 3, 1]]
    glob, gsizes = token_merge(tokens, keys, num_prefix=2)
    assert glob.squeeze(-1).tolist() == [[0, 1, 5.5, 4.0]] and gsizes.tolist() == [[1, 1, 2, 4]]


def test_token_merge_float16_keeps_dtype():
    tokens = torch.randn(2, 6, 4).half()
    merged, _ = token_merge(tokens, torch.tensor([[0, 0, 1, 2, 2], [0, 1, 2, 3, 4]]), 1)
    assert merged.dtype == torch.float16
    torch.testing.assert_close(merged[0, 1].float(), tokens[0, 1:3].float().mean(0), atol=1e-3, rtol=1e-3)


def test_attention_bias():
    sizes = torch.tensor([[1.0, 4.0, 0.0]])
    assert attention_bias(sizes)[0, 0, 0].tolist() == [0, 0, PAD_BIAS]
    b = attention_bias(sizes, prop_attn=True)[0, 0, 0]
    torch.testing.assert_close(b, torch.tensor([0.0, float(torch.log(torch.tensor(4.0))), PAD_BIAS]))
    half = attention_bias(sizes, dtype=torch.float16)
    assert torch.isfinite(half).all() and torch.exp(half.float()[0, 0, 0, 2]) == 0


def test_pooling_is_size_weighted_and_ignores_padding():
    x = torch.tensor([[[100.0], [1.0], [4.0], [-50.0]]])  # prefix, two merged tokens, a pad
    sizes = torch.tensor([[1.0, 3.0, 1.0, 0.0]])
    assert pool_tokens(x, sizes, "avg", 1).item() == (3 * 1 + 4) / 4
    assert pool_tokens(x, sizes, "max", 1).item() == 4.0
    assert pool_tokens(x, sizes, "token", 1).item() == 100.0
    assert pool_tokens(x, sizes, "avg", 1, include_prefix=True).item() == pytest.approx((100 + 3 * 1 + 4) / 5)
