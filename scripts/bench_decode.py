"""Reduced decoding of large images, side by side with a full decode: time and the largest pixel difference after
the model's transform. Built-in scenes enlarged to W x H and saved as JPEG (no photos needed).

    .venv/bin/python scripts/bench_decode.py [--size 2400x1800] [--image-size 64] [--scenes 4]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from PIL import Image  # noqa: E402
from timm.data import create_transform  # noqa: E402

from vwt_export import data  # noqa: E402
from vwt_export.demo import write_demo_images  # noqa: E402


def best_of(fn, n=3):
    times = []
    for _ in range(n):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return out, min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="2400x1800")
    ap.add_argument("--image-size", type=int, default=64, help="the model's input size (64: a tiny test model)")
    ap.add_argument("--scenes", type=int, default=4)
    args = ap.parse_args()
    w, h = (int(v) for v in args.size.split("x"))
    tf = create_transform(input_size=(3, args.image_size, args.image_size), interpolation="bicubic", crop_pct=0.9,
                          mean=(0.5,) * 3, std=(0.5,) * 3)
    target = data.resize_target(tf)
    print(f"{w}x{h} JPEG, model input {args.image_size} (resize to {target}): reduction 1/{data.reduction((w, h), target)}")
    print("scene  full ms  reduced ms  speed-up  max |diff| (of 255 levels)  mean |diff|")
    with tempfile.TemporaryDirectory() as tmp:
        scenes = sorted(write_demo_images(Path(tmp) / "s", count=args.scenes, size=max(w, h) // 4, seed=2).glob("*.png"))
        for scene in scenes:
            path = Path(tmp) / "big.jpg"
            Image.open(scene).convert("RGB").resize((w, h)).save(path, quality=92)
            full, t_full = best_of(lambda: tf(Image.open(path).convert("RGB")))
            reduced, t_red = best_of(lambda: tf(data.load_image(path, target)))
            levels = (full - reduced).abs() * 0.5 * 255  # normalised with std 0.5
            print(f"{scene.stem}  {t_full * 1e3:7.0f}  {t_red * 1e3:10.0f}  {t_full / t_red:7.1f}x  "
                  f"{float(levels.max()):26.2f}  {float(levels.mean()):11.3f}")


if __name__ == "__main__":
    main()
