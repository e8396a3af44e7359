"""--target: parsing, the coarse-to-fine walk, the choice, the trade-off plot's labels, and one whole run."""

import itertools
import json
import re
from statistics import NormalDist

import numpy as np
import pytest

import vwt_export as vx
from vwt_export import methods
from vwt_export.artefacts import Variant
from vwt_export.check.target import Row, choose, lower_bound, markdown, midpoint, per_image, walk
from vwt_export.config import Target, parse_target
from vwt_export.cli import main
from vwt_export.demo import write_demo_images


@pytest.mark.parametrize("text", ["cosine", "cosine=", "cosine=high", "cosine=0", "cosine=1.5", "cosine=nan",
                                  "psnr=30", "=0.9", "top1=-0.1", "0.98"])
def test_bad_targets_are_one_line_errors(text):
    with pytest.raises(vx.VWTError, match=re.escape(f"--target {text}: expected cosine=0.98 or top1=0.9")):
        parse_target(text)


def test_targets_parse():
    assert parse_target("cosine=0.98") == Target("cosine", 0.98)
    assert parse_target(" top1 =1") == Target("top1", 1.0)
    assert parse_target(None) is None and str(Target("cosine", 0.98)) == "cosine=0.98"


def test_the_cli_says_what_a_target_is_in_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["deit_s", "--target", "cosine=2", "--calib", str(tmp_path), "--val", str(tmp_path / "v")])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.strip().splitlines() == [
        "error: --target cosine=2: expected cosine=0.98 or top1=0.9 (a quality in (0, 1] the chosen setting must keep)"]


@pytest.mark.parametrize("options, message", [
    ({"val": None}, "pass both"),
    ({"skip_checks": True}, "drop --skip-checks"),
    ({"val": "c"}, "is the --calib folder"),
])
def test_a_target_needs_held_out_images(options, message):
    with pytest.raises(vx.VWTError, match=re.escape(message)):
        vx.ExportConfig.from_options("deit_s", target="cosine=0.98", **{"calib": "c", "val": "v", **options})


def test_top1_needs_a_classifier_head():
    from vwt_export.check.target import check_target

    headless = vx.load_model("vit_tiny_patch16_224", weights="random", img_size=32, depth=1, num_classes=0)
    with pytest.raises(vx.VWTError, match="no classifier head"):
        check_target(Target("top1", 0.9), headless)
    check_target(Target("cosine", 0.9), headless)


def test_every_built_in_ladder_runs_from_least_to_most_compression():
    for name in ("inter", "intra", "tome", "hybrid"):
        ladder = methods.get(name).search_ladder
        assert len(ladder) >= 3, name
        for step in ladder:
            methods.spec(name, **step)  # each step a valid setting of its method
    thresholds = [s["threshold"] for s in methods.get("inter").search_ladder]
    keeps = [s["keep"] for s in methods.get("intra").search_ladder]
    rs = [s["r"] for s in methods.get("tome").search_ladder]
    assert thresholds == sorted(thresholds) and keeps == sorted(keeps, reverse=True) and rs == sorted(rs)


def test_midpoints():
    assert midpoint({"threshold": 0.02}, {"threshold": 0.05}) == {"threshold": 0.035}
    assert midpoint({"r": 12}, {"r": 16}) == {"r": 14}
    assert midpoint({"r": 12, "threshold": 0.1}, {"r": 16, "threshold": 0.1}) == {"r": 14, "threshold": 0.1}
    assert midpoint({"r": 12}, {"r": 13}) is None  # nothing strictly between
    assert midpoint({"grouping": "local"}, {"grouping": "global"}) is None


