"""Reduced decoding of large images against a full decode, for each REDUCED_MARGIN: the scale each image is decoded
at, the time, the pixel difference after the model's transform, and (with --weights) the cosine between the model's
features of the two decodes. This is how vwt_export.data.REDUCED_MARGIN was chosen.

    PYTHONPATH=. .venv/bin/python scripts/bench_decode.py --images DIR [DIR ...] \\
        [--model vit_small_patch14_dinov2 --model-arg img_size=224 --model-arg num_classes=0 --weights CKPT] \\
        [--margins 1,2,3,4]

--images: folders searched recursively for JPEGs of at least --min-side pixels on their shorter side (the photos
the issue asked for are the originals of the real-data crops, e.g. the Debian wallpaper packages' 2560x1600
photographs and 5120x2880 JPEGs). Without --images, built-in scenes enlarged to --size (synthetic: smooth, so
they flatter reduced decoding).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from PIL import Image  # noqa: E402

import vwt_export as vx  # noqa: E402
from vwt_export import data  # noqa: E402
from vwt_export.demo import write_demo_images  # noqa: E402
from vwt_export.models import transform  # noqa: E402


def best_of(fn, n=3):
    times = []
    for _ in range(n):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return out, min(times)


def large_jpegs(folders: list[Path], min_side: int) -> list[Path]:
    found = []
    for folder in folders:
        for path in sorted(folder.rglob("*")):
            if path.suffix.lower() in (".jpg", ".jpeg") and path.is_file():
                with Image.open(path) as im:
                    if min(im.size) >= min_side:
                        found.append(path)
    return found


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", nargs="*", type=Path, default=[])
    ap.add_argument("--min-side", type=int, default=1000, help="shorter side of the JPEGs taken from --images")
    ap.add_argument("--size", default="2400x1800", help="without --images: the scenes' size")
    ap.add_argument("--model", default="vit_small_patch14_dinov2")
    ap.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--weights", default="random", help="a checkpoint: also compare the model's features")
    ap.add_argument("--margins", default="1,2,3,4")
    args = ap.parse_args()
    model_args = {k: int(v) if v.isdigit() else v for k, v in (a.split("=", 1) for a in args.model_arg)}
    model = vx.load_model(args.model, weights=args.weights, **model_args).eval()
    tf = transform(model)
    target = data.resize_target(tf)
    margins = [int(m) for m in args.margins.split(",")]
    features = args.weights != "random"
    with tempfile.TemporaryDirectory() as tmp:
        if args.images:
            paths = large_jpegs(args.images, args.min_side)
        else:
            w, h = (int(v) for v in args.size.split("x"))
            scenes = sorted(write_demo_images(Path(tmp) / "s", count=4, size=max(w, h) // 4, seed=2).glob("*.png"))
            paths = []
            for scene in scenes:
                paths.append(Path(tmp) / f"{scene.stem}.jpg")
                Image.open(scene).convert("RGB").resize((w, h)).save(paths[-1], quality=92)
        print(f"{len(paths)} JPEGs; {args.model} {model_args}, resize to {target}; weights {args.weights}")
        rows = {m: [] for m in margins}
        for path in paths:
            full, t_full = best_of(lambda: tf(Image.open(path).convert("RGB")))
            f_full = model(full[None]) if features else None
            for m in margins:
                data.REDUCED_MARGIN = m
                with Image.open(path) as im:
                    k = data.reduction(im.size, target)
                reduced, t_red = best_of(lambda: tf(data.load_image(path, target)))
                levels = ((full - reduced).abs() * torch.as_tensor(tf.transforms[-1].std)[:, None, None] * 255)
                cos = float(torch.nn.functional.cosine_similarity(f_full, model(reduced[None])).item()) if features \
                    else float("nan")
                rows[m].append((k, t_full / t_red, float(levels.max()), float(levels.mean()), cos))
                print(f"  {path.name} {Image.open(path).size} margin {m}: 1/{k}, "
                      f"{t_full * 1e3:.0f} -> {t_red * 1e3:.0f} ms, max |diff| {levels.max():.1f}, mean "
                      f"{levels.mean():.3f} levels, feature cosine {cos:.5f}", flush=True)
    print("\nmargin  reduced  speed-up (median)  max |diff| (worst)  mean |diff| (mean)  cosine (worst, mean)")
    for m, r in rows.items():
        reduced = [x for x in r if x[0] > 1]
        print(f"{m:6d}  {len(reduced):3d}/{len(r):<3d}  {statistics.median(x[1] for x in r):17.2f}x  "
              f"{max(x[2] for x in r):18.1f}  {statistics.fmean(x[3] for x in r):18.3f}  "
              f"{min(x[4] for x in r):.5f}, {statistics.fmean(x[4] for x in r):.5f}")


if __name__ == "__main__":
    with torch.inference_mode():
        main()
