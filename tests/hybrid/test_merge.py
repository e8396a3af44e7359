"""The hybrid's merge step (vwt_export.hybrid.merge) on hand-made padded batches."""

from fractions import Fraction

import pytest
import torch

from vwt_export.errors import VWTError
from vwt_export.hybrid.merge import (Matching, decision_margin, merge_tokens, output_slots, parse_rule, parse_rules,
                                     removed, removed_per_image, schedule, tile_offsets)

RULES = [0, 1, 3, 8, 16, Fraction(1, 10), Fraction(1, 4), Fraction(1, 2)]


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("num_prefix", [0, 1, 3])
def test_removed_keeps_the_batch_layout_possible(rule, num_prefix):
    """What the padded layout needs of `removed`, for every pair of lengths L <= T: the shorter image keeps no
    more tokens than the batch (L - removed(L) <= T - removed(T)) and has pads enough for the slots the batch
    loses beyond its own merges (removed(T) - removed(L) <= T - L)."""
    lengths = range(num_prefix, num_prefix + 70)
    for t in lengths:
        assert 0 <= removed(t, num_prefix, rule) <= (t - num_prefix) // 2
        for length in range(num_prefix, t + 1):
            assert length - removed(length, num_prefix, rule) <= t - removed(t, num_prefix, rule)
            assert removed(t, num_prefix, rule) - removed(length, num_prefix, rule) <= t - length
    per_image = removed_per_image(torch.tensor(list(lengths)), num_prefix, rule)
    assert per_image.tolist() == [removed(t, num_prefix, rule) for t in lengths]


def test_rules_and_schedules():
    assert parse_rule(8) == 8 and parse_rule(0.25) == Fraction(1, 4) and parse_rule(0.1) == Fraction(1, 10)
    assert parse_rules(4, 3) == [4, 4, 4] and parse_rules([4, 0.5, 0], 3) == [4, Fraction(1, 2), 0]
    assert removed(197, 1, Fraction(1, 10)) == 19 and removed(197, 1, 8) == 8 and removed(5, 1, 8) == 2
    assert schedule(20, 1, [8, 8, 8, 8]) == [20, 12, 7, 4]
    for bad in (-1, 0.6, True, "8", None, 1.0):
        with pytest.raises(VWTError, match="r="):
            parse_rule(bad)
    with pytest.raises(VWTError, match="blocks"):
        parse_rules([1, 2], 3)


def test_output_layout():
    """Image 0: prefix 1, real tokens at 1..6, pads at 7..9; A = even positions, B = odd. Merging A tokens 2 and
    6 (A indices 1 and 3) leaves [prefix 0][unmerged A: 4][B: 1, 3, 5][pads 7, 8, 9] and merged A tokens off
    the end. Image 1 (no pads, A index 2 merged) keeps the same rule."""
    sizes = torch.tensor([[1, 1, 1, 1, 1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]], dtype=torch.float32)
    merged = torch.tensor([[False, True, False, True, False], [False, False, True, False, False]])
    slots = output_slots(sizes, merged, num_prefix=1)
    t = sizes.shape[1]
    assert slots[0].tolist() == [0, 2, t, 3, 1, 4, t, 5, 6, 7]
    assert slots[1].tolist() == [0, 4, 1, 5, t, 6, 2, 7, 3, 8]
    # an image that merges nothing keeps its order (as alone, where the step is skipped), pads included
    still = output_slots(sizes, torch.zeros_like(merged), num_prefix=1)
    assert still.tolist() == [list(range(t))] * 2


def test_merge_tokens_is_per_image_and_pads_stay_out():
    """Two images in one padded batch: each output row is the size-weighted merge of its own tokens only, in
    [prefix][unmerged A][B][pads] order; pads come out as zeros of size 0, whatever they held."""
    d = 3
    x = torch.arange(2 * 8 * d, dtype=torch.float32).reshape(2, 8, d)
    sizes = torch.tensor([[1, 2, 1, 3, 1, 0, 0, 0], [1, 1, 2, 1, 1, 1, 1, 4]], dtype=torch.float32)
    x[0, 5:] = 1e6  # pads hold garbage
    # image 0: A index 1 (position 2) merges into B index 1 (position 3); image 1: A indices 1, 2 into B 2, 2
    m = Matching(torch.tensor([[False, True, False, False], [False, True, True, False]]),
                 torch.tensor([[0, 1, 0, 0], [0, 2, 2, 3]]))
    t_out = 8 - 2
    out, out_sizes = merge_tokens(x, sizes, m, num_prefix=1, t_out=t_out)
    # image 0: [0][4][1, 3+2][pad, pad]
    merged_0 = (x[0, 3] * 3 + x[0, 2] * 1) / 4
    expected_0 = torch.stack([x[0, 0], x[0, 4], x[0, 1], merged_0, torch.zeros(d), torch.zeros(d)])
    assert torch.allclose(out[0], expected_0)
    assert out_sizes[0].tolist() == [1, 1, 2, 4, 0, 0]
    # image 1: [0][6][1, 3, 5+2+4, 7]
    merged_1 = (x[1, 5] * 1 + x[1, 2] * 2 + x[1, 4] * 1) / 4
    expected_1 = torch.stack([x[1, 0], x[1, 6], x[1, 1], x[1, 3], merged_1, x[1, 7]])
    assert torch.allclose(out[1], expected_1)
    assert out_sizes[1].tolist() == [1, 1, 1, 1, 4, 4]


def test_decision_margin_sees_ties_and_ignores_pads():
    """A merged A token with two equally good B partners is a tie (margin 0); the same token facing one of them
    only through a pad is no tie."""
    metric = torch.tensor([[[0.0, 1.0], [1.0, 0.0], [1.0, 0.1], [1.0, 0.0], [0.0, 1.0]]])  # P = 0
    sizes = torch.ones(1, 5)
    one = torch.tensor([1])
    assert float(decision_margin(metric, sizes, one, 0)[0]) == 0.0  # A[1] (pos 2) ties between pos 1 and 3
    padded = sizes.clone()
    padded[0, 3:] = 0
    assert float(decision_margin(metric, padded, one, 0)[0]) > 0.1
    assert float(decision_margin(metric, sizes, torch.tensor([0]), 0)[0]) == float("inf")


def test_tile_offsets_keep_groups_inside_tiles():
    """A 6 x 5 grid (30 patches), tiles of 2: every patch's tile (row // 2, col // 2) gets its own offset, a
    multiple of V + N above any key, so equal keys in different tiles can never be equal after the offset."""
    v, n, grid_w = 7, 30, 5
    offsets = tile_offsets(n, grid_w, 2, v)
    tiles = [(i // grid_w // 2, i % grid_w // 2) for i in range(n)]
    assert (offsets % (v + n) == 0).all()
    for i in range(n):
        for j in range(n):
            assert (offsets[i] == offsets[j]) == (tiles[i] == tiles[j])
    keys = torch.randint(0, v + n, (n,))
    assert set(((keys + offsets) // (v + n)).tolist()) == set((offsets // (v + n)).tolist())
    assert not tile_offsets(n, grid_w, 0, v).any()
