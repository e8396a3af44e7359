"""Length-aware batching (runtime.load of a tokenize stage): the sub-batch plan is the cost model's optimum, and the
logits equal per-image runs of the one-graph model, in the input order, on images whose token counts differ widely."""

import itertools

import numpy as np
import pytest
import torch

import vwt_export as vx
from vwt_export import runtime
from vwt_export.graph.export import export_model, save_model
from vwt_export.graph.stages import split_stages, stage_files
from vwt_export.graph.surgery import apply_vwt

SIZE, PATCH = 64, 16  # a 4 x 4 patch grid, one class token: 2 to 17 tokens per image
COLOURS = np.array([[1.0, -1.0, 0.5], [-1.0, 1.0, 0.3], [0.2, 0.4, -1.0], [-0.6, -0.7, -0.9]], np.float32)


def mixed_images(busy: list[int], seed: int = 0) -> np.ndarray:
    """Images of four flat colour quadrants (each 2 x 2 patches), with busy[i] of their 16 patches replaced by
    noise: a flat patch matches its colour's word, a noise patch matches nothing. Image i keeps 1 + (colours
    with a flat patch left) + busy[i] tokens: from 5 (of 17) to 17."""
    rng = np.random.default_rng(seed)
    grid = SIZE // PATCH
    out = np.empty((len(busy), 3, SIZE, SIZE), np.float32)
    for i, k in enumerate(busy):
        img = np.empty((3, SIZE, SIZE), np.float32)
        half = SIZE // 2
        for q, (r, c) in enumerate(itertools.product((0, half), (0, half))):
            img[:, r : r + half, c : c + half] = COLOURS[q][:, None, None]
        img += 0.01 * rng.standard_normal(img.shape).astype(np.float32)
        for n in rng.permutation(grid * grid)[:k]:
            r, c = divmod(int(n), grid)
            img[:, r * PATCH : (r + 1) * PATCH, c * PATCH : (c + 1) * PATCH] = rng.standard_normal((3, PATCH, PATCH))
        out[i] = img
    return out


def colour_vocabulary() -> vx.Vocabulary:
    """One word per quadrant colour: the image-space feature of a flat patch, (c, ph, pw) order."""
    return vx.Vocabulary(torch.from_numpy(np.repeat(COLOURS, PATCH * PATCH, axis=1)), patch_size=PATCH)


THRESHOLD = 0.1


@pytest.fixture(scope="module")
def stage_dir(tmp_path_factory):
    """model.vwt.onnx and its two stages (custom-op form) in one folder."""
    model = vx.load_model("vit_tiny_patch16_224", weights="random", img_size=SIZE, depth=2)
    vwt = apply_vwt(export_model(model), "inter", vocab=colour_vocabulary().words.numpy(), threshold=THRESHOLD,
                    pooling=model.global_pool)
    folder = tmp_path_factory.mktemp("stages")
    save_model(vwt, folder / "model.vwt.onnx")
    for stage, name in zip(split_stages(vwt), stage_files("model.vwt.onnx")):
        save_model(stage, folder / name)
    return folder


def per_image(folder, x):
    """The one-graph model run on each image alone: no padding anywhere, the independent reference."""
    f = runtime.load(folder / "model.vwt.onnx", stages=False)
    return np.concatenate([f(x[i : i + 1]) for i in range(len(x))])


def counts_of(folder, x):
    tokenize, _ = runtime.ort_stages(folder / "model.vwt.tokenize.onnx")
    return tokenize(x)[2]


BUSY = [16, 0, 9, 2, 14, 5, 11, 1]  # shuffled, so the length order is not the input order


def test_the_scenes_token_counts_spread_widely(stage_dir):
    counts = counts_of(stage_dir, mixed_images(BUSY))
    assert counts.min() <= 0.3 * 17 and counts.max() == 17  # ~10% (5 of 17: all merged) to 100% kept
    assert len(set(counts.tolist())) >= 6


@pytest.mark.parametrize("call_overhead", [0.0, 8.0, runtime.CALL_OVERHEAD_TOKENS])
@pytest.mark.parametrize("batch", [1, 3, 8])
def test_length_aware_equals_per_image_in_input_order(stage_dir, batch, call_overhead):
    x = mixed_images(BUSY[:batch], seed=batch)
    f = runtime.load(stage_dir / "model.vwt.tokenize.onnx", call_overhead=call_overhead)
    got = f(x)
    expected = per_image(stage_dir, x)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())
    assert np.abs(got[:, None] - expected[None]).max(-1).argmin(1).tolist() == list(range(batch))  # input order
    if batch == 8 and call_overhead < runtime.CALL_OVERHEAD_TOKENS:  # the test exercises what it should:
        plan = f.plan(x)  # several sub-batches, each sliced to its own length, some holding images out of order
        assert len(plan) >= 2 and any(len(g) > 1 and (np.diff(g) < 0).any() for g in plan) == (call_overhead > 0)