def test_the_walk_stops_at_the_first_miss_then_bisects():
    measured = []

    def passes(step):
        measured.append(step["threshold"])
        return step["threshold"] <= 0.03

    ladder = [{"threshold": t} for t in (0.01, 0.02, 0.05, 0.1, 0.2)]
    assert walk(ladder, passes) == [{"threshold": t} for t in (0.01, 0.02, 0.05, 0.035, 0.0275)]
    assert measured == [0.01, 0.02, 0.05, 0.035, 0.0275]  # each measured once; 0.1 and 0.2 never
    assert walk(ladder, lambda s: True) == ladder  # all pass: nothing to bisect
    assert walk(ladder, lambda s: False) == ladder[:1]  # the first misses: no pass to bisect from
    assert walk([{"r": 8}, {"r": 12}], lambda s: s["r"] < 12, refine=5) == [{"r": 8}, {"r": 12}, {"r": 10}, {"r": 11}]


def _row(label, quality, latency, reference=False):
    return Row(label, "tome", {"r": 1}, False, f"target/{label}.onnx", quality, latency_ms=latency, reference=reference)


def test_the_fastest_passing_candidate_is_chosen():
    rows = [_row("fp32", 1.0, 100.0, reference=True), _row("a", 0.995, 80.0), _row("b", 0.981, 50.0),
            _row("c", 0.979, 30.0), _row("d", 0.985, 55.0), _row("e", 0.99, 50.0)]
    chosen, met = choose(rows, Target("cosine", 0.98))
    assert met and chosen.label == "e"  # b and e tie on latency: the better one
    chosen, met = choose(rows, Target("cosine", 0.97))
    assert met and chosen.label == "c"


def test_a_candidate_whose_mean_meets_the_target_but_whose_bound_misses_it_is_not_chosen():
    rows = [_row("fp32", 1.0, 100.0, reference=True), _row("spread", 0.985, 40.0), _row("steady", 0.984, 60.0)]
    rows[1].bound, rows[2].bound = 0.972, 0.981  # one image in ten far off, against all images close
    chosen, met = choose(rows, Target("cosine", 0.98))
    assert met and chosen.label == "steady"


def test_the_cosine_bound_covers_the_true_mean_about_95_times_in_100():
    # per-image cosines as the real photos give them: most near 1, a long tail of images merged badly
    rng = np.random.default_rng(0)
    n, trials, shape = 32, 2000, (0.6, 40.0)  # 1 - Beta(0.6, 40): mean 0.985, a few images below 0.9
    true_mean = 1 - shape[0] / sum(shape)
    samples = 1 - rng.beta(*shape, size=(trials, n))
    covered = np.mean([lower_bound(x, "cosine", resamples=500) <= true_mean for x in samples])
    assert 0.92 <= covered <= 0.98, covered
    assert np.mean([x.mean() <= true_mean for x in samples]) < 0.7  # the mean alone: a coin toss


def test_the_top1_bound_is_wilsons_score_bound():
    z = NormalDist().inv_cdf(0.95)
    for agree, n in ((32, 32), (30, 32), (5, 8), (90, 100)):
        values = np.r_[np.ones(agree), np.zeros(n - agree)]
        b, p = lower_bound(values, "top1"), agree / n
        assert b < p
        # the bound is where the score statistic (p - b) / sqrt(b (1 - b) / n) reaches z
        assert (p - b) / np.sqrt(b * (1 - b) / n) == pytest.approx(z, rel=1e-6)
    assert lower_bound(np.array([0.97]), "cosine") == pytest.approx(0.97)  # one image: no spread to bound


def test_one_bad_image_among_near_equal_ones_lowers_the_bound_about_as_much_as_the_normal_bound():
    # resamples that miss the bad image have almost no spread: unguarded, their t runs off and the bound with it
    values = np.r_[0.9995 + 0.0002 * np.random.default_rng(2).standard_normal(55), 0.93]
    normal = values.mean() - NormalDist().inv_cdf(0.95) * values.std(ddof=1) / np.sqrt(len(values))
    assert normal - 0.005 <= lower_bound(values, "cosine") <= normal


