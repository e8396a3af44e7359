#!/usr/bin/env python3
"""The data behind the defaults: feature cosine to the uncompressed model and tokens kept, on real weights and
real photos, for every inter setting (threshold x grouping x vocabulary size x space x proportional attention),
with intra keep and ToMe r for reference.

Weights and photos come from scripts/real_weights.py and scripts/fetch_photos.py (fetched if missing):
vocabularies are learned on the calibration crops, figures measured on the check crops (no photo in both).
Torch path only (the exported graphs are verified against it by the pipeline); no timing.

    python scripts/measure_defaults.py [--vocab-sizes 200,400,1000] [--out table.md]

Tokens kept = mean over images of the tokens the blocks see (prefix included) / (P + N); for ToMe the mean
over blocks of its schedule. Cosine: per image, between the compressed and uncompressed model's features.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fetch_photos  # noqa: E402
import real_weights  # noqa: E402

import vwt_export as vx  # noqa: E402
from vwt_export import models  # noqa: E402
from vwt_export.data import list_images, load_image  # noqa: E402


def per_image_cosine(ref: torch.Tensor, got: torch.Tensor) -> np.ndarray:
    return torch.nn.functional.cosine_similarity(ref.double(), got.double(), dim=-1).numpy()


@torch.no_grad()
def measure(cmodel, pixels: torch.Tensor, ref: torch.Tensor, tokens_in: int) -> tuple[float, float, float]:
    """(tokens kept fraction, mean cosine, min cosine)."""
    outs, counts = [], []
    for chunk in pixels.split(8):
        outs.append(cmodel(chunk))
        counts.append(cmodel.last_token_counts.float())
    cos = per_image_cosine(ref, torch.cat(outs))
    return float(torch.cat(counts).mean()) / tokens_in, float(cos.mean()), float(cos.min())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--vocab-sizes", default="200,400,1000")
    ap.add_argument("--thresholds", default="0.05,0.1,0.15,0.2,0.25,0.3")
    ap.add_argument("--spaces", default="image,embed")
    ap.add_argument("--groupings", default="global,local")
    ap.add_argument("--prop-attn", default="off,on", help="off,on or one of them")
    ap.add_argument("--no-reference", action="store_true", help="skip the intra and ToMe rows")
    ap.add_argument("--out", help="also write the markdown table here")
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    weights = real_weights.build()
    photos = fetch_photos.fetch()
    model = vx.load_model(real_weights.TIMM_NAME, weights=weights, **real_weights.TIMM_ARGS)
    tf = models.transform(model)
    check = list_images(photos / "check")
    pixels = torch.stack([tf(load_image(f)) for f in check])
    with torch.no_grad():
        ref = torch.cat([model(c) for c in pixels.split(8)])
    tokens_in = models.sequence_length(model)
    rows = [f"real weights {weights.name}, {len(check)} check crops of {photos / 'check'}; "
            f"vocabularies from {len(list_images(photos / 'calib'))} calibration crops",
            "", "| mode | space | vocab | grouping | prop-attn | setting | tokens kept | cosine mean | cosine min |",
            "|---|---|---:|---|---|---|---:|---:|---:|"]

    def row(*cells):
        line = "| " + " | ".join(str(c) for c in cells) + " |"
        rows.append(line)
        print(line, flush=True)

    print("\n".join(rows), flush=True)
    for space, size in itertools.product(args.spaces.split(","), [int(s) for s in args.vocab_sizes.split(",")]):
        vocab = vx.learn_vocabulary(model, photos / "calib", size=size, space=space, progress=False)
        for grouping, prop in itertools.product(args.groupings.split(","), [p == "on" for p in args.prop_attn.split(",")]):
            for t in [float(x) for x in args.thresholds.split(",")]:
                cm = vx.compress(model, "inter", vocab=vocab, threshold=t, grouping=grouping, prop_attn=prop)
                kept, mean, low = measure(cm, pixels, ref, tokens_in)
                row("inter", space, vocab.size, grouping, "on" if prop else "off", f"threshold {t}",
                    f"{kept:.1%}", f"{mean:.4f}", f"{low:.4f}")
    for keep in () if args.no_reference else (0.5, 0.6, 0.75, 0.9):
        for prop in (False, True):
            kept, mean, low = measure(vx.compress(model, "intra", keep=keep, prop_attn=prop), pixels, ref, tokens_in)
            row("intra", "image", "–", "–", "on" if prop else "off", f"keep {keep}", f"{kept:.1%}", f"{mean:.4f}", f"{low:.4f}")
    for r in () if args.no_reference else (8, 12, 16, 20):
        kept, mean, low = measure(vx.compress(model, "tome", r=r), pixels, ref, tokens_in)
        row("tome", "–", "–", "–", "on", f"r {r}", f"{kept:.1%}", f"{mean:.4f}", f"{low:.4f}")
    if args.out:
        Path(args.out).write_text("\n".join(rows) + "\n")


if __name__ == "__main__":
    main()