def test_the_one_graph_loads_length_aware_when_its_stages_lie_beside_it(stage_dir, tmp_path):
    x = mixed_images(BUSY, seed=3)
    f = runtime.load(stage_dir / "model.vwt.onnx")
    assert f.kind == "length-aware" and len(f.plan(x)) >= 2
    np.testing.assert_allclose(f(x), per_image(stage_dir, x), rtol=1e-5, atol=1e-5)
    assert runtime.load(stage_dir / "model.vwt.onnx", stages=False).kind != "length-aware"
    alone = tmp_path / "model.vwt.onnx"  # no stages beside it: the one graph, or an error when they are required
    alone.write_bytes((stage_dir / "model.vwt.onnx").read_bytes())
    assert runtime.load(alone).kind != "length-aware"
    with pytest.raises(vx.VWTError, match="no stage pair beside it"):
        runtime.load(alone, stages=True)


def brute_force_cost(counts, overhead):
    """The cheapest split of the sorted counts into contiguous runs, by trying every split."""
    s = sorted(counts)
    best = np.inf
    for mask in range(2 ** (len(s) - 1)):
        cuts = [0] + [i + 1 for i in range(len(s) - 1) if mask >> i & 1] + [len(s)]
        best = min(best, sum(overhead + (b - a) * s[b - 1] for a, b in zip(cuts, cuts[1:])))
    return best


def plan_cost(groups, counts, overhead):
    return sum(overhead + len(g) * counts[g].max() for g in groups)


@pytest.mark.parametrize("overhead", [0.0, 5.0, 40.0, 1e6])
def test_plan_is_the_cost_models_optimum(overhead):
    rng = np.random.default_rng(int(overhead) % 97)
    for _ in range(20):
        counts = rng.integers(5, 200, size=int(rng.integers(1, 9)))
        groups = runtime.plan_batches(counts, overhead)
        assert sorted(np.concatenate(groups).tolist()) == list(range(len(counts)))  # every image exactly once
        assert plan_cost(groups, counts, overhead) == pytest.approx(brute_force_cost(counts, overhead))
    if overhead == 1e6:
        assert len(runtime.plan_batches(np.array([5, 200, 9]), overhead)) == 1  # huge overhead: one padded batch


def test_missing_trunk_is_a_clear_error(stage_dir, tmp_path):
    lonely = tmp_path / "model.vwt.tokenize.onnx"
    lonely.write_bytes((stage_dir / "model.vwt.tokenize.onnx").read_bytes())
    with pytest.raises(vx.VWTError, match=r"model\.vwt\.trunk\.onnx: the trunk stage of model\.vwt\.onnx is missing"):
        runtime.load(lonely)
    with pytest.raises(vx.VWTError, match="load model.vwt.tokenize.onnx"):
        runtime.load(stage_dir / "model.vwt.trunk.onnx")
    with pytest.raises(vx.VWTError, match="call_overhead must be >= 0"):
        runtime.load(stage_dir / "model.vwt.tokenize.onnx", call_overhead=-1)
    with pytest.raises(vx.VWTError, match=r"expected pixels \[B, C, H, W\]"):
        runtime.load(stage_dir / "model.vwt.tokenize.onnx")(np.zeros((3, SIZE, SIZE), np.float32))


def test_any_stage_callables_slot_in():
    """length_aware takes plain callables (as a TensorRT trunk engine would be): each trunk call gets its sub-batch
    sliced to the sub-batch's own longest count, and the outputs come back in the input order."""
    rng = np.random.default_rng(0)
    counts = np.array([7, 2, 30, 2, 19, 30, 5, 11])
    tokens = rng.standard_normal((8, 30, 4)).astype(np.float32)
    sizes = (np.arange(30)[None] < counts[:, None]).astype(np.float32)
    calls = []

    def trunk(t, s):
        real = (s > 0).sum(1)
        calls.append((t.shape[1], int(real.max())))
        return (t * (s > 0)[..., None]).sum(1)  # any per-image function of the real tokens

    f = runtime.length_aware(lambda x: (tokens[: len(x)], sizes[: len(x)], counts[: len(x)]), trunk, call_overhead=20)
    got = f(np.zeros((8, 3, 4, 4), np.float32))
    np.testing.assert_allclose(got, (tokens * sizes[..., None]).sum(1), rtol=1e-6)
    assert len(calls) > 1 and all(length == longest for length, longest in calls)
