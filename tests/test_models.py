import os
import subprocess
import sys

import pytest
import timm
import torch
from safetensors.torch import save_file

import vwt_export as vx
from vwt_export.models import data_config, model_cards, resolve_name

SMALL = dict(img_size=32, depth=1, num_classes=7)


@pytest.mark.parametrize("alias", sorted(model_cards()))
def test_card_matches_the_timm_model(alias):
    card = model_cards()[alias]
    m = timm.create_model(card.timm_name, pretrained=False, depth=1)
    assert (m.patch_embed.patch_size[0], m.embed_dim, m.num_prefix_tokens) == (
        card.patch_size, card.embed_dim, card.num_prefix_tokens)


def test_aliases_required_by_the_spec_exist():
    assert {"deit_t", "deit_s", "deit_b", "deit_s_distilled", "vit_s16", "vit_b16"} <= set(model_cards())
    assert resolve_name("deit_s") == "deit_small_patch16_224"
    assert resolve_name("vit_small_patch16_224.augreg_in1k") == "vit_small_patch16_224.augreg_in1k"


def test_unknown_model_suggests_close_names():
    with pytest.raises(vx.VWTError, match="unknown model 'deit_ss'.*Did you mean deit_s"):
        resolve_name("deit_ss")


def test_non_vit_is_refused():
    with pytest.raises(vx.VWTError, match="not a timm VisionTransformer"):
        vx.load_model("resnet18", weights="random")


def test_timm_kwargs_pass_through_and_data_config_follows_them():
    m = vx.load_model("deit_t", weights="random", **SMALL)
    assert m.patch_embed.img_size == (32, 32) and m.head.out_features == 7 and len(m.blocks) == 1
    assert data_config(m)["input_size"] == (3, 32, 32)
    assert m.vwt_weights == "random" and not m.training


def test_random_weights_are_reproducible_and_leave_the_global_rng_alone():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = vx.load_model("deit_t", weights="random", **SMALL)
    after = torch.rand(1)
    b = vx.load_model("deit_t", weights="random", **SMALL)
    assert torch.equal(before, after)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def _trained_state(**kw):
    m = vx.load_model("deit_t", weights="random", **{**SMALL, **kw})
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p))
    return m.state_dict()


@pytest.mark.parametrize("wrap", ["plain", "model", "state_dict_module", "safetensors"])
def test_checkpoint_formats_load(tmp_path, wrap):
    sd = _trained_state()
    if wrap == "safetensors":
        path = tmp_path / "w.safetensors"
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    else:
        obj = {"plain": sd, "model": {"model": sd, "epoch": 3},
               "state_dict_module": {"state_dict": {f"module.{k}": v for k, v in sd.items()}}}[wrap]
        path = tmp_path / "w.pth"
        torch.save(obj, path)
    m = vx.load_model("deit_t", weights=path, **SMALL)
    assert all(torch.equal(m.state_dict()[k], v) for k, v in sd.items())
    assert m.vwt_weights == str(path)


def test_checkpoint_for_another_model_is_a_clear_error(tmp_path):
    path = tmp_path / "w.pth"
    torch.save(_trained_state(), path)
    with pytest.raises(vx.VWTError, match="does not fit.*shape mismatch.*head"):
        vx.load_model("deit_t", weights=path, img_size=32, depth=1, num_classes=5)


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", b"PK\x03\x04garbage"])
def test_corrupt_checkpoint_is_a_clear_error(tmp_path, content):
    for name in ("w.pth", "w.safetensors"):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(vx.VWTError, match="not a readable checkpoint"):
            vx.load_model("deit_t", weights=tmp_path / name, **SMALL)


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(vx.VWTError, match="no such checkpoint file"):
        vx.load_model("deit_t", weights=tmp_path / "nope.pth", **SMALL)


def _python(code, env):
    base = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_ENDPOINT")}
    return subprocess.run([sys.executable, "-c", code], env={**base, **env}, capture_output=True, text=True)


# Two ways to be offline: saying so, or a hub whose name does not resolve (.invalid never does, RFC 6761).
OFFLINE = {"declared": {"HF_HUB_OFFLINE": "1"}, "unreachable": {"HF_ENDPOINT": "https://hub.invalid"}}


@pytest.mark.parametrize("offline", OFFLINE)
@pytest.mark.slow
def test_pretrained_comes_from_the_hub_cache_offline(tmp_path, offline):
    """timm's real hub path: a checkpoint laid out as huggingface_hub caches it loads with HF_HUB_OFFLINE=1."""
    sd = _trained_state(num_classes=1000)  # timm drops a classifier whose size differs from the hub's
    repo = tmp_path / "hub" / "models--timm--deit_tiny_patch16_224.fb_in1k"
    rev = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(rev)
    (repo / "snapshots" / rev).mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(repo / "snapshots" / rev / "model.safetensors"))
    torch.save(sd, tmp_path / "expected.pth")
    code = (
        "import torch, vwt_export as vx\n"
        "m = vx.load_model('deit_t', weights='pretrained', img_size=32, depth=1)\n"
        f"sd = torch.load(r'{tmp_path / 'expected.pth'}')\n"
        "assert all(torch.equal(m.state_dict()[k], v) for k, v in sd.items())\n"
        "print('ok', m.vwt_weights)\n"
    )
    r = _python(code, {"HF_HOME": str(tmp_path), **OFFLINE[offline]})
    assert r.returncode == 0, r.stderr[-2000:]
    assert "Retrying" not in r.stderr
    assert "ok pretrained" in r.stdout


@pytest.mark.parametrize("offline", OFFLINE)
@pytest.mark.slow
def test_pretrained_offline_without_cache_names_the_fix(tmp_path, offline):
    code = "import vwt_export as vx\nvx.load_model('deit_t', weights='pretrained')\n"
    r = _python(code, {"HF_HOME": str(tmp_path), **OFFLINE[offline]})
    assert r.returncode != 0
    assert "Retrying" not in r.stderr  # no minute of back-off against a host that does not exist
    if offline == "unreachable":
        assert "the hub is unreachable: hub.invalid does not resolve" in r.stderr
    assert "could not get pretrained weights for deit_tiny_patch16_224" in r.stderr
    assert "--weights PATH" in r.stderr
