"""plots/merges.png: a few check images with their merged groups drawn on them, so a user sees what merged.

Each group of two or more patches gets one colour, laid over its patches, and a white outline; patches left alone
stay as they are.
The groups are the torch reference's (the graphs were verified to match them, near-ties aside).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def group_labels(cmodel, pixels: torch.Tensor) -> torch.Tensor:
    """Dense group labels [B, N] of an inter-mode CompressedViT for these pixels."""
    from ..vwt.inter import dense_relabel

    with torch.no_grad():
        return dense_relabel(cmodel.match(pixels), cmodel.grid_w)


def overlay(image: np.ndarray, labels: np.ndarray, grid: tuple[int, int], alpha: float = 0.55) -> np.ndarray:
    """image [H, W, 3] in [0, 1], labels [N] -> the image with every multi-patch group tinted one colour."""
    gh, gw = grid
    h, w = image.shape[:2]
    ph, pw = h // gh, w // gw
    counts = np.bincount(labels)
    rng = np.random.default_rng(0)
    colours = rng.uniform(0.15, 1.0, (len(counts), 3))
    out = image.copy()
    for n, label in enumerate(labels):
        if counts[label] > 1:
            r, c = divmod(n, gw)
            tile = out[r * ph:(r + 1) * ph, c * pw:(c + 1) * pw]
            tile[:] = (1 - alpha) * tile + alpha * colours[label]
    return out


def group_edges(labels: np.ndarray, grid: tuple[int, int]) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """The outline of every multi-patch group, as segments ((x0, y0), (x1, y1)) in patch units on the grid's
    corners: each side of a merged patch whose neighbour (or the border) is not in its group."""
    gh, gw = grid
    counts = np.bincount(labels)
    grid_labels = labels.reshape(gh, gw)
    edges = []
    for r in range(gh):
        for c in range(gw):
            label = grid_labels[r, c]
            if counts[label] < 2:
                continue
            for dr, dc, seg in ((-1, 0, ((c, r), (c + 1, r))), (1, 0, ((c, r + 1), (c + 1, r + 1))),
                                (0, -1, ((c, r), (c, r + 1))), (0, 1, ((c + 1, r), (c + 1, r + 1)))):
                rr, cc = r + dr, c + dc
                if not (0 <= rr < gh and 0 <= cc < gw) or grid_labels[rr, cc] != label:
                    edges.append(seg)
    return edges


def plot_merges(model, cmodel, pixels: torch.Tensor, path: Path, heading=None, count: int = 4) -> None:
    """Draw the first `count` images of `pixels` (normalised, as the model takes them) with their groups, two to a
    row, each panel large enough to tell the tints apart, under a legend saying what a tint means. `heading`: a
    check.plots.Heading (model, weights, images)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.collections import LineCollection
    from matplotlib.patches import Patch

    from ..atomic import atomic_path
    from ..models import data_config

    pixels = pixels[:count]
    labels = group_labels(cmodel, pixels).cpu().numpy()
    cfg = data_config(model)
    mean, std = np.asarray(cfg["mean"])[:, None, None], np.asarray(cfg["std"])[:, None, None]
    images = np.clip(pixels.cpu().numpy() * std + mean, 0, 1).transpose(0, 2, 3, 1)
    grid = tuple(model.patch_embed.grid_size)
    cols = min(2, len(images))
    rows = -(-len(images) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(PANEL_INCHES * cols, PANEL_INCHES * rows + 1.6), squeeze=False)
    for ax in axes.flat[len(images):]:
        ax.axis("off")
    for i, (ax, image, lab) in enumerate(zip(axes.flat, images, labels)):
        ax.imshow(overlay(image, lab, grid), interpolation="nearest")
        ph, pw = image.shape[0] / grid[0], image.shape[1] / grid[1]
        outline = [[(x * pw - 0.5, y * ph - 0.5) for x, y in seg] for seg in group_edges(lab, grid)]
        ax.add_collection(LineCollection(outline, colors="white", linewidths=1.2))
        merged = int((np.bincount(lab) > 1).sum())
        ax.set_title(f"image {i + 1}: {lab.max() + 1 + model.num_prefix_tokens} tokens of "
                     f"{len(lab) + model.num_prefix_tokens}, {merged} merged group{'' if merged == 1 else 's'}",
                     fontsize=9)
        ax.axis("off")
    fig.legend(handles=[Patch(facecolor=(0.85, 0.45, 0.2), alpha=0.55, label="tinted, outlined in white: a merged group "
                              "(one colour per group); its patches become one token"),
                        Patch(facecolor="none", edgecolor="0.5", label="untinted: a patch kept as its own token")],
               loc="lower center", ncol=1, fontsize=9, frameon=False)
    if heading is not None:
        heading.apply(fig, f"VWT's merged groups on the first {len(images)} check images")
    fig.tight_layout(rect=(0, 0.07, 1, 1), h_pad=3)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


PANEL_INCHES = 4.5  # at 110 dpi, about 500 px a panel: a 14 x 14 grid's patches are 35 px, their tints plain
