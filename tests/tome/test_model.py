"""ToMeViT (vwt_export.tome) against the plain model and the independent reference (tests/reference_tome.py)."""

import copy

import pytest
import torch

import vwt_export as vx
from vwt_export.errors import VWTError
from vwt_export.tome import compress_tome
from vwt_export.tome.merge import match_scores

from .. import reference_tome as ref

KINDS = ["cls", "distilled", "registers", "avg"]


def rel_err(actual, expected):
    return float((actual - expected).abs().max() / expected.abs().max().clamp(min=1e-6))


@pytest.mark.parametrize("kind", KINDS)
def test_r0_is_exactly_the_plain_model(tome_models, pixels_for, kind):
    model = tome_models[kind]
    x = pixels_for(model)
    tmodel = compress_tome(model, 0)
    with torch.no_grad():
        assert torch.equal(tmodel(x), model(x))
    assert tmodel.block_tokens == [tmodel.tokens_in] * len(model.blocks)


@pytest.mark.parametrize("kind,r,prop_attn", [(k, 3, True) for k in KINDS]
                         + [pytest.param(k, 8, True, marks=pytest.mark.slow) for k in KINDS]  # r=8: full tier
                         + [("cls", 3, False), ("avg", 3, False)])
def test_matches_reference(tome_models, pixels_for, kind, r, prop_attn):
    model = tome_models[kind]
    x = pixels_for(model)
    tmodel = compress_tome(model, r, prop_attn=prop_attn)
    with torch.no_grad():
        logits = tmodel(x)
        final, size = tmodel.forward_features(x)
    expected = ref.tome_forward(model, x, r, prop_attn)
    # the test data decide every matching by a clear margin, so float noise cannot flip a decision
    assert expected["margin"] > 1e-5
    margins = tmodel.decision_margins(x)
    assert abs(float(margins.min()) - expected["margin"]) < 1e-5  # the near-tie detector measures the same gaps
    assert all(t == tmodel.block_tokens for t in expected["tokens"])
    assert tmodel.block_tokens[-1] < tmodel.tokens_in
    assert torch.equal(size[..., 0], torch.tensor(expected["sizes"]))
    assert rel_err(final, torch.stack(expected["final"])) < 1e-4
    assert rel_err(logits, expected["logits"]) < 1e-4
    assert logits.shape == model(x).shape


def test_prop_attn_is_used(tome_models, pixels_for):
    model = tome_models["cls"]
    x = pixels_for(model)
    with torch.no_grad():
        with_prop, without = compress_tome(model, 4)(x), compress_tome(model, 4, prop_attn=False)(x)
    assert rel_err(with_prop, without) > 1e-4


@pytest.mark.parametrize("kind,r", [("cls", 3), ("registers", 4), ("avg", 8)])
def test_tokens_per_block(tome_models, pixels_for, kind, r):
    """Attention in block i sees P+N - r*i tokens and its MLP P+N - r*(i+1) (until r is clamped)."""
    model = tome_models[kind]
    tmodel = compress_tome(model, r)
    attn_seen, mlp_seen = [], []
    hooks = [h for blk in model.blocks for h in (
        blk.norm1.register_forward_hook(lambda m, i, o: attn_seen.append(o.shape[1])),
        blk.norm2.register_forward_hook(lambda m, i, o: mlp_seen.append(o.shape[1])))]
    try:
        with torch.no_grad():
            tmodel(pixels_for(model)[:2])
    finally:
        for h in hooks:
            h.remove()
    n, p = model.patch_embed.num_patches, model.num_prefix_tokens
    expected = [n + p]
    for _ in model.blocks:
        expected.append(expected[-1] - min(r, (expected[-1] - p) // 2))
    assert attn_seen == tmodel.block_tokens == expected[:-1]
    assert mlp_seen == expected[1:] and tmodel.tokens_out == expected[-1]
    if kind != "avg":
        assert expected[:-1] == [n + p - r * i for i in range(len(model.blocks))]
    assert tmodel.last_token_counts.tolist() == pytest.approx([sum(expected[:-1]) / len(model.blocks)] * 2)


def test_class_token_never_merges_even_when_it_is_the_best_match(tome_models, pixels_for):
    """A class token equal to the first patch token (seq position 1, set B) is the best-matching pair in block 0:
    unprotected, ToMe would merge it first. Its size must stay 1 and the output equal the reference's, which
    keeps prefix tokens out of the matching by construction."""
    model = copy.deepcopy(tome_models["cls"])
    x = pixels_for(model)[:1]
    with torch.no_grad():
        patch0 = model.patch_embed(x)[0, 0]
        model.cls_token.copy_((patch0 + model.pos_embed[0, 1] - model.pos_embed[0, 0]).view(1, 1, -1))
        tokens = model._pos_embed(model.patch_embed(x))
        attn = model.blocks[0].attn
        keys = attn.qkv(model.blocks[0].norm1(tokens))[..., model.embed_dim:2 * model.embed_dim]
        metric = keys.view(1, tokens.shape[1], attn.num_heads, attn.head_dim).mean(2)  # averaged over heads
        unprotected = match_scores(metric, 0)[0].max(-1).values
        assert int(unprotected.argmax()) == 0, "the class token must be the best candidate in this test"
        tmodel = compress_tome(model, 8)
        logits = tmodel(x)
        _, size = tmodel.forward_features(x)
    assert size[0, 0, 0] == 1
    expected = ref.tome_forward(model, x, 8)
    assert expected["sizes"][0][0] == 1
    assert rel_err(logits, expected["logits"]) < 1e-4


def test_batched_equals_per_image(tome_models, pixels_for):
    model = tome_models["registers"]
    x = pixels_for(model)
    tmodel = compress_tome(model, 4)
    with torch.no_grad():
        batched = tmodel(x)
        single = torch.cat([tmodel(x[i:i + 1]) for i in range(len(x))])
    assert rel_err(batched, single) < 1e-5


def test_bad_input_is_one_clear_error(tome_models):
    model = tome_models["cls"]
    with pytest.raises(VWTError, match="non-negative"):
        compress_tome(model, -2)
    with pytest.raises(VWTError, match="blocks"):
        compress_tome(model, [1, 2])
    with pytest.raises(VWTError, match="tokens"):
        compress_tome(model, 2)(torch.zeros(1, 3, 96, 96))
    headless_tokens = vx.load_model("vit_tiny_patch16_224", weights="random", img_size=32, depth=1, num_classes=0,
                                    global_pool="")
    with pytest.raises(VWTError, match="global_pool"):
        compress_tome(headless_tokens, 2)
