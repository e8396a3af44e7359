import pytest
import torch
from PIL import Image

import vwt_export as vx
from vwt_export.demo import write_demo_images

COMMON = dict(weights="random", img_size=64, num_classes=10)


@pytest.fixture(scope="session")
def tome_models():
    """Small random-weight timm ViTs covering the prefix layouts ToMe must protect, keyed by a short name."""
    return {
        "cls": vx.load_model("vit_tiny_patch16_224", depth=4, **COMMON),  # P=1, 16 patches
        "distilled": vx.load_model("deit_tiny_distilled_patch16_224", depth=3, **COMMON),  # P=2
        "registers": vx.load_model("vit_tiny_patch16_224", depth=3, reg_tokens=2, **COMMON),  # P=3
        "avg": vx.load_model("vit_tiny_patch16_224", depth=3, class_token=False, global_pool="avg", **COMMON),  # P=0
    }


@pytest.fixture(scope="session")
def demo_folder(tmp_path_factory):
    return write_demo_images(tmp_path_factory.mktemp("tome_demo"), count=6, size=96)


@pytest.fixture(scope="session")
def pixels_for(demo_folder):
    """model -> the demo scenes through the model's own eval transform, [6, 3, 64, 64]: realistic inputs, so
    matching has no exact ties."""
    cache = {}

    def get(model):
        cfg = vx.models.data_config(model)
        key = (cfg["input_size"], tuple(cfg["mean"]), tuple(cfg["std"]))
        if key not in cache:
            tf = vx.models.transform(model)
            cache[key] = torch.stack([tf(Image.open(f).convert("RGB")) for f in sorted(demo_folder.glob("*.png"))])
        return cache[key]

    return get
