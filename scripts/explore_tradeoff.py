#!/usr/bin/env python3
"""Quality per token on the real weights and the real check photos: what makes VWT keep more quality, and where
the hybrid (VWT grouping + in-block ToMe) sits against ToMe, VWT and intra. Torch on CPU, no timing.

    PYTHONPATH=. python scripts/explore_tradeoff.py                 # the torch table (cached per setting)
    PYTHONPATH=. python scripts/explore_tradeoff.py --int8 "hybrid local t=0.1 r=4" "tome r=16"
                                                    # + INT8-stacked cosine of those rows (ONNX Runtime CPU)
    PYTHONPATH=. python scripts/explore_tradeoff.py --int8-baseline # INT8 alone, minmax/percentile/entropy

Model: DINOv2-S/14 at 224 px (257 tokens), the realdata checkpoint; images: the realdata photos (vocabularies and
INT8 ranges learned on calib/, everything measured on check/). Columns:

  cos       mean over the check images of the cosine between the features and the FP32 uncompressed model's
            (min: the worst image);
  tokens    tokens each block's attention sees, averaged over blocks and images (257 uncompressed);
  flops     FP32 MACs per image relative to the uncompressed model's (blocks, patch embedding, word matching,
            in-block merging), averaged over images;
  est       speed estimated from flops: 1 / (f + (1 - f) * flops), f the share of batch-1 time that does not
            shrink with the tokens, fitted to the ten ORT CPU timings of issue 18 (its table, FP32). An estimate
            to steer the search, not a measurement: real timing is one interleaved run (scripts/bench_tradeoff).

Vocabularies, FP32 features and each setting's row are cached in ~/.cache/vwt-export/explore ($VWT_EXPLORE_CACHE);
--fresh recomputes the rows.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import vwt_export as vx  # noqa: E402
from vwt_export.check.accuracy import cosine_similarity  # noqa: E402
from vwt_export.data import iter_image_batches, list_images  # noqa: E402
from vwt_export.hybrid import compress_hybrid  # noqa: E402
from vwt_export.hybrid.merge import removed, tile_offsets  # noqa: E402
from vwt_export.tome import compress_tome  # noqa: E402
from vwt_export.vwt import model as vwt_model  # noqa: E402

REAL = Path(os.environ.get("VWT_REAL_CACHE", Path.home() / ".cache/vwt-export/real"))
CACHE = Path(os.environ.get("VWT_EXPLORE_CACHE", Path.home() / ".cache/vwt-export/explore"))
# issue 18's table: (setting, tokens, speed vs FP32), ONNX Runtime CPU batch 1, one interleaved run
ISSUE_TIMINGS = [("tome", 8, 1.14), ("tome", 12, 1.25), ("tome", 16, 1.36), ("tome", 20, 1.53),
                 ("intra", 193, 1.25), ("vwt", 168, 1.44), ("vwt", 156, 1.50), ("vwt", 150, 1.69),
                 ("vwt", 140, 1.64), ("vwt", 89, 2.24)]


# ---------------------------------------------------------------------------------------------------------
# data


def load():
    weights = REAL / "weights/dinov2_s14_224.timm.safetensors"
    if not weights.is_file():
        sys.exit(f"{weights}: missing; run scripts/real_weights.py (and scripts/fetch_photos.py) first")
    model = vx.load_model("vit_small_patch14_dinov2", weights=str(weights), img_size=224, num_classes=0)
    tf = vx.models.transform(model)

    def pixels(folder):
        return torch.cat([b for b, _ in iter_image_batches(list_images(REAL / "photos" / folder), tf, 16)])

    return model, pixels("calib"), pixels("check")


def vocabulary(model, calib, space: str, size: int):
    path = CACHE / f"vocab_{space}_{size}.safetensors"
    if path.is_file():
        return vx.Vocabulary.load(path)
    vocab = vx.learn_vocabulary(model, [calib[i:i + 8] for i in range(0, len(calib), 8)], size, space=space,
                                progress=False)
    vocab.save(path)
    return vocab


# ---------------------------------------------------------------------------------------------------------
# tokens and cost


def block_tokens(module, batch: int, depth: int, tokens_in: int) -> list[list[tuple[int, int]]]:
    """Per image, per block: (tokens its attention sees, tokens its MLP sees)."""
    if hasattr(module, "rules"):  # hybrid
        seen = module.last_block_tokens.tolist()
        p = module.num_prefix
        return [[(t, t - removed(t, p, rule)) for t, rule in zip(row, module.rules)] for row in seen]
    if hasattr(module, "block_r"):  # ToMe
        row = [(t, t - r) for t, r in zip(module.block_tokens, module.block_r)]
        return [row] * batch
    counts = getattr(module, "last_token_counts", None)
    counts = [tokens_in] * batch if counts is None else [int(c) for c in counts]
    return [[(c, c)] * depth for c in counts]


def macs(pairs: list[tuple[int, int]], dim: int, head_dim: int, merging: str, matching: int) -> float:
    """MACs of one image: the blocks (qkv + proj at the attention's tokens, the two attention products, the MLP at
    the MLP's tokens), the in-block merge (cosine scores between the halves; the hybrid's one-hot sums over all
    A x B pairs, ToMe's over r sources) and the word matching (N x F x V)."""
    total = float(matching)
    for t_in, t_out in pairs:
        total += 4 * t_in * dim ** 2 + 2 * t_in ** 2 * dim + 8 * t_out * dim ** 2
        if t_out < t_in:
            total += (t_in / 2) ** 2 * head_dim
            total += (t_in / 2) ** 2 * dim if merging == "hybrid" else (t_in / 2) * (t_in - t_out) * dim
    return total


@dataclass
class Geometry:
    dim: int
    head_dim: int
    depth: int
    tokens_in: int
    patches: int
    patch_feats: int

    def base(self) -> float:
        return macs([(self.tokens_in, self.tokens_in)] * self.depth, self.dim, self.head_dim, "", 0) \
            + self.patches * self.patch_feats * self.dim


def fit_overhead(geo: Geometry) -> float:
    """f in 1/speed = f + (1 - f) * flops, least squares over the issue's timings (token counts taken as uniform
    over images; VWT's word matching at 400 image-space words)."""
    from vwt_export.tome.merge import token_schedule

    xs, ys = [], []
    for kind, n, speed in ISSUE_TIMINGS:
        if kind == "tome":
            seen, used = token_schedule(geo.tokens_in, 1, [n] * geo.depth)
            pairs, merging, matching = [(t, t - r) for t, r in zip(seen, used)], "tome", 0
        else:
            pairs, merging = [(n, n)] * geo.depth, ""
            matching = geo.patches * geo.patch_feats * 400 if kind == "vwt" else 0
        c = (macs(pairs, geo.dim, geo.head_dim, merging, matching) + geo.patches * geo.patch_feats * geo.dim) / geo.base()
        xs.append(1 - c)
        ys.append(1 / speed - c)
    xs, ys = np.array(xs), np.array(ys)
    return float((xs * ys).sum() / (xs * xs).sum())


# ---------------------------------------------------------------------------------------------------------
# settings


@dataclass
class Setting:
    label: str
    make: Callable[[], torch.nn.Module]
    merging: str = ""  # "tome" / "hybrid": in-block merge overhead
    words: int = 0  # vocabulary size (word matching cost)
    feats: int = 0  # feature width of the matching
    patch: Callable | None = None  # a context manager that swaps a piece of VWT for a variant


@contextlib.contextmanager
def swapped(name: str, variant):
    """vwt_model.<name> replaced by `variant` within the block (the compressed model looks it up per call)."""
    original = getattr(vwt_model, name)
    setattr(vwt_model, name, variant)
    try:
        yield
    finally:
        setattr(vwt_model, name, original)


@contextlib.contextmanager
def group_token(form: str):
    """How a group's token is formed. mean: the mean of its members' tokens (patch embedding + position, the
    default). norm: that mean rescaled to its members' mean norm (averaging shrinks dissimilar tokens).
    medoid: the member nearest (cosine) to the mean, as it is."""
    original = vwt_model.token_merge
    if form == "mean":
        yield
        return

    def merge(tokens, keys, num_prefix, grid_w=0):
        from vwt_export.vwt.inter import dense_relabel

        merged, sizes = original(tokens, keys, num_prefix, grid_w)
        labels = dense_relabel(keys, grid_w)
        patches = tokens[:, num_prefix:]
        b, m, d = merged.shape[0], merged.shape[1] - num_prefix, tokens.shape[-1]
        means = merged[:, num_prefix:]
        if form == "norm":
            norms = torch.zeros(b, m).scatter_add_(1, labels, patches.norm(dim=-1))
            target = norms / sizes[:, num_prefix:].clamp(min=1)
            out = means * (target / means.norm(dim=-1).clamp(min=1e-12)).unsqueeze(-1)
        elif form == "medoid":
            n = patches.shape[1]
            mean_of = means.gather(1, labels[..., None].expand(-1, -1, d))  # [B, N, D]: each patch's group mean
            near = torch.nn.functional.cosine_similarity(patches, mean_of, dim=-1)
            best = torch.full((b, m), -2.0).scatter_reduce(1, labels, near, "amax")
            candidate = torch.where(near == best.gather(1, labels), torch.arange(n), n)
            first = torch.full((b, m), n).scatter_reduce(1, labels, candidate, "amin").clamp(max=n - 1)
            out = patches.gather(1, first[..., None].expand(-1, -1, d))
        else:
            raise ValueError(form)
        out = torch.where(sizes[:, num_prefix:, None] > 0, out, torch.zeros_like(out))
        return torch.cat([merged[:, :num_prefix], out], dim=1), sizes

    with swapped("token_merge", merge):
        yield


@contextlib.contextmanager
def matched_share(share: float):
    """A per-image threshold: in each image the `share` of patches nearest to a word are matched (whatever their
    distance), so a busy photo and a plain one both merge a fixed share of their patches."""

    def match(features, unit_words, threshold):
        from vwt_export.vwt.inter import similarity, unmatched_keys

        top, best = similarity(features, unit_words).max(dim=-1)
        k = max(1, round(share * top.shape[1]))
        cut = top.topk(k, dim=1).values[:, -1:]
        return torch.where(top >= cut, best, unmatched_keys(*best.shape, unit_words.shape[0], best.device))

    with swapped("match_keys", match):
        yield


@contextlib.contextmanager
def tiled(tile: int, grid_w: int):
    """Groups never cross a tile x tile square of patches (at most tile^2 patches per token): the keys get the
    tile's number added above every key value, so equal words in different tiles differ."""
    original = vwt_model.match_keys

    def match(features, unit_words, threshold):
        keys = original(features, unit_words, threshold)
        return keys + tile_offsets(keys.shape[1], grid_w, tile, unit_words.shape[0])

    with swapped("match_keys", match):
        yield


@contextlib.contextmanager
def same_magnitude(words: torch.Tensor, ratio: float):
    """A patch matches a word only if, besides the cosine, its norm is within `ratio` (log scale) of the word's:
    cosine alone merges a dark and a darker patch of the same hue (their normalised pixels point the same way)."""
    original = vwt_model.match_keys
    word_norms = words.float().norm(dim=-1)

    def match(features, unit_words, threshold):
        keys = original(features, unit_words, threshold)
        matched = keys < unit_words.shape[0]
        norms = features.float().norm(dim=-1)
        close = (norms.clamp(min=1e-6) / word_norms[keys.clamp(max=unit_words.shape[0] - 1)].clamp(min=1e-6)).log().abs() <= ratio
        unmatched = unit_words.shape[0] + torch.arange(keys.shape[1]).expand_as(keys)
        return torch.where(matched & close, keys, unmatched)

    with swapped("match_keys", match):
        yield


def settings(model, calib) -> list[Setting]:
    out = [Setting("fp32", lambda: model)]
    for r in (8, 12, 16, 20):
        out.append(Setting(f"tome r={r}", lambda r=r: compress_tome(model, r), "tome"))
    for keep in (0.75, 0.6):
        out.append(Setting(f"intra keep={keep}", lambda k=keep: vx.compress(model, "intra", keep=k)))
    feats = {"image": 3 * 14 * 14, "embed": model.embed_dim}

    def vwt(space, size, t, grouping, prop=False, form="mean", share=None, tile=None, magnitude=None):
        vocab = vocabulary(model, calib, space, size)
        label = f"vwt {grouping} t={t:g}" + (" prop" if prop else "")
        label += "" if (space, size) == ("image", 400) else f" ({space} {size})"
        label += "" if form == "mean" else f" form={form}"
        patch = None
        if share is not None:
            label = f"vwt {grouping} share={share:g}" + (" prop" if prop else "")
            patch = lambda: matched_share(share)  # noqa: E731
        elif form != "mean":
            patch = lambda: group_token(form)  # noqa: E731
        elif tile:
            label += f" tile={tile}"
            patch = lambda: tiled(tile, model.patch_embed.grid_size[1])  # noqa: E731
        elif magnitude:
            label += f" magnitude={magnitude:g}"
            patch = lambda: same_magnitude(vocab.words, magnitude)  # noqa: E731
        return Setting(label, lambda: vx.compress(model, "inter", vocab=vocab, threshold=t, grouping=grouping,
                                                  prop_attn=prop), words=len(vocab.words), feats=feats[space],
                       patch=patch)

    for t in (0.02, 0.05, 0.1, 0.2, 0.3):
        out += [vwt("image", 400, t, "local")] + ([vwt("image", 400, t, "global")] if t >= 0.05 else [])
    for t in (0.05, 0.1):
        out += [vwt("image", 400, t, "local", prop=True)]
        out += [vwt("image", size, t, "local") for size in (100, 1000, 2000)]
    for t in (0.1, 0.2, 0.3, 0.4):
        out += [vwt("embed", 400, t, "local")]
    for form in ("norm", "medoid"):
        out += [vwt("image", 400, 0.1, "local", form=form)]
    for share in (0.5, 0.7):
        out += [vwt("image", 400, 0, "local", share=share)]

    def hybrid(t, r, prop=True, space="image", size=400, grouping="local", rlabel=None, tile=None, magnitude=None):
        vocab = vocabulary(model, calib, space, size)
        rlabel = rlabel or (f"{r[0]:g}..{r[-1]:g}" if isinstance(r, list) else f"{r:g}")
        label = f"hybrid {grouping} t={t:g} r={rlabel}" + ("" if prop else " noprop")
        label += "" if (space, size) == ("image", 400) else f" ({space} {size})"
        patch = None
        if tile:
            label += f" tile={tile}"
        elif magnitude:
            label += f" magnitude={magnitude:g}"
            patch = lambda: same_magnitude(vocab.words, magnitude)  # noqa: E731
        return Setting(label, lambda: compress_hybrid(model, vocab, threshold=t, r=r, prop_attn=prop, grouping=grouping,
                                                      tile=tile or 0), "hybrid", len(vocab.words), feats[space], patch)

    depth, geo_tokens = len(model.blocks), vx.models.sequence_length(model)
    for t in (0.02, 0.05, 0.1):
        out += [hybrid(t, r) for r in (4, 8)]
        out += [hybrid(t, f) for f in (0.03, 0.05, 0.08)]
    out += [hybrid(0.05, 0.05, prop=False), hybrid(0.05, 0.05, grouping="global")]
    out += [hybrid(0.05, [round(0.08 - 0.06 * i / (depth - 1), 3) for i in range(depth)])]  # 8% .. 2% per block
    # round 2, around the best of round 1: finer grouping, in-block shares, ToMe's schedule as fractions
    for t in (0.01, 0.02, 0.03):
        out += [hybrid(t, f) for f in (0.04, 0.06)] + [hybrid(t, 0)]
    out += [hybrid(0.02, 0.05, size=100), hybrid(0.03, 0.05, size=100)]
    for r in (12, 16):  # block i merges r / (257 - r i) of its tokens: ToMe's r for an image VWT left whole
        out += [hybrid(t, [round(r / (geo_tokens - r * i), 3) for i in range(depth)], rlabel=f"tome{r}")
                for t in (0.01, 0.02)]
    out += [vwt("image", 400, t, "local", prop=True) for t in (0.02, 0.03)]
    out += [vwt("image", 100, t, "local", prop=True) for t in (0.05, 0.1)]
    # round 3: bounded group sizes (tiles), and a magnitude condition on top of the cosine
    for t in (0.05, 0.1):
        out += [vwt("image", 400, t, "local", prop=True, tile=tile) for tile in (4, 8)]
        out += [vwt("image", 400, t, "local", prop=True, magnitude=m) for m in (0.1, 0.25)]
    out += [hybrid(0.03, 0.05, tile=4), hybrid(0.03, 0.05, magnitude=0.25), hybrid(0.03, 0.05)]
    # round 4: tiles at coarser thresholds, and under the in-block merging
    out += [vwt("image", 400, t, "local", prop=True, tile=4) for t in (0.2, 0.3)]
    out += [vwt("image", 400, t, "local", prop=True, tile=2) for t in (0.1, 0.2, 0.3)]
    tome12 = [round(12 / (geo_tokens - 12 * i), 3) for i in range(depth)]
    out += [hybrid(0.05, 0.03, tile=4), hybrid(0.05, tome12, tile=4, rlabel="tome12"), hybrid(0.1, 0.03, tile=4),
            hybrid(0.1, 0.03, tile=2), hybrid(0.2, 0.03, tile=2), hybrid(0.02, tome12, tile=4, rlabel="tome12")]
    return out


# ---------------------------------------------------------------------------------------------------------
# measuring


def measure(setting: Setting, model, check, reference, geo: Geometry, f: float) -> dict:
    module = setting.make()
    start = time.perf_counter()
    outs, schedule = [], []
    with torch.no_grad(), (setting.patch() if setting.patch else contextlib.nullcontext()):
        for i in range(0, len(check), 14):
            outs.append(module(check[i:i + 14]))
            schedule += block_tokens(module, len(outs[-1]), geo.depth, geo.tokens_in)
    out = torch.cat(outs)
    ref, got = reference.numpy(), out.numpy()
    per_image = (ref * got).sum(1) / np.linalg.norm(ref, axis=1) / np.linalg.norm(got, axis=1)
    matching = geo.patches * setting.feats * setting.words
    cost = [(macs(p, geo.dim, geo.head_dim, setting.merging, matching) + geo.patches * geo.patch_feats * geo.dim)
            / geo.base() for p in schedule]
    flops = float(np.mean(cost))
    return {"label": setting.label, "cos": cosine_similarity(ref, got), "cos_min": float(per_image.min()),
            "tokens": float(np.mean([np.mean([t for t, _ in p]) for p in schedule])), "flops": flops,
            "est": 1 / (f + (1 - f) * flops), "seconds": time.perf_counter() - start}


def table(rows: list[dict], int8: dict[str, dict]) -> str:
    lines = ["| setting | tokens | flops | est. speed | cos | cos min | INT8-stacked cos |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in sorted(rows, key=lambda r: (r["est"], r["cos"])):
        q = int8.get(r["label"])
        stacked = "" if q is None else f"{q['cos']:.4f}"
        lines.append(f"| {r['label']} | {r['tokens']:.0f} | {r['flops']:.3f} | {r['est']:.2f}x | {r['cos']:.4f} | "
                     f"{r['cos_min']:.4f} | {stacked} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------
# INT8


def int8_cosine(proto, calib, check, reference, calibration: str = "minmax", **options) -> dict:
    from vwt_export.backends.onnxruntime import create_session
    from vwt_export.graph.quantize import quantize_int8

    x = calib.numpy()
    q = quantize_int8(proto, [x[i:i + 8] for i in range(0, len(x), 8)], calibration=calibration, **options)
    session = create_session(q, threads=2)
    out = np.concatenate([session.run(None, {"pixels": check[i:i + 7].numpy()})[0] for i in range(0, len(check), 7)])
    ref = reference.numpy()
    per_image = (ref * out).sum(1) / np.linalg.norm(ref, axis=1) / np.linalg.norm(out, axis=1)
    return {"cos": cosine_similarity(ref, out), "cos_min": float(per_image.min()), "calibration": calibration}


def export_setting(setting: Setting, model, baseline, check):
    from vwt_export.graph.hybrid_export import export_hybrid
    from vwt_export.graph.surgery import apply_vwt
    from vwt_export.graph.tome_export import export_tome

    module = setting.make()
    if setting.label == "fp32":
        return baseline
    if setting.merging == "hybrid":
        return export_hybrid(module, baseline=baseline)
    if setting.merging == "tome":
        return export_tome(module)
    if setting.patch is None and getattr(module, "mode", None) == "inter":
        return apply_vwt(baseline, "inter", vocab=module.vocab.words.numpy(), threshold=module.threshold,
                         space=module.space, prop_attn=module.prop_attn, grouping=module.grouping,
                         pooling=model.global_pool)
    raise SystemExit(f"{setting.label}: no graph for this exploration-only variant")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default=None, help="measure only the settings whose label matches this regex")
    ap.add_argument("--fresh", action="store_true", help="recompute cached rows")
    ap.add_argument("--int8", nargs="*", default=[], metavar="LABEL", help="INT8-stacked cosine of these rows")
    ap.add_argument("--int8-baseline", action="store_true", help="INT8 alone with each calibration method")
    ap.add_argument("--calibration", default="minmax", help="calibration of the --int8 rows")
    args = ap.parse_args()
    torch.set_num_threads(2)
    CACHE.mkdir(parents=True, exist_ok=True)
    rows_file, int8_file = CACHE / "rows.json", CACHE / "int8.json"
    rows = {} if args.fresh or not rows_file.is_file() else json.loads(rows_file.read_text())
    int8 = json.loads(int8_file.read_text()) if int8_file.is_file() else {}

    model, calib, check = load()
    ref_file = CACHE / "fp32_check.npy"
    if ref_file.is_file():
        reference = torch.from_numpy(np.load(ref_file))
    else:
        with torch.no_grad():
            reference = torch.cat([model(check[i:i + 14]) for i in range(0, len(check), 14)])
        np.save(ref_file, reference.numpy())
    geo = Geometry(model.embed_dim, model.blocks[0].attn.head_dim, len(model.blocks), vx.models.sequence_length(model),
                   model.patch_embed.num_patches, 3 * 14 * 14)
    f = fit_overhead(geo)
    print(f"DINOv2-S/14 224 px, {len(calib)} calibration / {len(check)} check images; fixed share of batch-1 time "
          f"fitted to issue 18's timings: f = {f:.3f}", flush=True)

    todo = settings(model, calib)
    for s in todo:
        if (args.only and not re.search(args.only, s.label)) or s.label in rows:
            continue
        rows[s.label] = measure(s, model, check, reference, geo, f)
        r = rows[s.label]
        print(f"  {s.label:45s} tokens {r['tokens']:6.1f}  est {r['est']:.2f}x  cos {r['cos']:.4f} "
              f"({r['seconds']:.0f} s)", flush=True)
        rows_file.write_text(json.dumps(rows, indent=1))

    if args.int8 or args.int8_baseline:
        from vwt_export.graph.export import export_model

        baseline = export_model(model)
        by_label = {s.label: s for s in todo}
        jobs = [("fp32", c) for c in ("minmax", "percentile", "entropy")] if args.int8_baseline else []
        jobs += [(label, args.calibration) for label in args.int8]
        for label, calibration in jobs:
            if label not in by_label:
                sys.exit(f"--int8 {label!r}: no such row")
            start = time.perf_counter()
            proto = export_setting(by_label[label], model, baseline, check)
            key = label if calibration == "minmax" else f"{label} [{calibration}]"
            int8[key] = int8_cosine(proto, calib, check, reference, calibration)
            print(f"  INT8 {key:45s} cos {int8[key]['cos']:.4f} (min {int8[key]['cos_min']:.4f}, "
                  f"{time.perf_counter() - start:.0f} s)", flush=True)
            int8_file.write_text(json.dumps(int8, indent=1))

    shown = [r for label, r in rows.items() if not args.only or re.search(args.only, label)]
    print()
    print(table(shown, int8))
    extra = {k: v for k, v in int8.items() if k not in rows}
    for k, v in extra.items():
        print(f"INT8 {k}: cos {v['cos']:.4f} (min {v['cos_min']:.4f})")


if __name__ == "__main__":
    main()
