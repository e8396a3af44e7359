"""Plots a user reads on their own: a title naming model, weights and images, the random-weights caveat, and
colours that match the legend."""

import numpy as np
import pytest
from matplotlib.figure import Figure

from vwt_export.check import report as rep
from vwt_export.check.merges import group_edges
from vwt_export.check.plots import RANDOM_CAVEAT, Heading


def _variant(tokens, p50, vwt=True):
    return {"file": "m.onnx", "backend": "onnxruntime-cpu", "precision": "fp32", "vwt": vwt, "accuracy": None,
            "fidelity": {"top1_agreement": 1.0, "top5_overlap": 1.0, "kl_divergence": 0.0, "cosine_similarity": 1.0},
            "tokens": {"mean": float(np.mean(tokens)), "min": min(tokens), "max": max(tokens), "counts": tokens},
            "latency": {"1": {"p50_ms": p50}}, "energy": {"available": False, "reason": "cpu"}}


@pytest.fixture
def figures(monkeypatch):
    """Every figure saved, kept open for inspection."""
    saved = []
    real = Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda self, *a, **k: saved.append(self) or real(self, *a, **k))
    return saved


def test_every_report_plot_is_titled_and_equal_histograms_keep_their_legend_colours(tmp_path, figures):
    counts = [12, 14, 14, 17]
    report = {"model": {"name": "deit_s", "weights": "random", "tokens_in": 17, "headless": False},
              "images": {"labelled": False, "count": 4, "folder": "/data/val"},
              "variants": {"fp32": _variant([17] * 4, 5.0, vwt=False), "vwt": _variant(counts, 3.0),
                           "vwt+int8": _variant(list(counts), 2.0)}}  # equal histograms: they blended before
    rep.plots(report, tmp_path / "plots")
    assert len(figures) == 2
    for fig in figures:
        title = fig._suptitle.get_text()
        assert "deit_s, random weights, 4 images from val" in title and RANDOM_CAVEAT in title
    ax = figures[1].axes[0]
    legend = {t.get_text(): h for t, h in zip(ax.get_legend().get_texts(), ax.get_legend().legend_handles)}
    bars = {name: [p for p in ax.patches if p.get_label() == name or p in c]
            for name, c in zip(("vwt", "vwt+int8"), ax.containers)}
    spans = [(p.get_x(), p.get_x() + p.get_width(), name) for name, ps in bars.items() for p in ps if p.get_height()]
    for a0, a1, an in spans:  # no bar of one variant lies over a bar of the other
        assert not any(an != bn and a0 < b1 and b0 < a1 for b0, b1, bn in spans)
    for name, ps in bars.items():  # and each is drawn in its legend entry's colour, unblended
        assert all(np.allclose(p.get_facecolor(), legend[name].get_facecolor()) for p in ps)
        assert ps[0].get_facecolor()[3] == 1.0


def test_a_heading_without_random_weights_has_no_caveat():
    heading = Heading("deit_s", "/ckpt/deit.pth", 1, "val")
    assert heading.lines("x") == ["x", "deit_s, deit.pth weights, 1 image from val"]


def test_group_edges_outline_each_merged_group():
    labels = np.array([0, 0, 1, 2, 3, 3])  # a 2 x 3 grid: patches 0-1 merged, 4-5 merged, 2 and 3 alone
    edges = {tuple(sorted(seg)) for seg in group_edges(labels, (2, 3))}
    # group 0 spans cells (0,0)-(0,1): top, bottom, left, right -> 6 unit segments
    top = {((0, 0), (1, 0)), ((1, 0), (2, 0)), ((0, 1), (1, 1)), ((1, 1), (2, 1)), ((0, 0), (0, 1)), ((2, 0), (2, 1))}
    bottom = {((1, 1), (2, 1)), ((2, 1), (3, 1)), ((1, 2), (2, 2)), ((2, 2), (3, 2)), ((1, 1), (1, 2)), ((3, 1), (3, 2))}
    assert edges == top | bottom
