#!/usr/bin/env python3
"""Build the wheel, install it into a fresh virtual environment with no checkout beside it, and run a VWT graph with
the custom op there. Exit 0 when every check holds; each step prints its time.

    .venv/bin/python scripts/check_wheel.py                     # `make check-wheel`; tests/test_wheel.py runs it too
    .venv/bin/python scripts/check_wheel.py --wheel dist/vwt_export-0.1.0-py3-none-linux_x86_64.whl   # no build
    .venv/bin/python scripts/check_wheel.py --pip-arg=--no-index --pip-arg=--find-links=WHEELHOUSE   # offline

1. `pip wheel --no-deps` of the checkout, build isolation on (hatchling from the index; hatch_build.py compiles the
   library with scripts/build_native.py); the wheel must hold vwt_export/lib/libvwt_ort_ops.so and the model cards.
2. Here (this interpreter, the checkout): a tiny random-weight ViT exported to model.vwt.onnx with a vwt::TokenMerge
   node and no portable body, and its torch logits on images where whole quadrants match one visual word.
3. `python -m venv` (no system site packages), then `pip install WHEEL`: its dependencies resolve from the configured
   index, constrained to the versions this interpreter has (so pip takes them from its cache or a local mirror).
4. In an empty folder, with `python -I` (no PYTHONPATH, no user site, no current folder on the path) and no
   VWT_ORT_LIBRARY: `vwt_export.runtime.load("model.vwt.onnx")(pixels)` must equal the torch logits; the op library it
   registered must lie inside the fresh environment, vwt_export must import from there, the model cards must load
   from the wheel, and the `vwt-export` command must run.

Exit codes: 0 all checks pass; 1 a check failed; 3 pip could not fetch hatchling or the wheel's dependencies (no
package index reachable), so nothing about the wheel was learned.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SIZE, PATCH = 64, 16
DEPENDENCIES_UNAVAILABLE = 3


def step(what: str, t0: float) -> None:
    print(f"check_wheel: {what} ({time.perf_counter() - t0:.1f} s)", flush=True)


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, text=True, capture_output=True, **kw)


def fail(what: str, proc: subprocess.CompletedProcess | None = None) -> None:
    tail = "" if proc is None else "\n" + (proc.stdout + proc.stderr)[-4000:]
    print(f"check_wheel: FAILED: {what}{tail}", file=sys.stderr)
    raise SystemExit(1)


def no_index(proc: subprocess.CompletedProcess, what: str) -> None:
    """Exit DEPENDENCIES_UNAVAILABLE when pip failed because no package index could be reached."""
    text = proc.stdout + proc.stderr
    # a network error, not merely "no matching distribution" (which a wrong requirement gives too: that must fail)
    if any(s in text for s in ("NewConnectionError", "Temporary failure in name resolution", "Network is unreachable",
                               "Max retries exceeded", "ConnectTimeout", "ProxyError")):
        print(f"check_wheel: {what}: a package could not be fetched (no package index reachable):\n{text[-2000:]}",
              file=sys.stderr)
        raise SystemExit(DEPENDENCIES_UNAVAILABLE)


def build_wheel(dist: Path) -> Path:
    t0 = time.perf_counter()
    proc = run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--disable-pip-version-check", "-w", str(dist),
                str(ROOT)])
    if proc.returncode != 0:
        no_index(proc, "building the wheel (hatchling comes from the index)")
        fail("building the wheel", proc)
    wheel = next(dist.glob("vwt_export-*.whl"))
    step(f"built {wheel.name}", t0)
    return wheel


def check_contents(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    for needed in ("vwt_export/lib/libvwt_ort_ops.so", "vwt_export/model_cards/deit_s.yaml",
                   "vwt_export/serving/python_model/model.py"):
        if needed not in names:
            fail(f"{wheel.name} lacks {needed}")
    if "-py3-none-" not in wheel.name or "any.whl" in wheel.name:
        fail(f"{wheel.name}: expected a py3-none-<platform> tag (native code, no Python ABI)")
    stray = [n for n in names if n.startswith(("tests/", "scripts/", "plugins/", "build/"))]
    if stray:
        fail(f"{wheel.name} carries files outside the package: {stray[:5]}")
    print(f"check_wheel: {wheel.name} holds " + ", ".join(n for n in names if "/lib/" in n))


def export_tiny_model(folder: Path) -> None:
    """model.vwt.onnx (custom-op form) + pixels.npy and the torch reference logits (reference.npy)."""
    import numpy as np
    import torch

    import vwt_export as vx
    from vwt_export.graph.export import export_model, save_model
    from vwt_export.backends.onnxruntime import needs_op_library
    from vwt_export.graph.surgery import apply_vwt

    t0 = time.perf_counter()
    colours = np.array([[1.0, -1.0, 0.5], [-1.0, 1.0, 0.3], [0.2, 0.4, -1.0], [-0.6, -0.7, -0.9]], np.float32)
    rng = np.random.default_rng(0)
    pixels = np.empty((3, 3, SIZE, SIZE), np.float32)
    half = SIZE // 2
    for i in range(3):  # four flat quadrants (one visual word each) and i*3 noisy patches that match nothing
        for q, (r, c) in enumerate(((0, 0), (0, half), (half, 0), (half, half))):
            pixels[i, :, r:r + half, c:c + half] = colours[q][:, None, None]
        pixels[i] += 0.01 * rng.standard_normal(pixels[i].shape).astype(np.float32)
        for n in rng.permutation((SIZE // PATCH) ** 2)[:3 * i]:
            r, c = divmod(int(n), SIZE // PATCH)
            pixels[i, :, r * PATCH:(r + 1) * PATCH, c * PATCH:(c + 1) * PATCH] = rng.standard_normal((3, PATCH, PATCH))
    words = np.repeat(colours, PATCH * PATCH, axis=1)  # image-space features: (channel, row, column) per patch
    torch.manual_seed(0)
    model = vx.load_model("vit_tiny_patch16_224", weights="random", img_size=SIZE, depth=1, num_classes=10)
    graph = apply_vwt(export_model(model), "inter", vocab=words, threshold=0.1, pooling=model.global_pool)
    if not needs_op_library(graph):
        fail("the exported graph does not use the op library, so it would prove nothing")
    save_model(graph, folder / "model.vwt.onnx")
    cmodel = vx.compress(model, "inter", vocab=vx.Vocabulary(torch.from_numpy(words), patch_size=PATCH), threshold=0.1)
    with torch.no_grad():
        reference = cmodel(torch.from_numpy(pixels)).numpy()
    tokens = [int(t) for t in cmodel.last_token_counts]
    if not min(tokens) < cmodel.tokens_in:
        fail(f"nothing merged ({tokens} of {cmodel.tokens_in} tokens): the images do not exercise TokenMerge")
    np.save(folder / "pixels.npy", pixels)
    np.save(folder / "reference.npy", reference)
    step(f"exported model.vwt.onnx (tokens kept per image {tokens} of {cmodel.tokens_in})", t0)


def make_venv(venv: Path, wheel: Path, pip_args: list[str]) -> Path:
    t0 = time.perf_counter()
    proc = run([sys.executable, "-m", "venv", str(venv)])
    if proc.returncode != 0:
        fail("creating the virtual environment", proc)
    python = venv / "bin" / "python"
    # the versions this interpreter runs, so the fresh environment gets the tested stack (and pip its cached wheels)
    freeze = run([sys.executable, "-m", "pip", "list", "--format=freeze", "--exclude-editable",
                  "--disable-pip-version-check"]).stdout
    constraints = venv / "constraints.txt"
    constraints.write_text("\n".join(line for line in freeze.splitlines()
                                     if "==" in line and not line.lower().startswith(("vwt-export", "vwt_export"))))
    proc = run([str(python), "-m", "pip", "install", "--disable-pip-version-check", "--no-compile",
                "-c", str(constraints), *pip_args, str(wheel)])
    if proc.returncode != 0:
        no_index(proc, "installing the wheel's dependencies")
        fail("installing the wheel", proc)
    step(f"installed {wheel.name} and its dependencies into a fresh {venv}", t0)
    return python


PROBE = r"""
import json, sys, numpy as np
import vwt_export, vwt_export.plugins as plugins
from vwt_export import runtime
from vwt_export.models import model_cards
x = np.load("pixels.npy"); ref = np.load("reference.npy")
got = runtime.load("model.vwt.onnx")(x)
print(json.dumps({"package": vwt_export.__file__, "library": str(plugins.ort_library()),
                  "max_abs_err": float(np.abs(got - ref).max()), "scale": float(np.abs(ref).max()),
                  "shape": list(got.shape), "cards": sorted(model_cards())}))
