import numpy as np
import pytest
import torch

import vwt_export as vx
from vwt_export.vwt.inter import (
    NEAR_TIE_EPS, cosine_distance, cosine_threshold, dense_relabel, match_keys, near_ties, normalized_words,
    similarity, word_labels,
)

from .. import reference_tmlr2025 as ref


def test_dense_relabel_hand_computed():
    keys = torch.tensor([[7, 3, 7, 100, 3, 101], [5, 5, 5, 5, 5, 5]])
    assert dense_relabel(keys).tolist() == [[1, 0, 1, 2, 0, 3], [0, 0, 0, 0, 0, 0]]


def test_dense_relabel_takes_any_integers():
    big = 2**62
    keys = torch.tensor([[big, -big, 0, -1, big, 2**24 + 1, 2**24]])  # beyond float32's exact integers too
    assert dense_relabel(keys).tolist() == [[5, 0, 2, 1, 5, 4, 3]]


def test_match_keys_are_word_index_or_num_words_plus_patch_index():
    words = torch.eye(3)  # V=3 words along the axes
    f = torch.tensor([[[0.0, 0, 1], [1, 1, 0], [1, 0, 0], [0, 0, 2], [0, -1, 1]]])
    # patch0 -> word 2, patch1 unmatched (45 deg), patch2 -> word 0, patch3 -> word 2, patch4 unmatched
    assert match_keys(f, normalized_words(words), 0.1).tolist() == [[2, 4, 0, 2, 7]]
    # labels: matched groups by word, then unmatched patches in raster order
    assert word_labels(f, normalized_words(words), threshold=0.1).tolist() == [[1, 2, 0, 1, 3]]


def test_argmax_ties_take_the_lowest_word_index():
    words = normalized_words(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]))
    f = torch.tensor([[[2.0, 0.0], [0.0, 3.0]]])
    assert match_keys(f, words, 0.5).tolist() == [[0, 1]]


def test_unmatched_keys_are_offset_by_vocabulary_size_not_feature_width():
    # F=2 < V=4. The reference main branch offsets unmatched keys by F, so the first unmatched patch would get
    # key 2 and collide with word 2; tmlr2025 offsets by V and keeps them apart.
    words = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    f = torch.tensor([[[-1.0, 0.0], [1.0, 1.0]]])  # patch0 matches word 2, patch1 is 45 deg from everything
    assert match_keys(f, normalized_words(words), 0.1).tolist() == [[2, 5]]
    assert word_labels(f, normalized_words(words), 0.1).tolist() == [[0, 1]]


def test_threshold_is_inclusive_and_distance_is_cosine():
    words = normalized_words(torch.tensor([[1.0, 0.0]]))
    f = torch.tensor([[[1.0, 1.0], [3.0, 0.0]]])
    d = cosine_distance(f, words)
    torch.testing.assert_close(d[0, :, 0], torch.tensor([1 - 2**-0.5, 0.0]))
    torch.testing.assert_close(similarity(f, words), 1 - d)
    # at exactly the distance of patch 0 both patches are matched and merge into one group
    assert word_labels(f, words, float(d[0, 0, 0])).tolist() == [[0, 0]]
    assert word_labels(f, words, float(d[0, 0, 0]) - 1e-3).tolist() == [[1, 0]]


@pytest.mark.parametrize("threshold", [0.0, 0.1, 0.3, 1 / 3, 0.5, 0.7, 1.0, 1.5, 2.0, 1e-9])
def test_cosine_threshold_is_exactly_the_distance_test(threshold):
    """c >= c* must agree with float32 (1 - c) <= float32(threshold) for every float32 c; checked on the 2000
    float32 values around c* and on a spread over [-1, 1]."""
    c_star = np.float32(cosine_threshold(threshold))
    around = [c_star]
    lo = hi = c_star
    for _ in range(1000):
        lo, hi = np.nextafter(lo, np.float32(-2)), np.nextafter(hi, np.float32(2))
        around += [lo, hi]
    c = np.concatenate([np.array(around, np.float32), np.linspace(-1, 1, 20001, dtype=np.float32)])
    np.testing.assert_array_equal(c >= c_star, (np.float32(1) - c) <= np.float32(threshold))


