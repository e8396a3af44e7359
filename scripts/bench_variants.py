#!/usr/bin/env python3
"""The CPU table: FP32, INT8, VWT and VWT + INT8 on ONNX Runtime CPU, timed side by side in one run.

    python scripts/bench_variants.py [--model deit_s] [--weights random] [--calib DIR] [--val DIR] [--batch 1,8]

A thin wrapper over `vwt_export.export(..., reps=20)`: it runs the full job and prints report.md's table.
Without --calib/--val it uses the built-in synthetic scenes and random weights, so only latency and tokens mean
anything; the expected order on CPU is vwt+int8 < vwt < int8 < fp32 in latency.
"""

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import vwt_export as vx  # noqa: E402
from vwt_export.check.report import VERIFICATION_HEADING, markdown  # noqa: E402
from vwt_export.demo import write_demo_images  # noqa: E402

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("--model", default="deit_s")
ap.add_argument("--weights", default=None)
ap.add_argument("--calib", default=None)
ap.add_argument("--val", default=None)
ap.add_argument("--batch", default="1,8")
ap.add_argument("--reps", type=int, default=20)
ap.add_argument("--out", default=None)
args = ap.parse_args()
out = Path(args.out or tempfile.mkdtemp(prefix="vwt-bench-variants-"))
calib = args.calib or write_demo_images(out / "demo-images")
result = vx.export(args.model, mode="inter", weights=args.weights or ("pretrained" if args.calib else "random"),
                   calib=calib, val=args.val, batches=args.batch, reps=args.reps, out=out, progress=False,
                   command=" ".join(["scripts/bench_variants.py", *sys.argv[1:]]))
print(markdown(result.report).split(VERIFICATION_HEADING)[0].rstrip())