@pytest.mark.parametrize("values", [[1.0, 0.9], [1.0, 1.0, 0.95], [1.0] * 63 + [0.8], [0.99999994] * 40 + [1.0] * 24])
def test_the_cosine_bound_stays_sane_where_images_repeat(values):
    # resamples of one repeated value have no spread: they must not blow the bound up (float32 cosines of images a
    # setting leaves untouched are all 1.0 or 0.99999994)
    values = np.array(values)
    bound = lower_bound(values, "cosine")
    assert values.min() - 0.2 <= bound <= values.mean()
    sd = values.std(ddof=1)
    assert bound <= values.mean() - 0.5 * sd / np.sqrt(len(values)) or sd < 1e-6


def test_per_image_quality_averages_to_the_reports_figures():
    from vwt_export.check.accuracy import cosine_similarity, top1_agreement

    rng = np.random.default_rng(1)
    ref, out = rng.normal(size=(16, 10)), rng.normal(size=(16, 10))
    out[:8] = ref[:8] + 0.01 * out[:8]
    assert per_image("cosine", ref, out).mean() == pytest.approx(cosine_similarity(ref, out))
    assert per_image("top1", ref, out).mean() == pytest.approx(top1_agreement(ref, out))


def test_with_nothing_meeting_the_target_the_closest_is_shown():
    rows = [_row("fp32", 1.0, 100.0, reference=True), _row("a", 0.95, 80.0), _row("b", 0.97, 60.0)]
    chosen, met = choose(rows, Target("cosine", 0.999))
    assert not met and chosen.label == "b"  # FP32 meets any target but is no candidate
    result = {"target": "cosine=0.999", "metric": "cosine", "value": 0.999, "quality": "cosine", "images": 4,
              "calib": "c", "timed_images": 4, "met": met, "plot": "plots/target.png",
              "chosen": {**vars(chosen), "speedup": 1.6, "variant": "tome"},
              "candidates": [{**vars(r), "speedup": 1.0} for r in rows]}
    text = "\n".join(markdown(result))
    assert "**No candidate meets cosine=0.999**" in text and "The closest, **b** (0.9700" in text


def crowded_rows(n=36, seed=0):
    rng = np.random.default_rng(seed)
    groups = ["vwt", "tome", "intra", "vwt+int8", "tome+int8", "int8"]
    return [{"label": f"{groups[i % 6]} setting {i} t=0.0{i}", "method": groups[i % 6], "pareto": i % 7 == 0,
             "quality": 0.97 + 0.01 * rng.random(), "latency_ms": 100 + 5 * rng.random()} for i in range(n)]


