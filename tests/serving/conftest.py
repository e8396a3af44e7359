"""A tiny exported model folder (model.onnx, model.vwt.onnx, portable form, tokenize + trunk stages) for the serving
tests, and images whose VWT token counts differ widely, so the length-aware path really splits batches."""

import itertools

import numpy as np
import pytest

SIZE, PATCH = 64, 16  # 4 x 4 patches + a class token: 2 to 17 tokens per image
COLOURS = np.array([[1.0, -1.0, 0.5], [-1.0, 1.0, 0.3], [0.2, 0.4, -1.0], [-0.6, -0.7, -0.9]], np.float32)


def mixed_images(busy, seed=0):
    """Four flat colour quadrants (each matches one visual word) with busy[i] of the 16 patches replaced by noise
    (which matches nothing): image i keeps from 5 (busy 0) to 17 (busy 16) tokens."""
    rng = np.random.default_rng(seed)
    grid, half = SIZE // PATCH, SIZE // 2
    out = np.empty((len(busy), 3, SIZE, SIZE), np.float32)
    for i, k in enumerate(busy):
        img = np.empty((3, SIZE, SIZE), np.float32)
        for q, (r, c) in enumerate(itertools.product((0, half), (0, half))):
            img[:, r:r + half, c:c + half] = COLOURS[q][:, None, None]
        img += 0.01 * rng.standard_normal(img.shape).astype(np.float32)
        for n in rng.permutation(grid * grid)[:k]:
            r, c = divmod(int(n), grid)
            img[:, r * PATCH:(r + 1) * PATCH, c * PATCH:(c + 1) * PATCH] = rng.standard_normal((3, PATCH, PATCH))
        out[i] = img
    return out


@pytest.fixture(scope="session")
def export_dir(tmp_path_factory):
    import vwt_export as vx
    from vwt_export.graph.export import export_model, save_model
    from vwt_export.graph.stages import split_stages, stage_files
    from vwt_export.graph.surgery import apply_vwt, make_portable

    out = tmp_path_factory.mktemp("export")
    model = vx.load_model("vit_tiny_patch16_224", weights="random", img_size=SIZE, depth=1, num_classes=10)
    base = export_model(model)
    save_model(base, out / "model.onnx")
    words = np.repeat(COLOURS, PATCH * PATCH, axis=1)  # one word per quadrant colour, image-space features
    vwt = apply_vwt(base, "inter", vocab=words, threshold=0.1, pooling=model.global_pool)
    save_model(vwt, out / "model.vwt.onnx")
    save_model(make_portable(vwt), out / "model.vwt.portable.onnx")
    for stage, name in zip(split_stages(vwt), stage_files("model.vwt.onnx")):
        save_model(stage, out / name)
    return out
