"""Verification of discrete decisions: matches compared exactly except at near-ties, outputs given the same matches."""

from pathlib import Path

import pytest
import torch

import vwt_export as vx
from vwt_export.check.verify import verify_graph
from vwt_export.graph.export import export_model, save_model
from vwt_export.graph.surgery import apply_vwt
from vwt_export.vwt.features import image_patches


@pytest.fixture(scope="module")
def setting():
    model = vx.load_model("vit_tiny_patch16_224", weights="random", img_size=64, depth=1, num_classes=10)
    pixels = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    words = image_patches(pixels, 16)[0].clone()  # image 0's patches match these words exactly; image 1's none
    return model, pixels, words, export_model(model)


def near_duplicate(a: torch.Tensor, distance: float) -> torch.Tensor:
    """A word at cosine distance `distance` from `a`."""
    u = torch.randn(a.shape, generator=torch.Generator().manual_seed(1))
    u -= (u @ a) / (a @ a) * a
    return a + u / u.norm() * a.norm() * (2 * distance) ** 0.5


def test_matches_that_differ_only_at_near_ties_pass_and_are_counted(setting, tmp_path):
    """Words a and b are 1e-6 apart in cosine distance, listed in opposite orders in the graph and in torch: the
    patch equal to a matches index 0 in torch and index 1 in the graph, the same word either way."""
    model, pixels, words, base = setting
    a, b = words[0], near_duplicate(words[0], 1e-6)
    rest = words[1:]
    cmodel = vx.compress(model, "inter", vocab=vx.Vocabulary(torch.cat([a[None], b[None], rest]), patch_size=16),
                         threshold=0.1)
    graph_words = torch.cat([b[None], a[None], rest]).numpy()
    path = save_model(apply_vwt(base, "inter", vocab=graph_words, threshold=0.1), tmp_path / "model.vwt.onnx")
    v = verify_graph(path, cmodel, pixels)
    assert v.verified and v.max_rel_err < 1e-4
    assert v.patches == 2 * 16 and v.matches_differ >= 1 and v.near_ties >= v.matches_differ
    assert v.images_with_near_ties == 1  # image 1 is noise: nothing near any word or the threshold


def test_matches_that_differ_away_from_any_near_tie_fail(setting, tmp_path):
    model, pixels, words, base = setting
    vocab = vx.Vocabulary(words, patch_size=16)
    cmodel = vx.compress(model, "inter", vocab=vocab, threshold=0.1)
    path = save_model(apply_vwt(base, "inter", vocab=words.numpy(), threshold=1.5), tmp_path / "model.vwt.onnx")
    with pytest.raises(vx.VWTError, match="patch matches differ from torch away from any near-tie"):
        verify_graph(path, cmodel, pixels)


def test_a_wrong_continuous_part_fails(setting, tmp_path):
    """Same matches, different merge: the graph merges in another model's tokens."""
    model, pixels, words, base = setting
    other = vx.load_model("vit_tiny_patch16_224", weights="random", img_size=64, depth=1, num_classes=10)
    with torch.no_grad():
        for p in other.parameters():
            p.mul_(1.01)
    cmodel = vx.compress(other, "inter", vocab=vx.Vocabulary(words, patch_size=16), threshold=0.1)
    path = save_model(apply_vwt(base, "inter", vocab=words.numpy(), threshold=0.1), tmp_path / "model.vwt.onnx")
    with pytest.raises(vx.VWTError, match="ONNX output differs from torch"):
        verify_graph(path, cmodel, pixels)


def test_near_ties_are_counted_one_way_with_plurals_right():
    from vwt_export.check.context import ExportResult
    from vwt_export.check.verify import describe_verification, near_tie_summary

    keyed = {"file": "model.vwt.onnx", "verified": True, "max_rel_err": 1e-6, "patches": 32, "near_ties": 1,
             "images_with_near_ties": 1, "matches_differ": 1, "images": 8, "tolerance": 1e-4}
    tome = {"file": "model.tome.onnx", "verified": True, "max_rel_err": 1e-6, "patches": 0, "near_ties": 0,
            "images_with_near_ties": 5, "matches_differ": 0, "images": 8, "tolerance": 1e-4}
    line = describe_verification("model.vwt.onnx", keyed, "logits")
    assert "1 near-tie patch in 1 image," in line and "against its torch model on 8 images" in line
    # ToMe decides per image: its near-ties are images, never reported as patches
    line = describe_verification("model.tome.onnx", tome, "logits")
    assert "5 images hold a near-tie merge decision" in line and "patch" not in line
    ties = ExportResult(None, Path("."), verification={"model.onnx": {"verified": True}, "model.tome.onnx": tome}).near_ties
    assert ties == {"file": "model.tome.onnx", "patches": 0, "images": 5, "of_images": 8}
    assert near_tie_summary(ties) == "5 of 8 verification images hold a near-tie merge decision (model.tome.onnx)"
    one = ExportResult(None, Path("."), verification={"model.vwt.onnx": keyed}).near_ties
    assert near_tie_summary(one).startswith("1 patch in 1 of 8 verification images")


class _TiedEverywhere(torch.nn.Module):
    """A model whose every image holds a decision within the near-tie margin (as a hybrid may, merging in every
    block): its outputs cannot be compared, only its near-ties counted."""

    def __init__(self, model, tied):
        super().__init__()
        self.model, self.tied = model, tied

    def forward(self, x):
        return self.model(x)

    def decision_margins(self, x):
        return torch.where(self.tied, torch.zeros(len(x)), torch.ones(len(x)))


def test_a_graph_whose_every_image_is_tied_is_not_called_verified(setting, tmp_path):
    model, pixels, _, proto = setting
    path = save_model(proto, tmp_path / "model.onnx")
    v = verify_graph(path, _TiedEverywhere(model, torch.tensor([True, True])), pixels)
    assert not v.verified and v.compared == 0 and v.max_rel_err is None and "not compared" in v.reason
    v = verify_graph(path, _TiedEverywhere(model, torch.tensor([True, False])), pixels)
    assert v.verified and v.compared == 1 and v.images_with_near_ties == 1 and v.max_rel_err < 1e-4
