"""The whole command on the real data, each run once per test module, its report read back; shared by the tier's
two files (make test's workers each take one, so the runs go two at a time)."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest

from vwt_export.check.report import validate
from vwt_export.cli import main


def runner(real_data, tmp_path_factory, runs: dict[str, list[str]]):
    """run(name) -> (exit code, stderr, report or None) of `runs[name]`, each run once. An inter run other than
    "inter" reuses the vocabulary the "inter" run learned (k-means is the slow part of a run)."""
    done, folders = {}, {}

    def run(name):
        if name not in done:
            out = folders[name] = tmp_path_factory.mktemp(name)
            argv = [*real_data.cli_args, *runs[name], "--calib", str(real_data.calib), "--val", str(real_data.check),
                    "--batch", "1", "--reps", "2", "--quiet", "--out", str(out)]
            if name != "inter" and "inter" in runs[name]:
                run("inter")
                argv += ["--vocab", str(folders["inter"] / "vocab.safetensors")]
            code, err = _main(argv)
            report = json.loads((out / "report.json").read_text()) if (out / "report.json").is_file() else None
            done[name] = (code, err, report)
        return done[name]

    return run


def _main(argv):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exc:
        main(argv)
    return exc.value.code, err.getvalue()


def variant(report, precision: str, compressed: bool) -> dict:
    """The run's one FP32 or INT8 variant, compressed (its mode's graph) or not; the ONNX Runtime CPU one."""
    found = [v for v in report["variants"].values() if v["precision"] == precision
             and (v["method"] != "none") == compressed and v["backend"] == "onnxruntime-cpu"]
    assert found, f"no {precision} {'compressed' if compressed else 'uncompressed'} variant in {list(report['variants'])}"
    return found[0]


def check_report(result) -> dict:
    """The run exited 0 and wrote a valid report whose variants all have a finite cosine, INT8 of the mode's own
    graph among them; returns the report."""
    code, err, report = result
    assert code == 0, err[-2000:]
    validate(report)
    for label, v in report["variants"].items():
        cos = v["fidelity"]["cosine_similarity"]
        assert cos is not None and np.isfinite(cos), label
    assert variant(report, "int8", compressed=True)  # INT8 of the mode's own graph was built and measured
    return report
