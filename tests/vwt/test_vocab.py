import json

import pytest
import torch
from PIL import Image

import vwt_export as vx
from vwt_export.vwt.vocab import StreamingKMeans

from ..conftest import blocky_images


def test_kmeans_recovers_well_separated_clusters():
    g = torch.Generator().manual_seed(0)
    means = torch.randn(8, 16, generator=g) * 10
    stream = [means[torch.randint(8, (500,), generator=g)] + 0.1 * torch.randn(500, 16, generator=g) for _ in range(6)]
    km = StreamingKMeans(8, seed=1)
    for batch in stream:
        km.partial_fit(batch)
    centers = km.finish()
    # every true mean has a learned centre close to it (a one-to-one match for separated blobs)
    d = torch.cdist(means, centers)
    assert d.min(1).values.max() < 0.05
    assert sorted(d.argmin(1).tolist()) == list(range(8))


def test_kmeans_is_seeded_and_refuses_too_few_points():
    x = torch.randn(300, 4, generator=torch.Generator().manual_seed(0))
    runs = []
    for _ in range(2):
        km = StreamingKMeans(10, seed=3)
        km.partial_fit(x)
        runs.append(km.finish())
    assert torch.equal(runs[0], runs[1])
    km = StreamingKMeans(10, seed=3)
    km.partial_fit(x[:7])
    with pytest.raises(vx.VWTError, match="only 7 patches, fewer than the 10 words"):
        km.finish()


@pytest.fixture(scope="module")
def small_model():
    return vx.load_model("deit_t", weights="random", img_size=32, depth=1, num_classes=5)


def test_learn_from_a_folder_of_ten_images_save_and_load(tmp_path, small_model):
    x = blocky_images(10, 32, cells=4)
    for i in range(10):
        Image.fromarray((x[i].permute(1, 2, 0).clamp(-2, 2) * 60 + 128).byte().numpy()).save(tmp_path / f"{i}.png")
    vocab = vx.learn_vocabulary(small_model, tmp_path, size=12, progress=False)
    assert vocab.words.shape == (12, 3 * 16 * 16) and vocab.patch_size == 16 and vocab.space == "image"
    assert vocab.meta["source"]["images"] == 10 and vocab.meta["source"]["patches"] == 40
    path = vocab.save(tmp_path / "v.safetensors")
    loaded = vx.Vocabulary.load(path)
    assert torch.equal(loaded.words, vocab.words)
    assert (loaded.space, loaded.patch_size, loaded.mean, loaded.std) == ("image", 16, vocab.mean, vocab.std)
    assert loaded.meta["source"]["calib"] == str(tmp_path)
    loaded.check_compatible(small_model)


def test_embed_space_vocab(small_model):
    vocab = vx.learn_vocabulary(small_model, [blocky_images(4, 32, cells=4)], size=3, space="embed", progress=False)
    assert vocab.words.shape == (3, small_model.embed_dim)
    vocab.check_compatible(small_model)


def test_reference_vocab_pt_loads(tmp_path, small_model):
    words = torch.randn(20, 3 * 16 * 16, dtype=torch.float64)  # the reference saves sklearn's float64 centres
    torch.save(words, tmp_path / "vocab.pt")
    vocab = vx.Vocabulary.load(tmp_path / "vocab.pt")
    assert vocab.patch_size == 16 and vocab.mean is None and vocab.words.dtype == torch.float32
    torch.testing.assert_close(vocab.words, words.float())
    vocab.check_compatible(small_model)


def test_reference_vocab_with_impossible_width(tmp_path):
    torch.save(torch.randn(5, 700), tmp_path / "vocab.pt")
    with pytest.raises(vx.VWTError, match="not 3\\*p\\*p"):
        vx.Vocabulary.load(tmp_path / "vocab.pt")


