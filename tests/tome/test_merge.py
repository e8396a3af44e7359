"""ToMe's merge step (vwt_export.tome.merge) against the plain reference (tests/reference_tome.py)."""

import pytest
import torch

from vwt_export.errors import VWTError
from vwt_export.tome.merge import bipartite_matching, clamp_r, merge_tokens, parse_r, token_schedule

from .. import reference_tome as ref


def as_groups(m, image):
    """Our Matching for one image as the reference's {b position: sorted a positions}."""
    groups = {}
    for a, b in zip(m.sources[image].tolist(), m.destinations[image].tolist()):
        groups.setdefault(2 * b + 1, []).append(2 * a)
    return {b: sorted(a) for b, a in groups.items()}


def tied_metric(batch, tokens, channels=3, seed=0):
    """Vectors +-s*e_k (s in 1, 2, 4): they normalise exactly to +-e_k, so every cosine is exactly -1, 0 or 1 and
    most candidates tie; tie-breaking must be exactly the documented one."""
    g = torch.Generator().manual_seed(seed)
    axis = torch.randint(0, channels, (batch, tokens), generator=g)
    sign = torch.randint(0, 2, (batch, tokens), generator=g) * 2 - 1
    scale = 2.0 ** torch.randint(0, 3, (batch, tokens), generator=g)
    return torch.nn.functional.one_hot(axis, channels).float() * (sign * scale)[..., None]


def test_token_schedule_follows_n_minus_r_per_block_then_clamps():
    # 16 patches + class token, r=4: 17, 13, 9, 5 tokens enter the blocks; the last merge is clamped to
    # (5 - 1) // 2 = 2, so P + 1 tokens at least remain
    assert token_schedule(17, 1, [4] * 4) == ([17, 13, 9, 5], [4, 4, 4, 2])
    for tokens, p, r, depth in [(197, 1, 8, 12), (198, 2, 13, 6), (201, 5, 16, 6), (196, 0, 16, 6)]:
        assert token_schedule(tokens, p, [r] * depth) == ([tokens - r * i for i in range(depth)], [r] * depth)
    # a large r halves the non-prefix tokens until P + 1 remain
    assert token_schedule(17, 1, [100] * 5)[0] == [17, 9, 5, 3, 2]
    assert clamp_r(5, 3, 2) == 0 and clamp_r(5, 4, 2) == 1


@pytest.mark.parametrize("num_prefix", [0, 1, 2, 3])
@pytest.mark.parametrize("tokens", [7, 10, 13])
def test_matching_equals_reference_under_exact_ties(tokens, num_prefix):
    metric = tied_metric(4, tokens, seed=tokens * 10 + num_prefix)
    for r in range(1, clamp_r(tokens, tokens, num_prefix) + 1):
        m = bipartite_matching(metric, r, num_prefix)
        for i in range(metric.shape[0]):
            groups, _ = ref.match(list(metric[i]), r, num_prefix)
            assert as_groups(m, i) == {b: sorted(a) for b, a in groups.items()}, (r, i)
            merged = set(m.sources[i].tolist())
            assert m.unmerged[i].tolist() == [a for a in range((tokens + 1) // 2) if a not in merged]


@pytest.mark.parametrize("num_prefix", [1, 2, 3, 5])
def test_prefix_tokens_never_merge_even_when_they_match_best(num_prefix):
    # every token identical: every pair scores 1, and without protection the first A rows (the prefix tokens)
    # would win every tie
    tokens = 15
    metric = torch.ones(2, tokens, 4)
    r = clamp_r(tokens, tokens, num_prefix)
    m = bipartite_matching(metric, r, num_prefix)
    assert (2 * m.sources >= num_prefix).all() and (2 * m.destinations + 1 >= num_prefix).all()
    x = torch.randn(2, tokens, 6)
    out, size = merge_tokens(x, torch.ones(2, tokens, 1), m, num_prefix)
    assert torch.equal(out[:, :num_prefix], x[:, :num_prefix])
    assert torch.equal(size[:, :num_prefix], torch.ones(2, num_prefix, 1))


@pytest.mark.parametrize("num_prefix", [0, 1, 2, 3])
def test_merge_equals_reference_and_conserves_mass(num_prefix):
    g = torch.Generator().manual_seed(num_prefix)
    b, tokens, c, r = 3, 12, 5, 4
    x = torch.randn(b, tokens, c, generator=g)
    size = torch.randint(1, 5, (b, tokens, 1), generator=g).float()
    size[:, :num_prefix] = 1
    m = bipartite_matching(torch.randn(b, tokens, 8, generator=g), r, num_prefix)
    out, out_size = merge_tokens(x, size, m, num_prefix)
    assert out.shape == (b, tokens - r, c) and out_size.shape == (b, tokens - r, 1)
    for i in range(b):
        rows, sizes = ref.merge(list(x[i]), size[i, :, 0].tolist(), as_groups(m, i), num_prefix)
        torch.testing.assert_close(out[i], torch.stack(rows))
        assert out_size[i, :, 0].tolist() == sizes
    # size-weighted means: the total mass sum(size * x) and the total size are conserved
    torch.testing.assert_close((out * out_size).sum(1), (x * size).sum(1))
    assert torch.equal(out_size.sum(1), size.sum(1))


@pytest.mark.parametrize("bad", [-1, True, 1.5, [1, 2], "4"])
def test_bad_r_is_one_clear_error(bad):
    with pytest.raises(VWTError):
        parse_r(bad, 3)


def test_r_per_block():
    assert parse_r([1, 0, 2], 3) == [1, 0, 2] and parse_r(2, 3) == [2, 2, 2]


def test_decision_margin_is_zero_on_ties_and_matches_reference():
    from vwt_export.tome.merge import decision_margin

    tied = tied_metric(4, 11, seed=5)
    random = torch.randn(4, 11, 6, generator=torch.Generator().manual_seed(1))
    for metric in (tied, random):
        for p, r in [(0, 1), (1, 3), (2, 4), (3, 2)]:
            ours = decision_margin(metric, r, p)
            for i in range(len(metric)):
                assert float(ours[i]) == pytest.approx(ref.match(list(metric[i]), r, p)[1], abs=1e-6)
    assert (decision_margin(tied, 3, 1) == 0).sum() >= 2 and (decision_margin(random, 3, 1) > 1e-3).all()
