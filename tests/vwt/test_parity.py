"""The compressed model against the independent tmlr2025 reference (tests/reference_tmlr2025.py)."""

import pytest
import torch
import torch.nn.functional as F

import vwt_export as vx
from vwt_export.vwt.features import patch_features

from .. import reference_tmlr2025 as ref
from ..conftest import blocky_images

MODELS = ["p16_cls", "p14_cls", "p16_cls_reg", "p14_distilled", "p16_avg"]


def paper(model, mode, **options):
    """vx.compress with the reference's settings (the paper's global grouping, no proportional attention) where a
    test gives none: the package's defaults differ (vwt/defaults.py), the reference implements these."""
    if mode == "inter":
        options = {"grouping": "global", "prop_attn": False, **options}
    return vx.compress(model, mode, **options)


def close(actual, expected):
    actual, expected = actual.detach(), expected.detach()
    scale = expected.abs().max().clamp(min=1e-6)
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4 * float(scale))


def images_for(model, n=6, seed=0):
    size = model.patch_embed.img_size[0]
    return blocky_images(n, size, cells=size // model.patch_embed.patch_size[0], seed=seed)


def mixed_threshold(model, x, vocab, space):
    """A threshold that leaves about half the patches matched, so both code paths are exercised."""
    f = patch_features(model, x, space, model.patch_embed.patch_size[0])
    d = 1 - F.normalize(f, dim=-1) @ F.normalize(vocab.words, dim=-1).T
    return float(d.min(-1).values.detach().quantile(0.5))


@pytest.fixture(scope="module")
def vocabs(tiny_models):
    out = {}
    for key, model in tiny_models.items():
        for space in ("image", "embed"):
            batches = [images_for(model, 8, seed=s) for s in (10, 11)]
            out[key, space] = vx.learn_vocabulary(model, batches, size=6, space=space, progress=False)
    return out


@pytest.mark.parametrize("space", ["image", "embed"])
@pytest.mark.parametrize("key", MODELS)
def test_inter_matches_reference(tiny_models, vocabs, key, space):
    model, vocab = tiny_models[key], vocabs[key, space]
    x = images_for(model)
    thr = mixed_threshold(model, x, vocab, space)
    cmodel = paper(model, "inter", vocab=vocab, threshold=thr)
    ours = cmodel(x)

    p = model.patch_embed.patch_size[0]
    feats = ref.patches(x, p) if space == "image" else model.patch_embed(x)
    ref_labels = ref.labels(feats, vocab.words, thr)
    assert torch.equal(vx.vwt.word_labels(patch_features(model, x, space, p), F.normalize(vocab.words, dim=-1), thr),
                       ref_labels)
    counts = [ref_labels[i].max().item() + 1 + model.num_prefix_tokens for i in range(len(x))]
    assert min(counts) < cmodel.tokens_in, "the test data should merge something"
    assert len(set(counts)) > 1, "the test data should give images of different lengths (padding)"

    for i in range(len(x)):
        expected, n_tokens = ref.forward_one(model, x[i : i + 1], "inter", vocab.words, thr, space=space)
        close(ours[i : i + 1], expected)
        assert cmodel.last_token_counts[i] == n_tokens == counts[i]


@pytest.mark.parametrize("space", ["image", "embed"])
@pytest.mark.parametrize("key", MODELS)
def test_intra_matches_reference(tiny_models, key, space):
    model = tiny_models[key]
    x = images_for(model, seed=3)
    n = model.patch_embed.num_patches
    k = 5
    cmodel = paper(model, "intra", keep=k, space=space)
    ours = cmodel(x)
    assert ours.shape == model(x).shape
    for i in range(len(x)):
        expected, n_tokens = ref.forward_one(model, x[i : i + 1], "intra", k=k, space=space)
        close(ours[i : i + 1], expected)
        assert n_tokens == model.num_prefix_tokens + k < model.num_prefix_tokens + n
    assert cmodel.last_token_counts.tolist() == [model.num_prefix_tokens + k] * len(x)


@pytest.mark.parametrize("key", ["p16_cls", "p16_avg", "p14_distilled"])
def test_proportional_attention_matches_reference(tiny_models, vocabs, key):
    model, vocab = tiny_models[key], vocabs[key, "image"]
    x = images_for(model, seed=5)
    thr = mixed_threshold(model, x, vocab, "image")
    ours = paper(model, "inter", vocab=vocab, threshold=thr, prop_attn=True)(x)
    plain = paper(model, "inter", vocab=vocab, threshold=thr)(x)
    assert not torch.allclose(ours, plain), "proportional attention should change the outputs"
    for i in range(len(x)):
        expected, _ = ref.forward_one(model, x[i : i + 1], "inter", vocab.words, thr, prop_attn=True)
        close(ours[i : i + 1], expected)


@pytest.mark.slow
def test_deit_s_full_size_batch_16_matches_reference():
    model = vx.load_model("deit_s", weights="random")
    x = blocky_images(16, 224, cells=14, seed=7)
    vocab = vx.learn_vocabulary(model, [blocky_images(8, 224, cells=14, seed=8)], size=64, progress=False)
    thr = mixed_threshold(model, x, vocab, "image")
    cmodel = paper(model, "inter", vocab=vocab, threshold=thr)
    batched = cmodel(x)
    counts = cmodel.last_token_counts.clone()
    for i in range(16):
        single = cmodel(x[i : i + 1])
        close(batched[i : i + 1], single)
        assert cmodel.last_token_counts.item() == counts[i]
        expected, n_tokens = ref.forward_one(model, x[i : i + 1], "inter", vocab.words, thr)
        close(single, expected)
        assert n_tokens == counts[i]
    assert counts.float().mean() < cmodel.tokens_in


def test_nothing_matched_equals_uncompressed(tiny_models):
    model = tiny_models["p16_cls"]
    x = images_for(model)
    words = torch.randn(20, 3 * 16 * 16, generator=torch.Generator().manual_seed(0))
    cmodel = paper(model, "inter", vocab=vx.Vocabulary(words, patch_size=16), threshold=0.0)
    close(cmodel(x), model(x))
    assert cmodel.last_token_counts.tolist() == [cmodel.tokens_in] * len(x)


def test_everything_matched_one_word_gives_one_token(tiny_models, vocabs):
    model = tiny_models["p16_cls_reg"]
    x = images_for(model)
    one_word = vx.Vocabulary(vocabs["p16_cls_reg", "image"].words[:1], patch_size=16)
    cmodel = paper(model, "inter", vocab=one_word, threshold=2.0)
    out = cmodel(x)
    assert cmodel.last_token_counts.tolist() == [model.num_prefix_tokens + 1] * len(x)
    for i in range(len(x)):
        expected, _ = ref.forward_one(model, x[i : i + 1], "inter", one_word.words, 2.0)
        close(out[i : i + 1], expected)


@pytest.mark.parametrize("mode", ["inter", "intra"])
def test_single_patch_image(mode):
    model = vx.load_model("vit_tiny_patch16_224", weights="random", img_size=16, depth=1, num_classes=5)
    x = torch.randn(3, 3, 16, 16)
    vocab = vx.Vocabulary(torch.randn(4, 768), patch_size=16)
    options = {"inter": {"threshold": 2.0}, "intra": {"keep": 1.0}}[mode]  # another mode's option is an error
    cmodel = paper(model, mode, vocab=vocab, **options)
    close(cmodel(x), model(x))  # one patch: its group mean is itself
    assert cmodel.last_token_counts.tolist() == [2, 2, 2]


def test_batch_of_one_equals_batch_of_sixteen(tiny_models, vocabs):
    model, vocab = tiny_models["p16_avg"], vocabs["p16_avg", "image"]
    x = images_for(model, n=16, seed=9)
    cmodel = paper(model, "inter", vocab=vocab, threshold=mixed_threshold(model, x, vocab, "image"))
    batched = cmodel(x)
    assert len(set(cmodel.last_token_counts.tolist())) > 1
    for i in range(16):
        close(batched[i : i + 1], cmodel(x[i : i + 1]))


def test_image_size_not_divisible_by_patch_is_a_clear_error(tiny_models):
    cmodel = paper(tiny_models["p16_cls"], "intra", keep=0.5)
    with pytest.raises(vx.VWTError, match="not divisible by the patch size 16"):
        cmodel(torch.randn(1, 3, 60, 64))


def test_mode_none_is_the_model(tiny_models):
    model = tiny_models["p14_distilled"]
    x = images_for(model)
    cmodel = paper(model, "none")
    close(cmodel(x), model(x))
    assert cmodel.last_token_counts.tolist() == [2 + 16] * len(x)


@pytest.mark.parametrize("space", ["image", "embed"])
@pytest.mark.parametrize("key", ["p16_cls", "p14_distilled", "p16_avg"])
def test_local_grouping_matches_reference(tiny_models, vocabs, key, space):
    """Local grouping against the reference's labels split by a plain flood fill (reference_tmlr2025.local_labels).
    Patches painted from a palette of three colours: alike patches both touch and lie apart, so groups split
    into non-trivial components."""
    model, vocab = tiny_models[key], vocabs[key, space]
    size, p = model.patch_embed.img_size[0], model.patch_embed.patch_size[0]
    g = torch.Generator().manual_seed(21)
    palette = torch.randn(3, 3, generator=g)
    cells = palette[torch.randint(3, (6, size // p, size // p), generator=g)].permute(0, 3, 1, 2)
    x = F.interpolate(cells, size=(size, size), mode="nearest") + 0.02 * torch.randn(6, 3, size, size, generator=g)
    thr = mixed_threshold(model, x, vocab, space)
    local = paper(model, "inter", vocab=vocab, threshold=thr, grouping="local")
    glob = paper(model, "inter", vocab=vocab, threshold=thr)
    assert local.grid_w == size // p and glob.grid_w == 0 and local.grouping == "local"
    ours = local(x)
    glob(x)
    assert (local.last_token_counts >= glob.last_token_counts).all()
    assert (local.last_token_counts > glob.last_token_counts).any(), "some group should split into components"
    assert (local.last_token_counts < local.tokens_in).any(), "some touching patches should still merge"
    for i in range(len(x)):
        expected, n_tokens = ref.forward_one(model, x[i : i + 1], "inter", vocab.words, thr, space=space, local=True)
        close(ours[i : i + 1], expected)
        assert local.last_token_counts[i] == n_tokens


def test_given_keys_replace_matching(tiny_models, vocabs):
    model, vocab = tiny_models["p16_cls"], vocabs["p16_cls", "image"]
    x = images_for(model)
    cmodel = paper(model, "inter", vocab=vocab, threshold=mixed_threshold(model, x, vocab, "image"))
    keys = cmodel.match(x)
    assert keys.shape == (len(x), model.patch_embed.num_patches) and keys.dtype == torch.int64
    assert torch.equal(cmodel.features(x), patch_features(model, x, "image", 16))
    close(cmodel(x, keys=keys), cmodel(x))
    counts = cmodel.last_token_counts.clone()
    distinct = torch.arange(keys.shape[1]).expand_as(keys)  # every patch its own group: the uncompressed model
    close(cmodel(x, keys=distinct), model(x))
    assert cmodel.last_token_counts.tolist() == [cmodel.tokens_in] * len(x) != counts.tolist()
    with pytest.raises(vx.VWTError, match="keys have shape"):
        cmodel(x, keys=keys[:, :3])


def test_local_grouping_and_keys_need_inter_mode(tiny_models):
    with pytest.raises(vx.VWTError, match="grouping='global' applies to inter and hybrid modes only"):
        vx.compress(tiny_models["p16_cls"], "intra", keep=4, grouping="global")
    with pytest.raises(vx.VWTError, match="unknown grouping 'nearby'"):
        vx.compress(tiny_models["p16_cls"], "intra", keep=4, grouping="nearby")
    intra = paper(tiny_models["p16_cls"], "intra", keep=4)
    with pytest.raises(vx.VWTError, match="keys can only be given in inter mode"):
        intra(torch.randn(1, 3, 64, 64), keys=torch.zeros(1, 16, dtype=torch.int64))
    with pytest.raises(vx.VWTError, match="match\\(\\) needs inter mode"):
        intra.match(torch.randn(1, 3, 64, 64))
