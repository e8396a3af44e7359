"""plots/merges.png: a few check images with their merged groups drawn on them, so a user sees what merged.

Each group of two or more patches gets one colour, laid over its patches; patches left alone stay as they are.
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


def plot_merges(model, cmodel, pixels: torch.Tensor, path: Path, count: int = 4) -> None:
    """Draw the first `count` images of `pixels` (normalised, as the model takes them) with their groups."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..atomic import atomic_path
    from ..models import data_config

    pixels = pixels[:count]
    labels = group_labels(cmodel, pixels).cpu().numpy()
    cfg = data_config(model)
    mean, std = np.asarray(cfg["mean"])[:, None, None], np.asarray(cfg["std"])[:, None, None]
    images = np.clip(pixels.cpu().numpy() * std + mean, 0, 1).transpose(0, 2, 3, 1)
    grid = tuple(model.patch_embed.grid_size)
    fig, axes = plt.subplots(1, len(images), figsize=(3 * len(images), 3.3), squeeze=False)
    for ax, image, lab in zip(axes[0], images, labels):
        ax.imshow(overlay(image, lab, grid))
        merged = int((np.bincount(lab) > 1).sum())
        ax.set_title(f"{lab.max() + 1 + model.num_prefix_tokens} tokens, {merged} merged groups", fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
