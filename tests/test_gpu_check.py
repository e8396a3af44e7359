"""The GPU check's CPU side (scripts/gpu_check.py, scripts/gpu_check.sh): everything that can be proved without a GPU
before one is lent for 15 minutes.

- the script imports and reports where the GPU machine's absent packages are absent;
- every kernel case's inputs, through the op library's CPU kernel (ONNX Runtime), agree with the torch reference
  by the script's own comparison, which rejects wrong answers;
- the energy arithmetic (idle once, counter edges, gross/net, noise) on a stand-in NVML counter;
- the torch variants it times build and run (on the CPU here);
- the shell script's order, budget, logs and failure handling, with stand-ins for nvidia-smi, nvcc and
  compute-sanitizer.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch
from onnx import TensorProto

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.py"
SHELL = ROOT / "scripts" / "gpu_check.sh"
# Packages the GPU machine lacks (or may lack): cupy and nvidia-ml-py are optional, TensorRT and the graph tools
# are not installed there.
ABSENT_THERE = ("cupy", "pynvml", "tensorrt", "tensorrt_rtx", "onnx_graphsurgeon", "polygraphy")


def load_gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


gc = load_gpu_check()


# ---- imports without the optional packages ---------------------------------------------------------------------

def test_imports_and_reports_without_the_optional_packages(monkeypatch):
    for name in ABSENT_THERE:
        monkeypatch.setitem(sys.modules, name, None)  # import fails as if not installed
    module = load_gpu_check()
    reason = module.NvmlCounter.open()
    assert isinstance(reason, str) and "pynvml is not installed" in reason


def run_script(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """gpu_check.py in a fresh interpreter where the packages the GPU machine lacks cannot be imported."""
    blocker = (f"import sys, runpy; [sys.modules.__setitem__(m, None) for m in {ABSENT_THERE!r}]; "
               f"sys.argv = {[str(SCRIPT), *args]!r}; runpy.run_path({str(SCRIPT)!r}, run_name='__main__')")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run([sys.executable, "-c", blocker], capture_output=True, text=True, env=env, timeout=timeout,
                          cwd=ROOT)


def test_versions_runs_where_optional_packages_are_absent():
    r = run_script("versions")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "cupy absent" in r.stdout and "nvidia-ml-py absent" in r.stdout
    assert "vwt_export" in r.stdout and "imports" in r.stdout  # the package imports as it must on the GPU machine
    assert "attn_mask" in r.stdout


# ---- every reference case against the op library's CPU kernel --------------------------------------------------

@pytest.fixture(scope="module")
def cpu_kernel(op_library):
    """f(case, tokens, keys) -> (merged, sizes, length) from vwt::TokenMerge's CPU kernel through ONNX Runtime."""
    from vwt_export.backends.onnxruntime import create_session
    from vwt_export.graph import ops

    sessions = {}

    def run(case, tokens, keys):
        key = (case.P, case.grid_w, case.dtype)
        if key not in sessions:
            token_type = TensorProto.FLOAT16 if case.dtype == "float16" else TensorProto.FLOAT
            sessions[key] = create_session(ops.single_op_model(ops.TOKEN_MERGE, token_type=token_type,
                                                               num_prefix=case.P, grid_w=case.grid_w))
        merged, sizes, length = sessions[key].run(None, {"tokens": tokens.numpy(), "keys": keys.numpy()})
        return torch.from_numpy(merged), torch.from_numpy(sizes), int(length)

    return run


def distinct_inputs(cases):
    """One case per distinct input (the path does not change the inputs)."""
    seen, out = set(), []
    for c in cases:
        if c.name not in seen:
            seen.add(c.name)
            out.append(c)
    return out