def test_trade_off_labels_never_overlap_on_a_crowded_plot(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.text import Text

    from vwt_export.check.sweep import tradeoff_figure

    rows = crowded_rows()
    fig = tradeoff_figure(rows, "cosine", target=0.975, chosen=rows[3]["label"])
    fig.savefig(tmp_path / "plot.png", dpi=fig.dpi, bbox_inches="tight")
    renderer = fig.canvas.get_renderer()
    ax = fig.axes[0]
    assert sorted(t.get_text() for t in ax.texts) == sorted(r["label"] for r in rows)
    boxes = []
    for t in ax.texts:
        t.update_positions(renderer)
        boxes.append(Text.get_window_extent(t, renderer))  # the text's box, without its leader line
    overlapping = [(ax.texts[i].get_text(), ax.texts[j].get_text())
                   for i, j in itertools.combinations(range(len(boxes)), 2) if boxes[i].overlaps(boxes[j])]
    assert overlapping == []
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert f"chosen: {rows[3]['label']}" in legend and "target 0.975" in legend
    plt.close(fig)


@pytest.mark.slow
def test_a_target_run_writes_the_fastest_passing_setting_and_reports_it_on_held_out_images(tmp_path, capsys,
                                                                                          monkeypatch):
    from vwt_export.check.accuracy import cosine_similarity
    from vwt_export.check.context import decode
    from vwt_export.data import list_images
    from vwt_export.runtime import load

    # short ladders keep the run small; the search takes whatever the registry's methods declare
    monkeypatch.setattr(type(methods.get("intra")), "search_ladder", ({"keep": 0.9}, {"keep": 0.6}, {"keep": 0.3}))
    monkeypatch.setattr(type(methods.get("inter")), "search_ladder", ({"threshold": 0.05},))
    monkeypatch.setattr(type(methods.get("tome")), "search_ladder", ())
    monkeypatch.setattr(type(methods.get("hybrid")), "search_ladder", ())
    calib = write_demo_images(tmp_path / "calib", count=6, size=64)
    val = write_demo_images(tmp_path / "val", count=4, size=64, seed=1)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exc:
        main(["vit_tiny_patch16_224", "--model-arg", "img_size=64", "--model-arg", "depth=1", "--model-arg",
              "num_classes=10", "--weights", "random", "--calib", str(calib), "--val", str(val), "--vocab-size", "16",
              "--batch", "1", "--reps", "2", "--target", "cosine=0.99", "--out", str(out), "--quiet"])
    _, err = capsys.readouterr()
    assert exc.value.code == 0, err
    assert re.search(r"target cosine=0.99: intra keep=0.9: cosine 0\.\d{4}, lower bound -?\d\.\d{4}, on 6 "
                     r"calibration images", err)
    report = json.loads((out / "report.json").read_text())
    summary = json.loads((out / "summary.json").read_text())
    t = report["target"]
    assert summary["target"] == t
    rows = t["candidates"]
    labels = [r["label"] for r in rows]
    assert labels[:2] == ["fp32", "int8"] and "vwt local t=0.05" in labels and "vwt local t=0.05 + INT8" in labels
    for int8 in (False, True):  # each intra track: a prefix of the ladder up to its first miss, then bisections
        keeps = [r["options"]["keep"] for r in rows if r["mode"] == "intra" and r["int8"] == int8]
        steps = [k for k in keeps if k in (0.9, 0.6, 0.3)]
        passed = {r["options"]["keep"]: r["passes"] for r in rows if r["mode"] == "intra" and r["int8"] == int8}
        first_miss = next((i for i, k in enumerate(steps) if not passed[k]), None)
        assert steps == [0.9, 0.6, 0.3][: len(steps)] and (first_miss is None or first_miss == len(steps) - 1)
        for k in keeps[len(steps):]:
            assert steps[-2] > k > steps[-1]
    for r in rows:  # the bound lies below the mean, within the range cosines take; passes says it met the target
        assert -1.0 <= r["bound"] <= r["quality"] and r["passes"] == (r["bound"] >= 0.99 or r["reference"])
    assert any(r["bound"] < r["quality"] - 1e-4 for r in rows if not r["reference"])  # a spread was bounded
    passing = [r for r in rows if not r["reference"] and r["bound"] >= 0.99]
    assert t["met"] == bool(passing)
    fastest = min(passing, key=lambda r: (r["latency_ms"], -r["bound"]))
    assert t["chosen"]["label"] == fastest["label"] and [r["label"] for r in rows if r["chosen"]] == [fastest["label"]]
    # written as if its mode and options had been given
    assert report["settings"]["mode"] == fastest["mode"]
    assert t["held_out"]["file"] == Variant(methods.get(fastest["mode"]).variant,
                                                         "int8" if fastest["int8"] else "fp32").onnx_file()
    model = vx.load_model("vit_tiny_patch16_224", weights="random", img_size=64, depth=1, num_classes=10)
    # its calibration quality, recomputed from its graph; its held-out quality, from the written file
    x_calib = decode(model, list_images(calib), 32)[0]
    ref = load(out / "target" / "model.onnx")(x_calib)
    assert fastest["quality"] == pytest.approx(cosine_similarity(ref, load(out / fastest["file"])(x_calib)), abs=1e-5)
    x_val = decode(model, list_images(val))[0]
    held = cosine_similarity(load(out / "model.onnx")(x_val), load(out / t["held_out"]["file"])(x_val))
    assert t["held_out"]["images"] == 4 and t["held_out"]["quality"] == pytest.approx(held, abs=1e-5)
    text = (out / "report.md").read_text()
    assert "## Target search: cosine=0.99" in text and f"**{fastest['label']}** (chosen)" in text
    assert (out / t["plot"]).is_file()
