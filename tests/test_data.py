import numpy as np
import pytest
import torch
from PIL import Image

from vwt_export import VWTError
from vwt_export.data import iter_image_batches, list_images


def _img(path, colour=(10, 20, 30)):
    Image.new("RGB", (8, 8), colour).save(path)


def to_tensor(im):
    return torch.from_numpy(np.asarray(im, dtype=np.float32)).permute(2, 0, 1)


def test_lists_images_recursively_and_sorted(tmp_path):
    (tmp_path / "b").mkdir()
    _img(tmp_path / "b" / "x.PNG")
    _img(tmp_path / "a.jpg")
    (tmp_path / "notes.txt").write_text("hi")
    assert [p.relative_to(tmp_path).as_posix() for p in list_images(tmp_path)] == ["a.jpg", "b/x.PNG"]


@pytest.mark.parametrize("make,msg", [
    (lambda p: None, "no images found"),
    (lambda p: (p / "readme.txt").write_text("x"), "no images found"),
])
def test_empty_or_non_image_folder(tmp_path, make, msg):
    make(tmp_path)
    with pytest.raises(VWTError, match=msg):
        list_images(tmp_path)


def test_missing_folder_and_file_instead_of_folder(tmp_path):
    with pytest.raises(VWTError, match="no such folder"):
        list_images(tmp_path / "nope")
    (tmp_path / "f.jpg").write_bytes(b"x")
    with pytest.raises(VWTError, match="not a folder"):
        list_images(tmp_path / "f.jpg")


def test_unreadable_images_are_skipped_and_all_unreadable_is_an_error(tmp_path, caplog):
    _img(tmp_path / "good.png", (255, 0, 0))
    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg")
    batches = list(iter_image_batches(list_images(tmp_path), to_tensor, batch_size=4))
    assert len(batches) == 1 and batches[0][0].shape == (1, 3, 8, 8)
    assert "bad.jpg" in caplog.text
    with pytest.raises(VWTError, match="none of the 1 image files could be read"):
        list(iter_image_batches([tmp_path / "bad.jpg"], to_tensor, batch_size=4))


def test_batching(tmp_path):
    for i in range(5):
        _img(tmp_path / f"{i}.png", (i, i, i))
    sizes = [len(b) for b, _ in iter_image_batches(list_images(tmp_path), to_tensor, batch_size=2)]
    assert sizes == [2, 2, 1]


def test_readable_images_checks_headers_up_front(tmp_path, caplog):
    import logging

    from PIL import Image

    from vwt_export.data import readable_images

    Image.new("RGB", (8, 8)).save(tmp_path / "good.png")
    (tmp_path / "bad.jpg").write_bytes(b"nope")
    with caplog.at_level(logging.WARNING):
        assert readable_images(tmp_path) == [tmp_path / "good.png"]
    assert caplog.text.count("skipping unreadable image") == 1 and "bad.jpg" in caplog.text
