import torch

from vwt_export.vwt.inter import cosine_distance, dense_relabel, normalized_words, word_labels


def test_dense_relabel_hand_computed():
    keys = torch.tensor([[7, 3, 7, 100, 3, 101], [5, 5, 5, 5, 5, 5]])
    assert dense_relabel(keys).tolist() == [[1, 0, 1, 2, 0, 3], [0, 0, 0, 0, 0, 0]]


def test_labels_order_matched_groups_by_word_then_unmatched_in_raster_order():
    words = torch.eye(3)  # V=3 words along the axes
    f = torch.tensor([[[0.0, 0, 1], [1, 1, 0], [1, 0, 0], [0, 0, 2], [0, -1, 1]]])
    # patch0 -> word 2, patch1 unmatched (45 deg), patch2 -> word 0, patch3 -> word 2, patch4 unmatched
    lab = word_labels(f, normalized_words(words), threshold=0.1)
    assert lab.tolist() == [[1, 2, 0, 1, 3]]


def test_unmatched_keys_are_offset_by_vocabulary_size_not_feature_width():
    # F=2 < V=4. The reference main branch offsets unmatched keys by F, so the first unmatched patch would get
    # key 2 and collide with word 2; tmlr2025 offsets by V and keeps them apart.
    words = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    f = torch.tensor([[[-1.0, 0.0], [1.0, 1.0]]])  # patch0 matches word 2, patch1 is 45 deg from everything
    assert word_labels(f, normalized_words(words), 0.1).tolist() == [[0, 1]]


def test_threshold_is_inclusive_and_distance_is_cosine():
    words = normalized_words(torch.tensor([[1.0, 0.0]]))
    f = torch.tensor([[[1.0, 1.0], [3.0, 0.0]]])
    d = cosine_distance(f, words)
    torch.testing.assert_close(d[0, :, 0], torch.tensor([1 - 2**-0.5, 0.0]))
    # at exactly the distance of patch 0 both patches are matched and merge into one group
    assert word_labels(f, words, float(d[0, 0, 0])).tolist() == [[0, 0]]
    assert word_labels(f, words, float(d[0, 0, 0]) - 1e-3).tolist() == [[1, 0]]
