"""HybridViT (vwt_export.hybrid) against the independent per-image reference (tests/reference_hybrid.py), and a
batch against its images run one by one."""

from fractions import Fraction

import pytest
import torch

import vwt_export as vx
from vwt_export.errors import VWTError
from vwt_export.hybrid import compress_hybrid
from vwt_export.vwt import NEAR_TIE_EPS

from .. import reference_hybrid as ref
from .conftest import assert_close, rel_err

KINDS = ["cls", "distilled", "registers", "avg"]


@pytest.mark.parametrize("kind,r,prop_attn,tile", [(k, 3, True, 0) for k in KINDS]
                         + [("cls", 0.25, True, 0), ("avg", 0.5, True, 0), ("registers", [5, 2, 1], True, 0),
                            ("cls", 4, False, 0), ("avg", 4, False, 0), ("distilled", 3, True, 2), ("avg", 0.25, True, 4)])
def test_matches_reference(make_hybrid, kind, r, prop_attn, tile):
    hmodel, x = make_hybrid(kind, r=r, prop_attn=prop_attn, tile=tile)
    with torch.no_grad():
        logits = hmodel(x)
        final, sizes = hmodel.forward_features(x)
    rules = [v if isinstance(v, int) else Fraction(str(v)) for v in (r if isinstance(r, list) else [r] * 3)]
    expected = ref.hybrid_forward(hmodel.model, x, hmodel.vwt.vocab.words, hmodel.threshold, rules, prop_attn, tile=tile)
    # the test data decide every matching by a clear margin, so float noise cannot flip a decision
    assert expected["margin"] > 1e-5
    assert abs(float(hmodel.decision_margins(x).min()) - expected["margin"]) < 1e-5
    seen = hmodel.last_block_tokens
    assert seen.tolist() == expected["tokens"]
    assert len(set(seen[:, 0].tolist())) > 1, "the test data should give images of different lengths (padding)"
    assert (seen[:, -1] < seen[:, 0]).all() and (seen[:, 0] < hmodel.tokens_in).any(), "both stages should merge"
    for i, image_sizes in enumerate(expected["sizes"]):
        n = len(image_sizes[-1])
        assert sizes[i, :n].tolist() == image_sizes[-1] and not sizes[i, n:].any()
        assert rel_err(final[i, :n], expected["final"][i]) < 1e-4
    assert_close(logits, expected["logits"])
    assert logits.shape == hmodel.model(x).shape
    assert hmodel.last_token_counts.tolist() == pytest.approx(seen.float().mean(1).tolist())


@pytest.mark.parametrize("kind,tile", [("registers", 0), ("avg", 0), ("cls", 2)])  # tile 2: the default
def test_batch_equals_images_one_by_one_block_by_block(make_hybrid, kind, tile):
    """After every block, image b's real tokens are the first L_b positions, in the order of the image run alone,
    with the same sizes; everything after them is a pad of size 0. So the next block's A/B split is the image's
    own, which is what makes the whole batch equal the images one by one."""
    hmodel, x = make_hybrid(kind, r=4, seed=1, tile=tile)
    batch_trace, margins = [], []
    with torch.no_grad():
        batched = hmodel.forward_features(x, trace=batch_trace, margins=margins)
        lengths = hmodel.last_block_tokens.clone()
    clear = torch.stack(margins).min(0).values >= NEAR_TIE_EPS
    assert clear.all(), "near-ties would be counted and left out here; the test data should have none"
    assert len(set(lengths[:, 0].tolist())) > 1
    for i in range(len(x)):
        one_trace = []
        with torch.no_grad():
            alone = hmodel.forward_features(x[i:i + 1], trace=one_trace)
        assert hmodel.last_block_tokens[0].tolist() == lengths[i].tolist()
        for (bx, bs), (ox, os) in zip(batch_trace, one_trace):
            n = os.shape[1]
            assert torch.equal(bs[i, :n], os[0]) and (os[0] > 0).all()
            assert not bs[i, n:].any(), "only pads (size 0) may follow an image's real tokens"
            assert rel_err(bx[i, :n], ox[0]) < 1e-5
        assert rel_err(batched[0][i, :alone[0].shape[1]], alone[0][0]) < 1e-5


