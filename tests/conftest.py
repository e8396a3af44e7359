import os

import pytest
import torch

import vwt_export as vx

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch the network


def blocky_images(n, size, cells=8, noise=0.02, seed=0, channels=3):
    """Normalised images made of flat cells plus a little noise: realistic enough that many patches look
    alike (and match visual words) while others do not."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(n, channels, cells, cells, generator=g)
    x = torch.nn.functional.interpolate(coarse, size=(size, size), mode="nearest")
    return x + noise * torch.randn(x.shape, generator=g)


@pytest.fixture(scope="session")
def tiny_models():
    """Small random-weight ViTs covering the geometry VWT must handle, keyed by a short description."""
    common = dict(weights="random", depth=2, num_classes=10)
    return {
        "p16_cls": vx.load_model("vit_tiny_patch16_224", img_size=64, **common),
        "p14_cls": vx.load_model("vit_tiny_patch16_224", img_size=56, patch_size=14, **common),
        "p16_cls_reg": vx.load_model("vit_tiny_patch16_224", img_size=64, reg_tokens=1, **common),
        "p14_distilled": vx.load_model("deit_tiny_distilled_patch16_224", img_size=56, patch_size=14, **common),
        "p16_avg": vx.load_model("vit_tiny_patch16_224", img_size=64, class_token=False, global_pool="avg", **common),
    }


@pytest.fixture(scope="session")
def op_library():
    """The vwt ONNX Runtime op library; `make setup` builds it, so its absence is a failure, not a skip."""
    from vwt_export.plugins import ort_library

    try:
        return ort_library()
    except Exception as e:
        pytest.fail(f"the vwt op library is not built: {e}")