def test_match_keys_agree_with_the_reference_distance_test_at_the_threshold():
    """Features whose distance to the word is exactly the threshold, and one float32 step either side."""
    g = torch.Generator().manual_seed(0)
    words = normalized_words(torch.randn(1, 16, generator=g))
    f = torch.randn(1, 64, 16, generator=g)
    d = cosine_distance(f, words)[0, :, 0]
    for thr in d.tolist():
        ref_matched = ref.labels(f, words, thr)  # the tmlr2025 reference: matched when 1 - cos <= thr
        assert torch.equal(word_labels(f, words, thr), ref_matched)


def test_near_ties_flag_close_words_and_the_threshold():
    words = normalized_words(torch.tensor([[1.0, 0.0, 0.0], [1.0, 1e-6, 0.0], [0.0, 0.0, 1.0]]))
    f = torch.tensor([[[1.0, 0.0, 0.0],       # words 0 and 1 are within 1e-12: a near tie
                       [0.0, 0.0, 1.0],       # word 2 alone: clear
                       [0.0, 1.0, 0.0]]])     # nothing near, far from the threshold: clear
    assert near_ties(f, words, 0.1).tolist() == [[True, False, False]]
    # a patch whose best cosine sits on the threshold
    on_threshold = float(1 - similarity(torch.tensor([[[0.0, 1.0, 1.0]]]), words).max())
    assert near_ties(torch.tensor([[[0.0, 1.0, 1.0]]]), words, on_threshold).tolist() == [[True]]
    assert near_ties(torch.tensor([[[0.0, 1.0, 1.0]]]), words, on_threshold + 10 * NEAR_TIE_EPS).tolist() == [[False]]
    # a single-word vocabulary has no word ties
    assert near_ties(f, words[2:], 0.1).tolist() == [[False, False, False]]


def test_local_grouping_does_not_connect_across_the_row_wrap():
    # grid 3 wide:  1 0 7 / 7 0 1 : patch 2 and 3 are neighbours in raster order, not on the grid
    keys = torch.tensor([[1, 0, 7, 7, 0, 1]])
    assert dense_relabel(keys, grid_w=3).tolist() == [[1, 0, 3, 4, 0, 2]]
    assert dense_relabel(keys).tolist() == [[1, 0, 2, 2, 0, 1]]


def test_local_grouping_orders_components_by_key_then_first_patch():
    # grid 4 wide: 5 5 2 5 / 2 5 5 5 : all the 5s touch; the 2s are two components
    keys = torch.tensor([[5, 5, 2, 5, 2, 5, 5, 5]])
    assert dense_relabel(keys, grid_w=4).tolist() == [[2, 2, 0, 2, 1, 2, 2, 2]]


@pytest.mark.parametrize("seed", range(6))
def test_local_grouping_matches_a_flood_fill_on_random_grids(seed):
    """Random grids (1 to 9 rows and columns, a single row or column included) with 1 to 4 distinct keys, so
    components are large, snake-shaped and touch every border."""
    g = torch.Generator().manual_seed(seed)
    for _ in range(40):
        h, w = (int(v) for v in torch.randint(1, 10, (2,), generator=g))
        words = int(torch.randint(1, 5, (1,), generator=g))
        b = int(torch.randint(1, 4, (1,), generator=g))
        keys = torch.randint(0, words, (b, h * w), generator=g) * 1000 - 7
        global_labels = dense_relabel(keys)
        assert torch.equal(dense_relabel(keys, grid_w=w), ref.local_labels(global_labels, w)), (h, w, keys)


def test_local_grouping_with_every_patch_alike_or_distinct():
    same = torch.zeros(2, 12, dtype=torch.int64)
    assert dense_relabel(same, grid_w=4).tolist() == [[0] * 12] * 2
    distinct = torch.arange(12).flip(0).unsqueeze(0)
    assert torch.equal(dense_relabel(distinct, grid_w=4), dense_relabel(distinct))


def test_a_grid_width_that_does_not_divide_the_patches_is_a_clear_error():
    with pytest.raises(vx.VWTError, match="grid_w=5 does not divide the 12 patches"):
        dense_relabel(torch.zeros(1, 12, dtype=torch.int64), grid_w=5)