def test_pads_never_merge_with_5_and_60_tokens(hybrid_models):
    """A 128-px class-token model (64 patches) and hand-made keys: image 0 has 4 groups (5 tokens), image 1 has 59
    (60 tokens). Alone, image 0 merges 2 tokens, then 1, then none (ToMe's clamp); in the batch of length 60 the
    other slots it loses are pads. Batch, images alone and the independent reference agree block by block."""
    model = vx.load_model("vit_tiny_patch16_224", weights="random", img_size=128, depth=3, num_classes=10)
    x = torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(3))
    grid = torch.arange(64).reshape(8, 8)
    quadrants = (grid // 8 // 4) * 2 + (grid % 8) // 4
    keys = torch.stack([quadrants.reshape(-1), torch.where(torch.arange(64) < 6, 0, torch.arange(64))])
    vocab = vx.Vocabulary(torch.randn(4, 3 * 16 * 16), patch_size=16)
    hmodel = compress_hybrid(model, vocab, r=8, prop_attn=True, tile=0)
    trace = []
    with torch.no_grad():
        logits = hmodel(x, keys=keys)
        hmodel.forward_features(x, keys=keys, trace=trace)
    assert hmodel.last_block_tokens.tolist() == [[5, 3, 2], [60, 52, 44]]
    assert [t[1].shape[1] for t in trace] == [52, 44, 36]
    for _, sizes in trace:
        assert float(sizes[0].sum()) == float(sizes[1].sum()) == 1 + 64  # every patch is still in a real token
    assert (trace[0][1][0, 3:] == 0).all() and (trace[-1][1][0, 2:] == 0).all()
    expected = ref.hybrid_forward(model, x, None, 0.0, 8, keys=keys)
    assert expected["tokens"] == [[5, 3, 2], [60, 52, 44]] and expected["margin"] > 1e-5
    assert_close(logits, expected["logits"])
    for i in range(2):
        with torch.no_grad():
            assert_close(hmodel(x[i:i + 1], keys=keys[i:i + 1]), logits[i:i + 1], 1e-5)


@pytest.mark.parametrize("kind", ["cls", "avg"])
def test_pad_content_never_influences_a_real_token(make_hybrid, kind):
    hmodel, x = make_hybrid(kind, r=3)
    with torch.no_grad():
        tokens, sizes = hmodel.vwt.tokenize(x)
        assert (sizes == 0).any()
        clean = hmodel.forward_head(*hmodel.forward_tokens(tokens, sizes))
        noisy = tokens.masked_fill((sizes == 0)[..., None], 0) + 1e3 * torch.randn(tokens.shape) * (sizes == 0)[..., None]
        assert_close(hmodel.forward_head(*hmodel.forward_tokens(noisy, sizes)), clean, 1e-5)


@pytest.mark.parametrize("kind", ["registers", "avg"])
def test_r0_is_vwt_local_grouping(make_hybrid, hybrid_vocabs, kind):
    hmodel, x = make_hybrid(kind, r=0)
    vwt = vx.compress(hmodel.model, "inter", vocab=hybrid_vocabs[kind], threshold=hmodel.threshold, grouping="local",
                      prop_attn=True)
    with torch.no_grad():
        assert_close(hmodel(x), vwt(x), 1e-5)
    assert hmodel.last_block_tokens[:, 0].tolist() == vwt.last_token_counts.tolist()


def test_prop_attn_changes_the_result(make_hybrid):
    with_prop, x = make_hybrid("cls", r=3)
    without, _ = make_hybrid("cls", r=3, prop_attn=False)
    with torch.no_grad():
        assert rel_err(with_prop(x), without(x)) > 1e-4


def test_bad_options_are_one_clear_error(hybrid_models, hybrid_vocabs):
    model, vocab = hybrid_models["cls"], hybrid_vocabs["cls"]
    for options, message in [({"r": -1}, "non-negative"), ({"r": 0.75}, "fraction"), ({"r": [1, 2]}, "blocks"),
                             ({"grouping": "nearby"}, "grouping"), ({"tile": 1}, "tile"), ({"tile": 2.0}, "tile")]:
        with pytest.raises(VWTError, match=message):
            compress_hybrid(model, vocab, **options)
    with pytest.raises(VWTError, match="threshold=3.0 is out of range"):  # values are checked by the registry
        vx.compress(model, "hybrid", vocab=vocab, threshold=3.0)
    with pytest.raises(VWTError, match="vocabulary"):
        compress_hybrid(model, None)
    headless_tokens = vx.load_model("vit_tiny_patch16_224", weights="random", img_size=32, depth=1, num_classes=0,
                                    global_pool="")
    with pytest.raises(VWTError, match="global_pool"):
        compress_hybrid(headless_tokens, vocab)