def test_every_reference_case_agrees_with_the_cpu_kernel(cpu_kernel):
    cases = gc.kernel_cases("full")
    graph_inputs = {c.name for c in cases if c.path == "trt-graph"}
    checked = 0
    for case in distinct_inputs(cases):
        tokens, keys = case.inputs()
        # the trt-graph path replays with the keys reversed as well
        for used in ([keys, keys.flip(1)] if case.name in graph_inputs else [keys]):
            ref_m, ref_s = gc.reference(case, tokens, used)
            ok, why, _ = gc.compare(case, *cpu_kernel(case, tokens, used), ref_m, ref_s)
            assert ok, f"{case.name}: {why}"
            checked += 1
            if case.keys == "distinct" and case.B:
                assert ref_m.shape[1] == case.P + case.N, case.name
            if case.keys == "one-key" and case.B:
                assert ref_m.shape[1] == case.P + min(case.N, 1), case.name
    assert checked > 400


def test_the_grid_cap_case_is_past_the_cap_and_its_shortcut_reference_is_exact():
    cap = [c for c in gc.kernel_cases("full") if c.shared_keys]
    assert {c.grid_w for c in cap} == {0, gc.GRID_CAP[4]} and {c.path for c in cap} == {"ort", "trt"}
    B, N = gc.GRID_CAP[:2]
    L = 1 << (N - 1).bit_length()
    assert B * N > gc.GRID_CAP_THREADS and B * L > gc.GRID_CAP_THREADS
    # the shortcut (images side by side along D) equals the reference image by image, on a small twin
    small = gc.Case(5, 64, 3, 1, 8, "random", "float32", "ort", 8, shared_keys=True)
    tokens, keys = small.inputs()
    assert len(set(keys[:, 0].tolist())) == 5  # other key values in every image
    merged, sizes = gc.reference(small, tokens, keys)
    for b in range(small.B):
        m, s = gc.reference(gc.dataclasses.replace(small, shared_keys=False), tokens[b:b + 1], keys[b:b + 1])
        assert torch.equal(merged[b:b + 1], m) and torch.equal(sizes[b:b + 1], s)


def test_compare_rejects_wrong_answers():
    case = gc.Case(2, 16, 4, 1, 4, "random", "float32", "ort", 4)
    tokens, keys = case.inputs()
    ref_m, ref_s = gc.reference(case, tokens, keys)
    L = ref_m.shape[1]
    assert gc.compare(case, ref_m.clone(), ref_s.clone(), L, ref_m, ref_s)[0]
    off = ref_m.clone()
    off[1, -1, 2] += 1e-3
    assert not gc.compare(case, off, ref_s, L, ref_m, ref_s)[0]
    unwritten = ref_m.clone()
    unwritten[0, 0, 0] = float("nan")
    assert "unwritten" in gc.compare(case, unwritten, ref_s, L, ref_m, ref_s)[1]
    sizes = ref_s.clone()
    sizes[0, -1] += 1
    assert "sizes" in gc.compare(case, ref_m, sizes, L, ref_m, ref_s)[1]
    assert "length" in gc.compare(case, ref_m, ref_s, L + 1, ref_m, ref_s)[1]
    half = gc.dataclasses.replace(case, dtype="float16")
    assert gc.compare(half, ref_m.half(), ref_s, L, ref_m, ref_s)[0]
    assert not gc.compare(half, (ref_m + 0.01).half(), ref_s, L, ref_m, ref_s)[0]


def test_trt_tail_check():
    B, L, D, bound = 2, 3, 4, 5
    merged = torch.full((B * bound * D,), float("nan"))
    sizes = torch.full((B * bound,), float("nan"))
    merged[: B * L * D] = 1.0
    sizes[: B * L] = 1.0
    assert gc.tail_untouched(merged, sizes, B, L, D)
    sizes[B * L] = 0.0
    assert not gc.tail_untouched(merged, sizes, B, L, D)


def test_case_lists_cover_what_the_issue_asks():
    full = gc.kernel_cases("full")
    assert {c.keys for c in full} == set(gc.KEY_PATTERNS)
    assert {c.dtype for c in full} == {"float32", "float16"} and {c.path for c in full} == set(gc.PATHS)
    assert any(c.B == 0 for c in full) and any(c.N == 0 for c in full) and any(c.D == 0 for c in full)
    assert any(c.N > 2048 for c in full)  # the global bitonic steps
    quick, tiny = gc.kernel_cases("quick"), gc.kernel_cases("tiny")
    assert {c.path for c in quick} == set(gc.PATHS) and len(tiny) < len(quick) < len(full)
    assert all(c.B * c.N < 2**20 for c in quick + tiny)  # small enough to run under the sanitizers


