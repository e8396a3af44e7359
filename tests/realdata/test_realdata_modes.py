"""The whole command on real weights and real photos in modes intra and tome, and one --sweep, INT8 included, with
ToMe's fidelity floor of issue 15 (inter: test_realdata.py; make test's two workers take one file each)."""

from __future__ import annotations

import pytest

from .runs import check_report, runner, variant

TOME_R16_FLOOR = 0.975

RUNS = {
    "intra": ["--mode", "intra", "--keep", "0.75"],
    "tome": ["--mode", "tome", "--r", "16"],
    # no vocabulary to learn: keep sweeps intra alone (threshold or r would sweep inter or the hybrid too)
    "sweep": ["--mode", "intra", "--sweep", "keep=0.6,0.9"],
}


@pytest.fixture(scope="module")
def reports(real_data, tmp_path_factory):
    return runner(real_data, tmp_path_factory, RUNS)


@pytest.mark.parametrize("name", list(RUNS))
def test_the_whole_command_writes_a_valid_report(reports, name):
    report = check_report(reports(name))
    if name == "sweep":
        ranked = report["sweep"]["ranked"]
        assert {"fp32", "int8"} <= {r["label"] for r in ranked} and len(ranked) >= 4


def test_tome_r16_keeps_the_features(reports):
    code, err, report = reports("tome")
    assert code == 0, err[-2000:]
    cos = variant(report, "fp32", compressed=True)["fidelity"]["cosine_similarity"]
    assert cos >= TOME_R16_FLOOR, f"ToMe r=16 mean cosine {cos:.4f} < {TOME_R16_FLOOR}"
