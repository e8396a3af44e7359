import pytest
import torch
import torch.nn.functional as F

import vwt_export as vx
from vwt_export.vwt.features import patch_features

from ..conftest import blocky_images

COMMON = dict(weights="random", img_size=96, depth=3, num_classes=10)  # 36 patches on a 6 x 6 grid


@pytest.fixture(scope="session")
def hybrid_models():
    """Small random-weight timm ViTs covering the prefix layouts the hybrid must protect, keyed by a short name."""
    return {
        "cls": vx.load_model("vit_tiny_patch16_224", **COMMON),  # P=1
        "distilled": vx.load_model("deit_tiny_distilled_patch16_224", **COMMON),  # P=2
        "registers": vx.load_model("vit_tiny_patch16_224", reg_tokens=2, **COMMON),  # P=3
        "avg": vx.load_model("vit_tiny_patch16_224", class_token=False, global_pool="avg", **COMMON),  # P=0
    }


def images_for(model, n=6, seed=0):
    """Flat cells one patch wide plus noise: neighbouring patches often match the same word."""
    size = model.patch_embed.img_size[0]
    return blocky_images(n, size, cells=size // model.patch_embed.patch_size[0], seed=seed)


def mixed_threshold(model, x, vocab, quantile=0.6):
    """A threshold that matches about `quantile` of the patches, so groups and singletons both occur."""
    f = patch_features(model, x, "image", model.patch_embed.patch_size[0])
    d = 1 - F.normalize(f, dim=-1) @ F.normalize(vocab.words, dim=-1).T
    return float(d.min(-1).values.quantile(quantile))


@pytest.fixture(scope="session")
def hybrid_vocabs(hybrid_models):
    return {k: vx.learn_vocabulary(m, [images_for(m, 8, seed=s) for s in (10, 11)], size=6, progress=False)
            for k, m in hybrid_models.items()}


def rel_err(actual, expected):
    return float((actual - expected).abs().max() / expected.abs().max().clamp(min=1e-6))


@pytest.fixture
def make_hybrid(hybrid_models, hybrid_vocabs):
    """(kind, **options) -> (HybridViT, its test images, their threshold)."""
    from vwt_export.hybrid import compress_hybrid

    def make(kind, seed=0, **options):
        model, vocab = hybrid_models[kind], hybrid_vocabs[kind]
        x = images_for(model, seed=seed)
        options.setdefault("threshold", mixed_threshold(model, x, vocab))
        options.setdefault("tile", 0)  # the test images' groups were made for unbounded grouping; tiles: test_model
        return compress_hybrid(model, vocab, **options), x

    return make


def assert_close(actual, expected, rtol=1e-4):
    assert rel_err(actual, expected) < rtol, f"relative error {rel_err(actual, expected):.2e}"


def torch_equal(a, b):
    return torch.equal(torch.as_tensor(a), torch.as_tensor(b))
