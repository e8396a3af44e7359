"""Near-duplicate words: learning merges them, loading warns once with their count."""

import logging

import torch

import vwt_export as vx
from vwt_export.vwt.vocab import DUPLICATE_DISTANCE, merge_near_duplicates, near_duplicate_pairs


def test_merge_keeps_distinct_words_and_merges_every_chain_of_near_duplicates():
    g = torch.Generator().manual_seed(0)
    base = torch.randn(5, 48, generator=g)
    words = torch.cat([base, base[:2] * 3.0, base[2:3] + 1e-6 * torch.randn(1, 48, generator=g)])  # 3 duplicates
    counts = torch.tensor([1.0, 1, 1, 1, 1, 3, 3, 1])
    merged, n = merge_near_duplicates(words, counts)
    assert n == 3 and len(merged) == 5 and near_duplicate_pairs(merged) == 0
    # word 0 absorbed a copy 3x as long with 3x the count: the count-weighted mean
    assert torch.allclose(merged[0], (base[0] * 1 + base[0] * 3.0 * 3) / 4)
    assert torch.equal(merged[3:], base[3:])  # distinct words untouched, in their order


def test_pairs_are_counted_at_the_documented_distance():
    a = torch.randn(48, generator=torch.Generator().manual_seed(1))
    u = torch.randn(48, generator=torch.Generator().manual_seed(2))
    u -= (u @ a) / (a @ a) * a
    at = lambda d: a + u / u.norm() * a.norm() * (2 * d) ** 0.5  # noqa: E731  cosine distance ~d from a
    assert near_duplicate_pairs(torch.stack([a, at(DUPLICATE_DISTANCE / 2)])) == 1
    assert near_duplicate_pairs(torch.stack([a, at(DUPLICATE_DISTANCE * 2)])) == 0


def test_loading_a_vocabulary_with_duplicates_warns_once_with_the_count(tmp_path, caplog):
    words = torch.randn(6, 3 * 16 * 16, generator=torch.Generator().manual_seed(3))
    torch.save(torch.cat([words, words[:2]]), tmp_path / "vocab.pt")
    with caplog.at_level(logging.WARNING, logger="vwt_export"):
        vocab = vx.Vocabulary.load(tmp_path / "vocab.pt")
    assert vocab.size == 8  # a loaded vocabulary is used as it is
    warnings = [r for r in caplog.records if "near-duplicates" in r.getMessage()]
    assert len(warnings) == 1 and "2 pairs of words" in warnings[0].getMessage()


def test_learning_never_returns_near_duplicate_words():
    """Flat patches of one hue at several brightnesses are far apart for k-means, one word for cosine matching."""
    model = vx.load_model("vit_tiny_patch16_224", weights="random", img_size=64, depth=1)
    levels = torch.linspace(0.2, 2.0, 16)
    flat = levels[:, None, None, None] * torch.ones(16, 3, 64, 64)
    vocab = vx.learn_vocabulary(model, [flat], size=8, progress=False)
    assert near_duplicate_pairs(vocab.words) == 0
    assert vocab.size == 1 and vocab.meta["source"]["near_duplicates_merged"] == 7
