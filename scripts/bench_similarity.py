#!/usr/bin/env python3
"""How many word matches change against FP32 when the similarity MatMul ("vwt/similarity") is quantized, and when
it stays float (the default): random weights and the demo images, half calibrating (vocabulary and INT8 ranges),
half measured. The figures in vwt_export/graph/quantize.py's docstring come from it.

    python scripts/bench_similarity.py [deit_t] [--images 64] [--vocab-size 1000] [--threshold 0.1]
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vwt_export import models  # noqa: E402
from vwt_export.backends.onnxruntime import create_session  # noqa: E402
from vwt_export.data import iter_image_batches, list_images  # noqa: E402
from vwt_export.demo import write_demo_images  # noqa: E402
from vwt_export.graph import ops  # noqa: E402
from vwt_export.graph.export import export_model  # noqa: E402
from vwt_export.graph.quantize import quantize_int8  # noqa: E402
from vwt_export.graph.surgery import apply_vwt, make_portable  # noqa: E402
from vwt_export.vwt import learn_vocabulary  # noqa: E402
from vwt_export.vwt.features import image_patches  # noqa: E402
from vwt_export.vwt.inter import near_ties, normalized_words  # noqa: E402

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("model", nargs="?", default="deit_t")
ap.add_argument("--images", type=int, default=64)
ap.add_argument("--vocab-size", type=int, default=1000)
ap.add_argument("--threshold", type=float, default=0.1)
args = ap.parse_args()

model = models.load_model(args.model, weights="random")
with tempfile.TemporaryDirectory() as tmp:
    files = list_images(write_demo_images(tmp, count=args.images, size=256, seed=0))
    batches = [b for b, _ in iter_image_batches(files, models.transform(model), 16)]
pixels = torch.cat(batches)
calib, test = pixels[: len(pixels) // 2], pixels[len(pixels) // 2:]
vocab = learn_vocabulary(model, [calib], args.vocab_size, progress=False)
vwt = apply_vwt(export_model(model), "inter", vocab=vocab.words.numpy(), threshold=args.threshold,
                pooling=model.global_pool)
vwt.graph.output.append(onnx.helper.make_tensor_value_info(ops.KEYS_TENSOR, onnx.TensorProto.INT64, None))
forms = {"fp32": make_portable(vwt)}
for q in (False, True):
    forms[f"int8 (similarity {'quantized' if q else 'float'})"] = quantize_int8(
        vwt, [calib[i : i + 8].numpy() for i in range(0, len(calib), 8)], portable=True, quantize_similarity=q)
x = test.numpy()
out = {}
for form, m in forms.items():
    session = create_session(m)
    out[form] = session.run(None, {"pixels": x})
    start = time.perf_counter()
    for i in range(len(x)):
        session.run(None, {"pixels": x[i : i + 1]})
    out[form].append((time.perf_counter() - start) / len(x) * 1e3)
logits0, keys0, _ = out["fp32"]
matched = (keys0 < vocab.words.shape[0]).mean()
ties = near_ties(image_patches(test, models.patch_size(model)), normalized_words(vocab.words), args.threshold).numpy()
print(f"{args.model}, random weights, {len(x)} demo images, {vocab.words.shape[0]} words, threshold {args.threshold}: "
      f"{keys0.size} keys, {matched:.1%} matched, {int(ties.sum())} near ties ({ties.mean():.2%})")
for form, (logits, keys, ms) in out.items():
    cos = float((logits * logits0).sum() / np.sqrt((logits ** 2).sum() * (logits0 ** 2).sum()))
    changed = keys != keys0
    print(f"  {form:30s} keys changed {int(changed.sum()):5d} ({changed.mean():.2%}; "
          f"{int((changed & ties).sum())} at near ties), logits cosine to FP32 {cos:.4f}, "
          f"{ms:.1f} ms/image (batch 1, portable form, shared CPU: indicative only)")
