import numpy as np
import pytest
from PIL import Image

from vwt_export import VWTError
from vwt_export.check import accuracy as acc
from vwt_export.data import list_images


def test_metrics_hand_computed():
    ref = np.array([[3.0, 2.0, 1.0, 0.0], [0.0, 1.0, 2.0, 3.0]])
    cand = np.array([[3.0, 1.0, 2.0, 0.0], [3.0, 2.0, 1.0, 0.0]])
    assert acc.top1_agreement(ref, cand) == 0.5
    assert acc.topk_overlap(ref, cand, k=2) == pytest.approx((1 / 2 + 0 / 2) / 2)
    assert acc.topk_accuracy(ref, np.array([1, 3]), 1) == 0.5
    assert acc.topk_accuracy(ref, np.array([1, 2]), 2) == 1.0
    assert acc.cosine_similarity(ref, ref * 2) == pytest.approx(1.0)
    assert acc.cosine_similarity(np.array([[1.0, 0.0]]), np.array([[0.0, 1.0]])) == pytest.approx(0.0)


def test_kl_divergence_hand_computed():
    # softmax of log-probabilities gives the probabilities back
    p, q = np.array([0.5, 0.5]), np.array([0.9, 0.1])
    expected = 0.5 * np.log(0.5 / 0.9) + 0.5 * np.log(0.5 / 0.1)
    assert acc.kl_divergence(np.log(p)[None], np.log(q)[None]) == pytest.approx(expected)
    assert acc.kl_divergence(np.log(p)[None], np.log(p)[None]) == pytest.approx(0.0, abs=1e-12)


def _img(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4)).save(path)


def test_image_folder_with_index_synset_and_named_classes(tmp_path):
    for d in ("3", "7"):
        _img(tmp_path / "idx" / d / "a.png")
    for d in ("n01443537", "n01440764"):  # ImageNet classes 1 and 0
        _img(tmp_path / "syn" / d / "a.png")
    for d in ("dog", "cat"):
        _img(tmp_path / "named" / d / "a.png")
    for name, expected in (("idx", [3, 7]), ("syn", [0, 1]), ("named", [0, 1])):
        files = list_images(tmp_path / name)
        assert acc.read_labels(tmp_path / name, files).tolist() == expected, name


@pytest.mark.parametrize("text", ["a.png,5\nb.png,2\n", "file label\na.png 5\nb.png 2\n", "a.png,5\nb.png,n01443537\n"])
def test_flat_folder_with_labels_file(tmp_path, text):
    _img(tmp_path / "a.png")
    _img(tmp_path / "b.png")
    (tmp_path / "labels.txt").write_text(text)
    labels = acc.read_labels(tmp_path, list_images(tmp_path)).tolist()
    assert labels == [5, 1] if "n014" in text else labels == [5, 2]


def test_flat_folder_without_labels_and_missing_entries(tmp_path):
    _img(tmp_path / "a.png")
    _img(tmp_path / "b.png")
    assert acc.read_labels(tmp_path, list_images(tmp_path)) is None
    (tmp_path / "labels.csv").write_text("a.png,1\n")
    with pytest.raises(VWTError, match="no label for 1 images"):
        acc.read_labels(tmp_path, list_images(tmp_path))
