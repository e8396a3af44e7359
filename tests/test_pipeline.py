"""`vx.export`: the pipeline as a library, with the CLI's checks for Python callers."""

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import vwt_export as vx
from vwt_export.demo import write_demo_images

README = Path(__file__).parents[1] / "README.md"


def readme_example() -> str:
    section = README.read_text().split("## Python API", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.slow
def test_the_readme_example_runs_as_pasted(tmp_path):
    r = subprocess.run([sys.executable, "-c", readme_example()], cwd=tmp_path, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = r.stdout.splitlines()
    assert lines[0] == str(Path("vwt-out/tiny/model.vwt.onnx"))
    assert [line.split()[0] for line in lines[2:6]] == ["fp32", "int8", "vwt", "vwt+int8"]
    report = json.loads((tmp_path / "vwt-out/tiny/report.json").read_text())
    assert report["command"].startswith("vwt_export.export('vit_tiny_patch16_224', weights='random'")


@pytest.mark.parametrize("options, message", [
    ({"threshold": 2.5}, "threshold=2.5 is out of range"),
    ({"mode": "intra", "keep": 1.5}, "keep=1.5 is out of range"),
    ({"mode": "intra", "keep": "lots"}, "--keep lots"),
    ({"mode": "intra", "grouping": "global"}, "grouping='global' applies to inter and hybrid modes only, not 'intra'"),
    ({"mode": "fancy"}, "mode='fancy' is not one of none, intra, inter"),
    ({"vocab_size": 0}, "vocab_size=0"),
    ({"batches": "0,8"}, "batch sizes"),
    ({"backend": "tensorflow"}, "backend='tensorflow'"),
    ({"calib": None, "val": "v"}, "inter mode needs a vocabulary"),
    ({"mode": "intra", "calib": None}, "the checks need images"),
    ({"trt_target": "SM89"}, "needs backend='trt'"),
])
def test_python_callers_get_the_same_checks_as_the_cli(options, message):
    with pytest.raises(vx.VWTError, match=re.escape(message)):
        vx.ExportConfig.from_options("deit_s", **{"calib": "c", **options})


def test_the_config_is_frozen_and_grouped():
    cfg = vx.ExportConfig.from_options("deit_s", calib="c", threshold=0.2, batches="8,1")
    assert cfg.compression.threshold == 0.2 and cfg.checks.batches == (1, 8) and cfg.out == Path("vwt-out/deit_s-inter")
    with pytest.raises(AttributeError):
        cfg.compression.threshold = 0.3  # type: ignore[misc]
    assert cfg.replace(out=Path("elsewhere")).out == Path("elsewhere") and cfg.out == Path("vwt-out/deit_s-inter")


TINY = dict(weights="random", model_args={"img_size": 64, "depth": 1, "num_classes": 10}, progress=False)


def test_unreadable_images_fail_before_any_slow_work(tmp_path, monkeypatch):
    """A folder of broken files used to run k-means first; now nothing is loaded or learned."""
    (tmp_path / "broken").mkdir()
    for i in range(3):
        (tmp_path / "broken" / f"{i}.jpg").write_bytes(b"not an image")
    slow = []
    monkeypatch.setattr("vwt_export.models.load_model", lambda *a, **k: slow.append("load") or 1 / 0)
    with pytest.raises(vx.VWTError, match="none of the 3 image files could be read"):
        vx.export("vit_tiny_patch16_224", calib=tmp_path / "broken", **TINY)
    assert slow == []


@pytest.mark.slow
def test_a_headless_model_is_checked_by_feature_cosine(tmp_path):
    images = write_demo_images(tmp_path / "imgs", count=4, size=64)
    result = vx.export("vit_tiny_patch16_224", weights="random", progress=False, mode="intra", keep=8, val=images,
                       model_args={"img_size": 64, "depth": 1, "num_classes": 0}, batches=[1], reps=1,
                       out=tmp_path / "out")
    assert result.report["model"]["headless"] is True
    vwt = result.report["variants"]["vwt"]
    assert vwt["fidelity"]["top1_agreement"] is None and vwt["accuracy"] is None
    assert 0.0 < vwt["fidelity"]["cosine_similarity"] <= 1.0 + 1e-6
    assert result.torch_check["top1_agreement"] is None and result.torch_check["cosine_similarity"] > 0
    md = (tmp_path / "out" / "report.md").read_text()
    assert "n/a (no classifier head)" in md
    assert any("no classifier head" in m["why"] for m in result.not_measured)


def test_files_and_variants_are_named_in_one_place():
    from vwt_export.artefacts import Variant

    names = {(v.name, v.onnx_file(), v.onnx_file(portable=True), v.engine_file())
             for v in (Variant("", "fp32"), Variant("vwt", "int8"), Variant("vwt", "fp16"))}
    assert names == {("fp32", "model.onnx", "model.onnx", "model.fp32.engine"),
                     ("vwt+int8", "model.vwt.int8.onnx", "model.vwt.int8.portable.onnx", "model.vwt.int8.engine"),
                     ("vwt+fp16", "model.vwt.fp16.onnx", "model.vwt.fp16.portable.onnx", "model.vwt.fp16.engine")}


@pytest.mark.slow
def test_tokens_are_measured_on_each_graph(tmp_path):
    """The INT8 graph's tokens come from its own TokenMerge, not from the torch path."""
    images = write_demo_images(tmp_path / "imgs", count=6, size=64)
    result = vx.export("vit_tiny_patch16_224", calib=images, vocab_size=16, batches=[1], reps=1,
                       out=tmp_path / "out", triton=True, **TINY)
    assert (tmp_path / "out" / "triton" / "vwt_python" / "config.pbtxt").is_file()
    variants = result.report["variants"]
    torch_counts = result.torch_check["counts"]
    assert variants["vwt"]["tokens"]["counts"] == torch_counts
    assert len(variants["vwt+int8"]["tokens"]["counts"]) == len(torch_counts)
    assert variants["fp32"]["tokens"]["mean"] == 17 and torch.tensor(torch_counts).max() <= 17
    assert "plots/merges.png" in result.report["plots"] and (tmp_path / "out" / "plots" / "merges.png").is_file()


def test_merge_overlay_tints_exactly_the_merged_patches():
    import numpy as np

    from vwt_export.check.merges import overlay

    image = np.zeros((4, 6, 3))
    labels = np.array([0, 0, 1, 2, 3, 3])  # a 2 x 3 grid of 2 x 2 patches: groups 0 and 3 merged, 1 and 2 alone
    out = overlay(image, labels, (2, 3))
    tinted = out.reshape(2, 2, 3, 2, 3).any(axis=(1, 3, 4))
    assert tinted.tolist() == [[True, True, False], [False, True, True]]


@pytest.mark.slow
def test_a_sweep_ranks_every_setting_on_the_same_images(tmp_path):
    images = write_demo_images(tmp_path / "imgs", count=6, size=64)
    result = vx.export("vit_tiny_patch16_224", calib=images, vocab_size=16, batches=[1], reps=2,
                       sweep=["threshold=0.05,0.3", "grouping=global,local", "keep=0.5", "r=2"], out=tmp_path / "out",
                       **TINY)
    sweep = result.report["sweep"]
    labels = {r["label"] for r in sweep["ranked"]}
    assert labels == {"fp32", "int8", "vwt global t=0.05", "vwt local t=0.05", "vwt global t=0.3", "vwt local t=0.3",
                      "intra keep=0.5", "tome r=2", "hybrid t=0.05 r=2", "hybrid t=0.3 r=2"}  # threshold, r: hybrid's too
    rows = {r["label"]: r for r in sweep["ranked"]}
    assert rows["fp32"]["quality"] == pytest.approx(1.0, abs=1e-6)
    variants = result.report["variants"]  # one evaluation pass and one timing run: the main table's figures, repeated
    for name in ("fp32", "int8"):
        assert rows[name]["latency_ms"] == variants[name]["latency"][1]["p50_ms"]
    assert rows["int8"]["quality"] == variants["int8"]["fidelity"]["cosine_similarity"]
    for r in rows.values():  # the front: no other setting at least as fast and better; off it, one is
        others = [o for o in rows.values() if o is not r]
        beaten = any(o["latency_ms"] <= r["latency_ms"] and o["quality"] >= r["quality"] for o in others)
        assert r["pareto"] != beaten or r["pareto"] and not any(
            o["latency_ms"] < r["latency_ms"] and o["quality"] > r["quality"] for o in others), r
    assert rows["intra keep=0.5"]["tokens"] == 1 + 8 and rows["tome r=2"]["tokens"] == 17  # 1 block: merges after it
    # local grouping merges only touching patches: never fewer tokens than global at the same threshold
    assert rows["vwt local t=0.3"]["tokens"] >= rows["vwt global t=0.3"]["tokens"]
    assert rows["vwt global t=0.3"]["tokens"] <= rows["vwt global t=0.05"]["tokens"]
    qualities = [r["quality"] for r in sweep["ranked"]]
    assert qualities == sorted(qualities, reverse=True)
    assert (tmp_path / "out" / "plots" / "tradeoff.png").is_file()
    assert "## Trade-off sweep" in (tmp_path / "out" / "report.md").read_text()
    assert all(result.verification[f"sweep/{Path(r['file']).name}"]["verified"] for r in sweep["ranked"]
               if r["file"].startswith("sweep/"))


def test_pareto_front_and_sweep_parsing():
    from vwt_export.check.sweep import pareto_front
    from vwt_export.methods import parse_sweep as parse

    assert pareto_front([(10, 0.9), (5, 0.95), (7, 0.99), (3, 0.5), (8, 0.98)]) == [3, 1, 2]
    assert parse(["threshold=0.05,0.1", "r=8", "keep=0.5,147"]) == {"threshold": (0.05, 0.1), "r": (8,),
                                                                     "keep": (0.5, 147)}
    for bad in ("threshold=3", "speed=1", "r=-1", "grouping=blobs", "threshold"):
        with pytest.raises(vx.VWTError, match="--sweep"):
            parse([bad])


@pytest.mark.slow
def test_tome_mode_exports_quantizes_and_measures_like_the_vwt_modes(tmp_path):
    images = write_demo_images(tmp_path / "imgs", count=4, size=64)
    result = vx.export("vit_tiny_patch16_224", mode="tome", r=3, calib=images, batches=[1], reps=1,
                       out=tmp_path / "out", **{**TINY, "model_args": {"img_size": 64, "depth": 2, "num_classes": 10}})
    assert {g.path.name for g in result.graphs} == {"model.onnx", "model.tome.onnx", "model.int8.onnx",
                                                   "model.tome.int8.onnx"}
    assert result.verification["model.tome.onnx"]["verified"]
    variants = result.report["variants"]
    assert list(variants) == ["fp32", "int8", "tome", "tome+int8"]
    # 17 tokens in; block 0 sees 17, block 1 sees 14: ToMe's tokens per block are N + P - r * i
    assert variants["tome"]["tokens"]["mean"] == variants["tome+int8"]["tokens"]["mean"] == (17 + 14) / 2
    assert result.report["settings"]["block_tokens"] == [17, 14]
    assert variants["tome"]["method"] == "tome" and variants["tome"]["merge_share"] is None


@pytest.mark.slow
def test_inter_runs_write_the_two_stages_and_time_batches_length_aware(tmp_path):
    images = write_demo_images(tmp_path / "imgs", count=6, size=64)
    result = vx.export("vit_tiny_patch16_224", calib=images, vocab_size=16, batches=[1, 4], reps=1,
                       out=tmp_path / "out", **TINY)
    names = {g.path.name for g in result.graphs if g.stage}
    assert names == {"model.vwt.tokenize.onnx", "model.vwt.trunk.onnx", "model.vwt.int8.tokenize.onnx",
                     "model.vwt.int8.trunk.onnx"}
    assert result.verification["model.vwt.tokenize.onnx"]["verified"]
    variants = result.report["variants"]
    assert variants["vwt"]["batching"].startswith("length-aware") and variants["fp32"]["batching"] == "padded"
    assert "length-aware batching" in (tmp_path / "out" / "report.md").read_text()
    model = vx.load_model("vit_tiny_patch16_224", weights="random", img_size=64, depth=1, num_classes=10)
    x = np.stack([vx.models.transform(model)(Image.open(p).convert("RGB")) for p in sorted(images.glob("*.png"))])
    staged = vx.runtime.load(tmp_path / "out" / "model.vwt.tokenize.onnx")(x)
    one = vx.runtime.load(result.graph("vwt"))
    per_image = np.concatenate([one(x[i : i + 1]) for i in range(len(x))])
    np.testing.assert_allclose(staged, per_image, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_a_local_grouping_run_can_sweep_intra_settings(tmp_path):
    images = write_demo_images(tmp_path / "imgs", count=4, size=64)
    result = vx.export("vit_tiny_patch16_224", calib=images, vocab_size=16, grouping="local", sweep=["keep=0.5"],
                       batches=[1], reps=1, skip_int8=True, out=tmp_path / "out", **TINY)
    assert {r["label"] for r in result.report["sweep"]["ranked"]} == {"fp32", "intra keep=0.5"}


@pytest.mark.slow
def test_an_image_corrupt_past_its_header_is_skipped_and_labels_stay_aligned(tmp_path):
    """Headers are checked up front; a file whose data is truncated fails only when decoded. Its label must go too."""
    scenes = sorted(write_demo_images(tmp_path / "scenes", count=4, size=64).glob("*.png"))
    for i, src in enumerate(scenes):
        (tmp_path / "val" / str(i % 2)).mkdir(parents=True, exist_ok=True)
        data = src.read_bytes()
        (tmp_path / "val" / str(i % 2) / src.name).write_bytes(data[: len(data) // 3] if i == 0 else data)
    result = vx.export("vit_tiny_patch16_224", mode="intra", keep=8, val=tmp_path / "val", batches=[1], reps=1,
                       out=tmp_path / "out", **TINY)
    fp32 = result.report["variants"]["fp32"]
    assert fp32["accuracy"] is not None and len(fp32["tokens"]["counts"]) == 3
