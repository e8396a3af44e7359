"""The built-in demo scenes: deterministic from a seed, and kept-token counts that spread like real photos'.

Real photos with deit_s, inter mode, image space, threshold 0.1 keep 20 to 197 of 197 tokens (mean 116, issue
10); the scenes this package used before kept 22 to 76. The spread test measures the scenes the way the CLI
does (model transform, vocabulary learned on the scenes, compress, last_token_counts) and fails on the old ones.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from vwt_export.data import iter_image_batches, list_images
from vwt_export.demo import draw_scene, scene_busyness, write_demo_images
from vwt_export.errors import VWTError
from vwt_export.models import load_model, transform
from vwt_export.vwt import compress, learn_vocabulary


def _pixels(folder) -> dict[str, np.ndarray]:
    return {p.name: np.asarray(Image.open(p)) for p in sorted(folder.iterdir())}


def test_same_seed_same_scenes_and_a_count_is_a_prefix(tmp_path):
    a = _pixels(write_demo_images(tmp_path / "a", count=4, size=64, seed=3))
    b = _pixels(write_demo_images(tmp_path / "b", count=4, size=64, seed=3))
    other = _pixels(write_demo_images(tmp_path / "c", count=4, size=64, seed=4))
    fewer = _pixels(write_demo_images(tmp_path / "d", count=2, size=64, seed=3))
    assert list(a) == [f"scene_{i:03d}.png" for i in range(4)]  # and no temporary file left behind
    assert all(a[n].shape == (64, 64, 3) and np.array_equal(a[n], b[n]) for n in a)
    assert not any(np.array_equal(a[n], other[n]) for n in a)
    assert list(fewer) == list(a)[:2] and all(np.array_equal(fewer[n], a[n]) for n in fewer)
    assert len({a[n].tobytes() for n in a}) == 4  # scenes differ from one another


def test_draw_scene_is_deterministic_for_a_generator():
    one, two = (np.asarray(draw_scene(np.random.default_rng(7), 48)) for _ in range(2))
    assert one.shape == (48, 48, 3) and np.array_equal(one, two)


def test_existing_files_are_kept(tmp_path):
    (tmp_path / "scene_001.png").write_bytes(b"mine")
    write_demo_images(tmp_path, count=3, size=32)
    assert (tmp_path / "scene_001.png").read_bytes() == b"mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"scene_{i:03d}.png" for i in range(3)]


@pytest.mark.parametrize("kwargs", [dict(size=8), dict(count=-1)])
def test_bad_arguments_are_one_clear_error(tmp_path, kwargs):
    with pytest.raises(VWTError, match="demo scenes need"):
        write_demo_images(tmp_path, **kwargs)


def kept_fractions(folder, vocab_size: int = 128) -> np.ndarray:
    """Kept tokens / all tokens per image, measured as `vwt-export deit_s --demo` does (vocabulary learned on
    the same scenes). Image-space features depend only on the pixels, the transform and the patch size, not on
    the trunk, so a one-block deit_s gives the counts of the full one at a twelfth of the cost."""
    model = load_model("deit_s", weights="random", depth=1)
    pixels = torch.cat([b for b, _ in iter_image_batches(list_images(folder), transform(model), 32)])
    # one batch of 32, as learn_vocabulary(model, folder) would read it, decoded once for both uses
    vocab = learn_vocabulary(model, [pixels], vocab_size, space="image", progress=False)
    cmodel = compress(model, "inter", vocab=vocab, threshold=0.1)
    with torch.inference_mode():
        cmodel(pixels)
    return cmodel.last_token_counts.numpy() / (model.patch_embed.num_patches + model.num_prefix_tokens)


@pytest.mark.slow
def test_default_scenes_spread_like_real_photos(tmp_path):
    folder = write_demo_images(tmp_path, count=32, size=256, seed=0)  # the scenes `--demo` writes
    kept = kept_fractions(folder)
    summary = f"kept min {kept.min():.2f} mean {kept.mean():.2f} max {kept.max():.2f}"
    assert kept.min() <= 0.20, summary  # mostly flat scenes (photos: 20/197 = 0.10)
    assert kept.max() >= 0.95, summary  # busy scenes keep nearly everything (photos: 197/197)
    assert 0.45 <= kept.mean() <= 0.70, summary  # photos: 116/197 = 0.59
    fifths, _ = np.histogram(kept, bins=5, range=(0.0, 1.0))
    assert fifths.min() >= 1 and fifths.max() <= 0.4 * len(kept), f"{summary}; per fifth {fifths.tolist()}"
    # and the spread comes from the scenes' busyness, not from chance
    busy = np.array([scene_busyness(0, i) for i in range(32)])
    assert np.corrcoef(busy, kept)[0, 1] >= 0.8, summary
