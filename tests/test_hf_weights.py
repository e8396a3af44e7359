"""Hugging Face transformers checkpoints through --weights (vwt_export/hf_weights.py).

The reference is transformers itself: tiny random models of each family are saved with save_pretrained,
loaded into timm through `load_model`, and timm's outputs compared with transformers' own forward pass.
"""

import logging
from pathlib import Path

import pytest
import torch
from timm.layers import SwiGLUPacked

import vwt_export as vx
from vwt_export import hf_weights
from vwt_export.models import read_state_dict

transformers = pytest.importorskip("transformers", reason="transformers is in the test extra (pip install -e '.[test]')")

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, patch_size=8)
TIMM_TINY = dict(embed_dim=32, depth=2, num_heads=2, patch_size=8)


def _randomized(model):
    """Every parameter random, so that a swapped or misplaced tensor cannot go unnoticed (transformers
    initialises layer scales to ones, biases and mask tokens to zeros)."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model.eval()


def _cases():
    T = transformers
    vit = dict(TINY, intermediate_size=64, image_size=32, layer_norm_eps=1e-6)  # timm's ViT eps (transformers': 1e-12)
    dino = dict(TINY, mlp_ratio=2, image_size=64)  # 8x8 patch grid, resampled to timm's 4x4 at 32 px
    return {
        "vit-model": (lambda: T.ViTModel(T.ViTConfig(**vit)), "vit_tiny_patch16_224",
                      dict(TIMM_TINY, img_size=32, mlp_ratio=2, num_classes=0), "features"),
        "vit-classifier": (lambda: T.ViTForImageClassification(T.ViTConfig(**vit, num_labels=5)), "vit_tiny_patch16_224",
                           dict(TIMM_TINY, img_size=32, mlp_ratio=2, num_classes=5), "logits"),
        "deit-distilled": (lambda: T.DeiTForImageClassificationWithTeacher(T.DeiTConfig(**vit, num_labels=5)),
                           "deit_tiny_distilled_patch16_224", dict(TIMM_TINY, img_size=32, mlp_ratio=2, num_classes=5),
                           "logits"),
        "dinov2": (lambda: T.Dinov2Model(T.Dinov2Config(**dino)), "vit_small_patch14_dinov2",
                   dict(TIMM_TINY, img_size=32, mlp_ratio=2, num_classes=0), "features"),
        "dinov2-swiglu": (lambda: T.Dinov2Model(T.Dinov2Config(**dict(dino, mlp_ratio=4), use_swiglu_ffn=True)),
                          "vit_small_patch14_dinov2",
                          # transformers' SwiGLU width: 2/3 of 4 x 32, rounded up to 8 = 88 per branch; timm packs both
                          dict(TIMM_TINY, img_size=32, mlp_ratio=2 * 88 / 32, num_classes=0,
                               mlp_layer=SwiGLUPacked, act_layer=torch.nn.SiLU),
                          "features"),
        "dinov2-registers": (lambda: T.Dinov2WithRegistersModel(T.Dinov2WithRegistersConfig(**dino, num_register_tokens=2)),
                             "vit_small_patch14_reg4_dinov2", dict(TIMM_TINY, img_size=32, mlp_ratio=2, num_classes=0,
                                                                   reg_tokens=2), "features"),
    }


@pytest.mark.parametrize("case", list(_cases()))
@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_transformers_checkpoints_load_and_match_transformers(tmp_path, case, fmt, caplog):
    make, timm_name, timm_args, output = _cases()[case]
    torch.manual_seed(0)
    hf = _randomized(make())
    hf.save_pretrained(tmp_path)  # model.safetensors, with the names transformers writes to files
    path = tmp_path / "model.safetensors"
    if fmt == "bin":  # the older format, wrapped the way training scripts save it
        from safetensors.torch import load_file

        path = tmp_path / "pytorch_model.bin"
        torch.save({"state_dict": load_file(str(tmp_path / "model.safetensors"))}, path)
    with caplog.at_level(logging.INFO, logger="vwt_export"):
        model = vx.load_model(timm_name, weights=path, **timm_args)
    assert f"{path.name}: transformers " in caplog.text  # says which naming it found
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        if output == "features":
            want, got = hf(pixel_values=x).last_hidden_state, model.forward_features(x)
        else:
            want, got = hf(pixel_values=x).logits, model(x)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_a_save_pretrained_folder_loads(tmp_path):
    T = transformers
    hf = _randomized(T.ViTModel(T.ViTConfig(**TINY, intermediate_size=64, image_size=32, layer_norm_eps=1e-6)))
    hf.save_pretrained(tmp_path)
    model = vx.load_model("vit_tiny_patch16_224", weights=tmp_path, img_size=32, mlp_ratio=2, num_classes=0, **TIMM_TINY)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.forward_features(x), hf(pixel_values=x).last_hidden_state, rtol=1e-4, atol=1e-4)


def test_in_memory_transformers5_names_map_like_the_file_names():
    """transformers 5 holds other names in memory (layers.N.attention.q_proj, mlp.gate_proj) than it writes to
    files; a torch.save of such a state dict loads to the same timm weights."""
    T = transformers
    hf = _randomized(T.Dinov2Model(T.Dinov2Config(**TINY, mlp_ratio=4, image_size=32, use_swiglu_ffn=True)))
    memory = hf.state_dict()
    if not any(".q_proj." in k for k in memory):
        pytest.skip(f"transformers {transformers.__version__} holds the file names in memory too")
    assert any(".gate_proj." in k for k in memory)
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        hf.save_pretrained(d)
        files = read_state_dict(Path(d) / "model.safetensors")
    assert not any(".q_proj." in k for k in files)
    timm_model = vx.load_model("vit_small_patch14_dinov2", weights="random", img_size=32, num_classes=0,
                               **dict(TIMM_TINY, mlp_ratio=2 * 88 / 32),
                               mlp_layer=SwiGLUPacked, act_layer=torch.nn.SiLU)
    a, _ = hf_weights.to_timm(memory, timm_model)
    b, _ = hf_weights.to_timm(files, timm_model)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


def test_naming_is_told_apart():
    T = transformers
    # state_dict() holds transformers 5's in-memory names; files hold the older ones (tested above)
    vit = T.ViTForImageClassification(T.ViTConfig(**TINY, intermediate_size=64, image_size=32)).state_dict()
    assert hf_weights.naming(vit) == "transformers ViT (prefix 'vit.')"
    deit = T.DeiTModel(T.DeiTConfig(**TINY, intermediate_size=64, image_size=32)).state_dict()
    assert hf_weights.naming(deit) == "transformers DeiT"
    dino = T.Dinov2Model(T.Dinov2Config(**TINY, image_size=32)).state_dict()
    assert hf_weights.naming(dino) == "transformers DINOv2"
    timm_sd = vx.load_model("deit_t", weights="random", img_size=32, depth=1).state_dict()
    assert hf_weights.naming(timm_sd) == "timm"


def test_a_dinov2_classifier_is_refused_with_the_fix(tmp_path):
    """Dinov2ForImageClassification's head reads [class token, mean patch token]; timm's head cannot."""
    T = transformers
    hf = T.Dinov2ForImageClassification(T.Dinov2Config(**TINY, image_size=32, num_labels=5))
    hf.save_pretrained(tmp_path)
    with pytest.raises(vx.VWTError, match="model.safetensors: .*num_classes=0"):
        vx.load_model("vit_small_patch14_dinov2", weights=tmp_path / "model.safetensors", img_size=32,
                      num_classes=5, **TIMM_TINY)
    # the backbone alone loads, the head dropped and said so
    vx.load_model("vit_small_patch14_dinov2", weights=tmp_path / "model.safetensors", img_size=32, num_classes=0,
                  mlp_ratio=4, **TIMM_TINY)


def test_a_missing_projection_names_the_file(tmp_path):
    from safetensors.torch import load_file, save_file

    T = transformers
    T.ViTModel(T.ViTConfig(**TINY, intermediate_size=64, image_size=32)).save_pretrained(tmp_path)
    sd = load_file(str(tmp_path / "model.safetensors"))
    del sd["encoder.layer.1.attention.attention.value.weight"]
    save_file(sd, str(tmp_path / "broken.safetensors"))
    with pytest.raises(vx.VWTError, match=r"broken\.safetensors: blocks\.1\.attn\.qkv\.weight: 1 of its 3"):
        vx.load_model("vit_tiny_patch16_224", weights=tmp_path / "broken.safetensors", img_size=32, mlp_ratio=2,
                      num_classes=0, **TIMM_TINY)


def test_timm_checkpoints_still_load_and_say_so(tmp_path, caplog):
    src = vx.load_model("deit_t", weights="random", img_size=32, depth=1, num_classes=3)
    torch.save(src.state_dict(), tmp_path / "timm.pth")
    with caplog.at_level(logging.INFO, logger="vwt_export"):
        m = vx.load_model("deit_t", weights=tmp_path / "timm.pth", img_size=32, depth=1, num_classes=3)
    assert "timm.pth: timm naming" in caplog.text
    for k, v in src.state_dict().items():
        torch.testing.assert_close(m.state_dict()[k], v, rtol=0, atol=0)