"""


def probe(python: Path, venv: Path, folder: Path) -> None:
    t0 = time.perf_counter()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VWT_"))}
    proc = run([str(python), "-I", "-c", PROBE], cwd=folder, env=env)
    if proc.returncode != 0:
        fail("runtime.load('model.vwt.onnx') in the fresh environment", proc)
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    inside = str(venv.resolve())
    if not r["package"].startswith(inside) or not r["library"].startswith(inside):
        fail(f"vwt_export or its library came from outside the fresh environment: {r['package']}, {r['library']}")
    if r["shape"] != [3, 10] or not r["max_abs_err"] <= 1e-4 * max(1.0, r["scale"]):
        fail(f"the logits differ from torch's: max abs error {r['max_abs_err']:.3g} (scale {r['scale']:.3g})")
    if "deit_s" not in r["cards"]:
        fail(f"the model cards did not load from the wheel: {r['cards']}")
    cli = run([str(venv / "bin" / "vwt-export"), "--help"], cwd=folder, env=env)
    if cli.returncode != 0 or "Usage" not in cli.stdout:
        fail("`vwt-export --help` in the fresh environment", cli)
    step(f"runtime.load ran model.vwt.onnx with {r['library']}: max abs error {r['max_abs_err']:.2g} "
         f"against torch; {len(r['cards'])} model cards; vwt-export --help runs", t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--wheel", type=Path, help="an already built wheel (default: build one)")
    parser.add_argument("--work", type=Path, help="work folder (default: a temporary one, removed afterwards)")
    parser.add_argument("--pip-arg", action="append", default=[], help="extra argument for the fresh venv's pip")
    args = parser.parse_args()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="vwt-wheel-") as tmp:
        work = args.work or Path(tmp)
        (work / "run").mkdir(parents=True, exist_ok=True)
        wheel = args.wheel.resolve() if args.wheel else build_wheel(work / "dist")
        check_contents(wheel)
        export_tiny_model(work / "run")
        python = make_venv(work / "venv", wheel, args.pip_arg)
        probe(python, work / "venv", work / "run")
    step("all checks passed", t0)


if __name__ == "__main__":
    main()