def test_snake_is_one_component():
    from vwt_export.vwt.inter import dense_relabel

    keys = gc.snake_keys(2, 20 * 14, 14)
    labels = dense_relabel(keys, 14)
    zero = keys[0] == 0
    assert labels[0][zero].unique().numel() == 1  # the serpentine is one component
    assert torch.equal(keys[1], keys[0].flip(0))


# ---- energy arithmetic with a stand-in counter --------------------------------------------------------------------

class StandInGpu:
    """A GPU as NVML shows it: power integrated continuously, published as integer mJ every `period_us`. Idle
    power alternates between idle_w -/+ idle_swing each second; work() draws busy_w for call_us. Time is kept in
    integer microseconds, so that every step moves it."""

    def __init__(self, idle_w=80.0, idle_swing=1.0, busy_w=300.0, call_us=3000, period_us=20000):
        self.us, self.joules, self.published = 0, 0.0, 0
        self.idle_w, self.idle_swing, self.busy_w = idle_w, idle_swing, busy_w
        self.call_us, self.period_us = call_us, period_us

    def _advance(self, dt_us: int, watts: float | None) -> None:
        end = self.us + dt_us
        while self.us < end:
            second = self.us // 1_000_000
            w = watts if watts is not None else self.idle_w + (self.idle_swing if second % 2 else -self.idle_swing)
            nxt = min(end, (self.us // self.period_us + 1) * self.period_us, (second + 1) * 1_000_000)
            self.joules += w * (nxt - self.us) / 1e6
            self.us = nxt
            if self.us % self.period_us == 0:
                self.published = int(self.joules * 1e3)

    def clock(self) -> float:
        return self.us / 1e6

    def sleep(self, s: float) -> None:
        self._advance(max(1, round(s * 1e6)), None)

    def work(self) -> None:
        self._advance(self.call_us, self.busy_w)

    def counter(self):
        return gc.NvmlCounter(lambda: self.published, "stand-in")


def test_idle_is_measured_on_the_counter_edges():
    gpu = StandInGpu()
    idle = gc.measure_idle(gpu.counter(), window_s=6.0, clock=gpu.clock, sleep=gpu.sleep)
    assert idle.ok
    assert idle.watts == pytest.approx(80.0, abs=0.5)
    assert idle.update_period_s == pytest.approx(0.02, abs=0.002)
    assert 0.5 < idle.sd_watts < 1.5  # the +-1 W swing
    assert idle.step_mj == pytest.approx(80 * 0.02 * 1e3, rel=0.05)
    assert "integer mJ" in gc.describe_counter(idle) and "updates every ~20 ms" in gc.describe_counter(idle)


def test_gross_and_net_energy_per_image():
    gpu = StandInGpu()
    idle = gc.measure_idle(gpu.counter(), window_s=6.0, clock=gpu.clock, sleep=gpu.sleep)
    e = gc.measure_energy(gpu.counter(), gpu.work, images_per_call=2, idle=idle, window_s=4.0, clock=gpu.clock,
                          sleep=gpu.sleep)
    assert e.aligned and e.seconds >= 4.0
    # per image: 300 W x 3 ms / 2 images gross; (300 - 80) W x 3 ms / 2 net (edge waits add a little idle draw)
    assert e.gross == pytest.approx(300 * 0.003 / 2, rel=0.02)
    assert e.net == pytest.approx(220 * 0.003 / 2, rel=0.03)
    assert not e.under_noise and 0 < e.noise < 0.05 * e.net
    gross, net, vs, watts = gc.energy_cells(e, e)
    assert net.startswith(f"{e.net:.4f} ±") and vs == "1.00x" and gross == f"{e.gross:.4f}"


def test_a_net_figure_under_the_noise_is_flagged_not_printed_as_a_saving():
    gpu = StandInGpu()
    idle = gc.measure_idle(gpu.counter(), window_s=6.0, clock=gpu.clock, sleep=gpu.sleep)
    base = gc.measure_energy(gpu.counter(), gpu.work, 1, idle, window_s=4.0, clock=gpu.clock, sleep=gpu.sleep)
    gpu.busy_w = 80.5  # work that barely lifts the draw above idle
    e = gc.measure_energy(gpu.counter(), gpu.work, 1, idle, window_s=4.0, clock=gpu.clock, sleep=gpu.sleep)
    assert e.under_noise
    gross, net, vs, _ = gc.energy_cells(e, base)
    assert net.startswith("under noise") and vs == "n/a" and float(gross) > 0
    assert gc.energy_cells(base, e)[2] == "n/a"  # nor is a ratio printed against such a baseline


def test_a_counter_that_never_moves_is_said_so():
    frozen = gc.NvmlCounter(lambda: 1234)
    t = [0.0]
    idle = gc.measure_idle(frozen, window_s=2.0, clock=lambda: t[0], sleep=lambda s: t.__setitem__(0, t[0] + s))
    assert not idle.ok and "changed 0 times" in gc.describe_counter(idle)


# ---- timm and carried wheels --------------------------------------------------------------------------------------

def test_timm_status_checks_attn_mask(monkeypatch):
    assert gc.timm_status()[0]
    from timm.models.vision_transformer import Block

    monkeypatch.setattr(Block, "forward", lambda self, x: x)  # a block as timm 1.0.15 had it
    ok, line = gc.timm_status()
    assert not ok and "too old" in line and ">= 1.0.16" in line


def test_needed_wheels(tmp_path):
    for name in ("timm-1.0.31-py3-none-any.whl", "onnx_graphsurgeon-0.6.1-py2.py3-none-any.whl"):
        (tmp_path / name).write_bytes(b"")
    installed = {"timm": "1.0.9"}.get
    need = gc.needed_wheels(tmp_path, installed, timm_ok=lambda: False)
    assert [w.name for w, _ in need] == ["onnx_graphsurgeon-0.6.1-py2.py3-none-any.whl", "timm-1.0.31-py3-none-any.whl"]
    assert "not installed" in need[0][1] and "attn_mask" in need[1][1]
    assert [w.name for w, _ in gc.needed_wheels(tmp_path, {"timm": "1.0.31", "onnx-graphsurgeon": "0.6.1"}.get,
                                                timm_ok=lambda: True)] == []


# ---- the variants it times -----------------------------------------------------------------------------------------

def test_the_timed_variants_build_and_run():
    variants, pixels = gc.build_variants("deit_s", "random", "cpu", images=4, vocab_size=16)
    assert set(variants) == {"baseline", "vwt-intra", "vwt-inter"} and pixels.shape == (2, 3, 224, 224)
    with torch.no_grad():
        counts = {}
        for name, v in variants.items():
            assert v(pixels).shape == (2, 1000)
            counts[name] = v.last_token_counts.tolist()
    assert counts["baseline"] == [197, 197] and counts["vwt-intra"] == [99, 99]
    assert all(2 <= c <= 197 for c in counts["vwt-inter"])


# ---- the kernel drivers rehearsed on the CPU ----------------------------------------------------------------------

class StandInStream:
    cuda_stream = 0

    def synchronize(self):
        if CAPTURING:
            raise RuntimeError("a stream synchronisation inside a CUDA-graph capture")


class StandInGraph:
    """Records the kernel calls made while it captures; replay() runs them again, as a CUDA graph would, on the
    buffers they were captured with."""

    def __init__(self):
        self.calls = []

    def replay(self):
        for call in self.calls:
            call()


CAPTURING: list[StandInGraph] = []


@contextlib.contextmanager
def stand_in_capture(graph, stream=None, capture_error_mode="thread_local"):
    assert capture_error_mode == "global"  # a synchronising call from any thread fails the capture
    CAPTURING.append(graph)
    try:
        yield
    finally:
        CAPTURING.pop()


@pytest.fixture
def cpu_rehearsal(monkeypatch, tmp_path):
    """gpu_check's kernel drivers with the CPU standing in for the GPU: buffers on the CPU, torch.cuda's streams
    and graphs stood in for (a host read or a sync while capturing fails, as in global capture mode), and
    f(wrong=False) -> the path of a stand-in kernel library built from tests/gpu_check_cpu_stand_in.cc."""
    compiler = shutil.which("c++") or shutil.which("g++")
    if compiler is None:
        pytest.skip("no C++ compiler to build the stand-in kernel library")
    monkeypatch.setattr(gc, "DEVICE", "cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "Stream", StandInStream)
    monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "current_stream", StandInStream)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)
    monkeypatch.setattr(torch.cuda, "CUDAGraph", StandInGraph)
    monkeypatch.setattr(torch.cuda, "graph", stand_in_capture)
    real_item, real_call = torch.Tensor.item, gc.Kernels._call

    def item(t):
        if CAPTURING:
            raise RuntimeError("a host read inside a CUDA-graph capture")
        return real_item(t)

    def call(self, fn, *args):
        if CAPTURING:
            CAPTURING[-1].calls.append(lambda: real_call(self, fn, *args))
        else:
            real_call(self, fn, *args)

    monkeypatch.setattr(torch.Tensor, "item", item)
    monkeypatch.setattr(gc.Kernels, "_call", call)

    def build(wrong=False):
        out = tmp_path / f"stand-in{'-wrong' if wrong else ''}.so"
        subprocess.run([compiler, "-std=c++17", "-O2", "-shared", "-fPIC", f"-I{ROOT / 'plugins' / 'common'}",
                        *(["-DVWT_STAND_IN_WRONG"] if wrong else []), str(ROOT / "tests" / "gpu_check_cpu_stand_in.cc"),
                        "-o", str(out)], check=True)
        return str(out)

    return build


def test_kernel_drivers_rehearsed_on_the_cpu(cpu_rehearsal, tmp_path, capsys):
    library = cpu_rehearsal()
    log = tmp_path / "kernels.log"
    rc = gc.main(["kernels", "--library", library, "--subset", "quick", "--log", str(log)])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "kernels: all passed" in out and "two streams, no sync between them: OK" in out
    for path in gc.PATHS:
        assert f"  {path:9s}:" in out
    lines = log.read_text().splitlines()
    assert sum("trt-graph replay 2: OK" in line for line in lines) == sum(c.path == "trt-graph"
                                                                           for c in gc.kernel_cases("quick"))
    # the one-image shortcut of the grid-cap case, driven as the GPU pass drives it
    cap = gc.Case(5, 64, 3, 1, 8, "random", "float32", "trt", 8, shared_keys=True)
    assert gc.check_case(gc.Kernels(library), cap, torch.cuda.Stream()) == [(True, "", 0.0)]

    class ReadsTheLength(gc.Kernels):  # what the TensorRT path must never do: a host read between the phases
        def groups(self, keys, B, N, P, grid_w, ws, length, stream):
            super().groups(keys, B, N, P, grid_w, ws, length, stream)
            length.item()

    graph_case = gc.Case(2, 16, 4, 1, 4, "random", "float32", "trt-graph", 4)
    with pytest.raises(gc.CheckError, match="CUDA-graph capture failed"):
        gc.check_case(ReadsTheLength(library), graph_case, torch.cuda.Stream())


def test_kernel_drivers_catch_a_wrong_library(cpu_rehearsal, capsys):
    rc = gc.main(["kernels", "--library", cpu_rehearsal(wrong=True), "--subset", "tiny", "--show", "3"])
    out = capsys.readouterr().out
    assert rc == 1
    assert out.count("MISMATCH sizes differ") == 3 and "more failures" in out and "FAILED" in out.splitlines()[-1]


class FakeCudaEvent:
    def __init__(self, enable_timing=False):
        self.t = 0.0

    def record(self):
        self.t = time.perf_counter()

    def synchronize(self):
        pass

    def elapsed_time(self, end):
        return (end.t - self.t) * 1e3


def test_measure_rehearsed_on_the_cpu(monkeypatch, tmp_path, capsys):
    """run_measure end to end with the CPU standing in for the GPU (torch.cuda's events and syncs replaced, a
    stand-in counter at a steady 80 W that the CPU's work cannot move): the table, the under-noise flags and
    figures.json come out as they would on the GPU machine."""
    build = gc.build_variants
    monkeypatch.setattr(gc, "build_variants", lambda m, w, device, images: build(m, w, "cpu", images=4, vocab_size=16))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: "CPU standing in")
    monkeypatch.setattr(torch.cuda, "Event", FakeCudaEvent)
    steady = gc.NvmlCounter(lambda: int(time.perf_counter() // 0.02 * 0.02 * 80_000))  # mJ, updated every 20 ms
    monkeypatch.setattr(gc.NvmlCounter, "open", classmethod(lambda cls, index=0: steady))
    figures = tmp_path / "figures.json"
    rc = gc.main(["measure", "--model", "deit_t", "--idle-s", "1", "--window-s", "0.2", "--rounds", "1", "--reps", "1",
                  "--figures", str(figures)])
    out = capsys.readouterr().out
    assert rc == 0, out
    idle = re.search(r"idle ([0-9.]+) W \(once, before any work", out)
    assert idle and float(idle.group(1)) == pytest.approx(80.0, rel=0.03) and "updates every ~20 ms" in out
    rows = [line for line in out.splitlines() if line.startswith("| ") and line[2:5] not in ("var", "---")]
    assert [r.split(" | ")[0:2] for r in rows] == [["| baseline", "1"], ["| vwt-intra", "1"], ["| vwt-inter", "1"],
                                                   ["| baseline", "32"], ["| vwt-intra", "32"], ["| vwt-inter", "32"]]
    assert all("under noise" in r for r in rows)  # no saving printed where the counter saw none
    saved = json.loads(figures.read_text())
    assert saved["idle"]["watts"] == pytest.approx(80.0, rel=0.03) and len(saved["rows"]) == 6
    assert all(r["energy"]["net_under_noise"] for r in saved["rows"])


# ---- the shell script ---------------------------------------------------------------------------------------------

def test_shell_syntax_and_shellcheck():
    subprocess.run(["bash", "-n", str(SHELL)], check=True)
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (bash -n passed)")
    r = subprocess.run(["shellcheck", str(SHELL)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout


STUBS = {
    "nvidia-smi": """#!/usr/bin/env bash
case "$*" in *noheader*) echo 9.0 ;; *) echo "name, compute_cap"; echo "Stand-in H200, 9.0" ;; esac
""",
    # records its arguments and writes the library it was asked for
    "nvcc": """#!/usr/bin/env bash
[ "$1" = --version ] && { echo "Cuda compilation tools, release 13.0 (stand-in)"; exit 0; }
echo "$*" >> "$STUB_LOG/nvcc.args"
while [ $# -gt 0 ]; do [ "$1" = -o ] && { shift; echo stand-in > "$1"; }; shift; done
""",
    # records the tool and the allocator setting, then runs nothing (the checks need a GPU); finds the canary's
    # planted write, as memcheck would
    "compute-sanitizer": """#!/usr/bin/env bash
[ "$1" = --version ] && { echo "Version 2025.3.1.0 (stand-in)"; exit 0; }
tool=; prev=; for a in "$@"; do [ "$prev" = --tool ] && tool=$a; prev=$a; done
echo "$tool cache-off=${PYTORCH_NO_CUDA_MEMORY_CACHING:-unset} $*" >> "$STUB_LOG/sanitizer.args"
echo "========= COMPUTE-SANITIZER"
case " $* " in *" canary "*)
  echo "========= Invalid __global__ write of size 4 bytes"; echo "========= ERROR SUMMARY: 1 error"; exit 99 ;;
esac
echo "kernels: all passed (0 s)"
echo "========= ERROR SUMMARY: 0 errors"
""",
}


def minimal_wheel(folder: Path, name: str, version: str) -> Path:
    whl = folder / f"{name}-{version}-py3-none-any.whl"
    info = f"{name}-{version}.dist-info"
    files = {f"{name}.py": "VALUE = 1\n", f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
             f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    files[f"{info}/RECORD"] = "".join(f"{f},,\n" for f in [*files, f"{info}/RECORD"])
    with zipfile.ZipFile(whl, "w") as z:
        for f, text in files.items():
            z.writestr(f, text)
    return whl


def stand_in_checkout(tmp_path: Path) -> tuple[Path, dict]:
    """A copy of the scripts in a folder of their own (the build and the logs land there), stand-in tools on PATH."""
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    for f in (SHELL, SCRIPT):
        shutil.copy(f, repo / "scripts" / f.name)
    bin_dir, logs = tmp_path / "bin", tmp_path / "stub-log"
    bin_dir.mkdir()
    logs.mkdir()
    for name, text in STUBS.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHON": sys.executable,
           "PYTHONPATH": str(ROOT), "OUT": str(tmp_path / "out"), "STUB_LOG": str(logs), "TMPDIR": str(tmp_path),
           "CUDA_VISIBLE_DEVICES": ""}
    env.pop("NVCC", None)
    env.pop("SANITIZER", None)
    (tmp_path / "out").mkdir()
    return repo, env


def test_shell_runs_every_step_in_order_and_keeps_going(tmp_path):
    repo, env = stand_in_checkout(tmp_path)
    (repo / ".whl").mkdir()
    minimal_wheel(repo / ".whl", "vwt_stand_in_pkg", "1.0")
    r = subprocess.run(["bash", str(repo / "scripts" / "gpu_check.sh")], capture_output=True, text=True, env=env,
                       timeout=600)
    out = r.stdout
    assert r.returncode == 1, out  # measure and kernels cannot run without a GPU: reported, not fatal
    order = [out.index(s) for s in ("== 1. versions", "installed in", "== build", "== 2. idle power",
                                    "== 2. correctness", "== 3. compute-sanitizer", "== summary")]
    assert order == sorted(order)
    assert "carried wheel needed: vwt_stand_in_pkg-1.0" in out
    assert "vwt_export 0" in out and "imports" in out
    nvcc_args = (tmp_path / "stub-log" / "nvcc.args").read_text()
    assert "-arch=sm_90" in nvcc_args and "-lineinfo" in nvcc_args
    sanitizer = (tmp_path / "stub-log" / "sanitizer.args").read_text().splitlines()
    assert [s.split()[0] for s in sanitizer] == ["memcheck", "memcheck", "racecheck", "synccheck"]
    assert all("cache-off=1" in s for s in sanitizer[:2]) and "--subset quick" in sanitizer[0]
    assert " canary " in sanitizer[1] and "--padding" in sanitizer[1]
    assert all("kns=3vwt4cuda" in s for s in sanitizer) and "--subset tiny" in sanitizer[3]
    summary = out[out.index("== summary"):]
    for line in ("versions   ok", "build      ok", "measure    FAILED (exit 2)", "kernels    FAILED (exit 2)",
                 "memcheck   ok", "canary     ok", "racecheck  ok", "synccheck  ok"):
        assert line in summary, summary
    assert "canary: ERROR SUMMARY: 1 error" in out
    assert "ERROR SUMMARY: 0 errors" in out
    # without a GPU, measure and kernels each say so in one line, no traceback
    assert "error: no CUDA GPU visible to torch; run the measurements" in out
    assert "error: no CUDA GPU visible to torch; run the kernel checks" in out and "Traceback" not in out
    logs = {p.name for p in (tmp_path / "out").iterdir()}
    assert {"transcript.log", "build.log", "memcheck.log", "racecheck.log", "synccheck.log"} <= logs
    assert len(logs) <= 8  # what comes back from the GPU machine's $OUT
    assert (tmp_path / "out" / "transcript.log").read_text().rstrip().endswith("SOME STEPS FAILED (see above)")


def test_shell_stays_inside_its_budget(tmp_path):
    repo, env = stand_in_checkout(tmp_path)
    env["VWT_GPU_BUDGET_S"] = "0"
    r = subprocess.run(["bash", str(repo / "scripts" / "gpu_check.sh")], capture_output=True, text=True, env=env,
                       timeout=120)
    assert r.returncode == 1
    summary = r.stdout[r.stdout.index("== summary"):]
    assert summary.count("skipped") == 5 and summary.count("of the 0s budget left") == 3  # versions, build, measure
    assert not (tmp_path / "stub-log" / "nvcc.args").exists()