def test_bad_vocabularies_are_refused(tmp_path, small_model):
    cases = {
        "nan": (torch.full((4, 768), float("nan")), "NaN"),
        "zero": (torch.zeros(4, 768), "all zeros"),
        "one_d": (torch.ones(768), "\\[V, F\\] matrix"),
    }
    for name, (words, msg) in cases.items():
        torch.save(words, tmp_path / f"{name}.pt")
        with pytest.raises(vx.VWTError, match=msg):
            vx.Vocabulary.load(tmp_path / f"{name}.pt")
    (tmp_path / "corrupt.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage")
    with pytest.raises(vx.VWTError, match="corrupt or unreadable"):
        vx.Vocabulary.load(tmp_path / "corrupt.safetensors")
    with pytest.raises(vx.VWTError, match="no such vocabulary"):
        vx.Vocabulary.load(tmp_path / "missing.safetensors")


def test_wrong_patch_size_width_and_normalisation_are_refused(small_model):
    with pytest.raises(vx.VWTError, match="patch size 14 but .* uses patch size 16"):
        vx.Vocabulary(torch.randn(4, 3 * 14 * 14), patch_size=14).check_compatible(small_model)
    with pytest.raises(vx.VWTError, match="are 3x16x16 = 768"):
        vx.Vocabulary(torch.randn(4, 700)).check_compatible(small_model)
    with pytest.raises(vx.VWTError, match="pixel mean"):
        vx.Vocabulary(torch.randn(4, 768), patch_size=16, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)).check_compatible(small_model)
    with pytest.raises(vx.VWTError, match="embeds to 192"):
        vx.Vocabulary(torch.randn(4, 100), space="embed").check_compatible(small_model)
    with pytest.raises(vx.VWTError, match="patch size 14"):
        vx.compress(small_model, "inter", vocab=vx.Vocabulary(torch.randn(4, 588), patch_size=14))


def test_save_is_atomic_and_keeps_the_old_file_on_failure(tmp_path, monkeypatch):
    good = vx.Vocabulary(torch.randn(4, 768), patch_size=16)
    path = good.save(tmp_path / "v.safetensors")
    before = path.read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr("safetensors.torch.save_file", boom)
    with pytest.raises(OSError):
        vx.Vocabulary(torch.randn(5, 768), patch_size=16).save(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["v.safetensors"]


def test_metadata_is_json_in_the_safetensors_header(tmp_path):
    from safetensors import safe_open

    path = vx.Vocabulary(torch.randn(4, 768), patch_size=16, meta={"model": "deit_s"}).save(tmp_path / "v.safetensors")
    with safe_open(str(path), "pt") as f:
        header = json.loads(f.metadata()["vwt_export"])
    assert header["format"] == "vwt-export/vocabulary" and header["size"] == 4 and header["model"] == "deit_s"


def test_the_learning_bar_ends_with_the_work_and_seeding_has_a_bar_of_its_own(tmp_path, small_model, monkeypatch):
    """The bar counted images as they were decoded, so it sat near 100% while the last batch was fitted and
    k-means++ seeded the words: seconds of silence on a real vocabulary."""
    import tqdm.auto

    from vwt_export.vwt import vocab as vocab_module

    x = blocky_images(6, 32, cells=4)
    for i in range(6):
        Image.fromarray((x[i].permute(1, 2, 0).clamp(-2, 2) * 60 + 128).byte().numpy()).save(tmp_path / f"{i}.png")
    (tmp_path / "z.png").write_bytes(b"not a png")
    events, real_tqdm, real_features = [], tqdm.auto.tqdm, vocab_module.patch_features

    class Recorder(real_tqdm):
        def update(self, n=1):
            super().update(n)
            events.append((self.desc, self.n, self.total))

    monkeypatch.setattr(tqdm.auto, "tqdm", Recorder)
    monkeypatch.setattr(vocab_module, "patch_features", lambda *a, **k: events.append("fit") or real_features(*a, **k))
    vx.learn_vocabulary(small_model, tmp_path, size=12, batch_size=4, progress=True)
    learning = [i for i, e in enumerate(events) if e != "fit" and e[0] == "learning vocabulary"]
    seeding = [e for e in events if e != "fit" and e[0].startswith("seeding k-means++")]
    last_fit = max(i for i, e in enumerate(events) if e == "fit")
    assert events[learning[-1]][1:] == (7, 7)  # every file, the unreadable one included
    assert all(events[i][1] < 7 for i in learning if i < last_fit)  # not full before the last batch is fitted
    assert seeding and seeding[-1][1:] == (12, 12)
