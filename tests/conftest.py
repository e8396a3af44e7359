import os
import subprocess

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


@pytest.fixture
def read_only_folder(tmp_path):
    """A folder nobody can write into: chmod, or for root (whom chmod does not stop) the immutable flag."""
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    flagged = False
    try:
        if os.access(folder, os.W_OK):  # root
            flagged = subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode == 0
            if not flagged:
                pytest.skip("running as root without chattr: no folder here is read-only")
        yield folder
    finally:
        if flagged:
            subprocess.run(["chattr", "-i", str(folder)], check=True)
        folder.chmod(0o755)


@pytest.fixture(scope="session")
def tritonserver():
    """The tritonserver of the serving extra; the test is skipped, saying why, where it is not installed."""
    from vwt_export.errors import VWTError
    from vwt_export.serving.server import find_triton

    try:
        return find_triton()
    except VWTError as e:
        pytest.skip(f"serving extra not installed ({e})")


def pytest_collection_modifyitems(config, items):
    """The real-data tier first: its file is the longest, and `make test`'s workers take files in this order, so
    it runs beside the rest instead of after it."""
    items.sort(key=lambda item: not item.nodeid.startswith("tests/realdata/"))
