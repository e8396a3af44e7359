"""A real tritonserver (the nvidia-pytriton wheel's) on free localhost ports, serving a repository made from a tiny
model: concurrent HTTP and gRPC requests return the logits of vwt_export.runtime, the dynamic batcher forms
batches larger than 1 (server statistics and Prometheus metrics), malformed requests get errors while the server
keeps serving, a model that fails to load gives a clear error with the log, and stopping leaves no process behind.
Skipped, with the reason, where the serving extra is not installed."""

import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from vwt_export import runtime
from vwt_export.errors import VWTError
from vwt_export.serving import ServingSettings, write_repository
from vwt_export.serving import server as srv

from .conftest import mixed_images

pytestmark = pytest.mark.slow  # a Triton server per module: left out of make test-fast

try:
    srv.find_triton()
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException
except (VWTError, ImportError) as e:
    pytest.skip(f"serving extra not installed ({e})", allow_module_level=True)

DELAY_US = 100_000  # a long queue delay, so concurrent requests reliably meet in one batch


@pytest.fixture(scope="module")
def repo(export_dir, tmp_path_factory):
    settings = ServingSettings(max_queue_delay_us=DELAY_US, preferred_batch_sizes=(8, 16))
    return write_repository(export_dir, settings=settings, triton_dir=tmp_path_factory.mktemp("serve") / "triton")


@pytest.fixture(scope="module")
def server(repo):
    s = srv.TritonServer(repo)
    s.start(timeout=90)
    yield s
    assert s.stop() == 0, s.log_tail()  # a graceful exit: every client connection was closed
    assert s.pids() == []


@pytest.fixture(scope="module")
def refs(export_dir):
    return {"vwt_python": runtime.load(export_dir / "model.vwt.tokenize.onnx"),
            "baseline_python": runtime.load(export_dir / "model.onnx")}


def infer(protocol, url, model, x, dtype="FP32"):
    lib = httpclient if protocol == "http" else grpcclient
    client = lib.InferenceServerClient(url.removeprefix("http://"))
    try:
        inp = lib.InferInput("pixels", list(x.shape), dtype)
        inp.set_data_from_numpy(x)
        return client.infer(model, [inp]).as_numpy("logits")
    finally:
        client.close()  # an open keep-alive connection would hold the server's shutdown for its exit timeout


def url_of(server, protocol):
    return server.http_url if protocol == "http" else server.grpc_url


def test_only_python_models_load_here(server):
    assert sorted(server.models) == ["baseline_python", "vwt_python"]
    assert set(server.skipped) == {"baseline_ort", "vwt_ort", "vwt_portable_ort"}
    assert all("onnxruntime" in why for why in server.skipped.values())


def test_concurrent_http_and_grpc_logits_equal_runtime(server, refs):
    busy = [16, 0, 9, 2, 14, 5, 11, 1, 7, 3, 12, 4]  # 5 to 17 tokens per image: the length-aware path splits
    images = mixed_images(busy, seed=1)
    jobs = [(("http", "grpc")[i % 2], model, images[i:i + 1 + i % 2])
            for i in range(len(busy) - 1) for model in ("vwt_python", "baseline_python")]
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda j: infer(j[0], url_of(server, j[0]), j[1], j[2]), jobs))
    for (protocol, model, x), y in zip(jobs, results):
        np.testing.assert_allclose(y, refs[model](x), rtol=0, atol=1e-4, err_msg=f"{model} over {protocol}")
    assert not np.allclose(results[0], results[2])  # different images, different logits: the check can fail


def _metric(text, name, model):
    m = re.search(rf'^{name}{{model="{model}",version="1"}} (\S+)$', text, re.M)
    return float(m.group(1))


def test_dynamic_batching_forms_batches(server):
    model, n = "vwt_python", 16
    before, metrics_before = server.statistics(model), server.metrics()
    x = mixed_images([i % 17 for i in range(n)], seed=2)
    with ThreadPoolExecutor(n) as pool:
        list(pool.map(lambda i: infer("grpc" if i % 2 else "http", url_of(server, "grpc" if i % 2 else "http"),
                                      model, x[i:i + 1]), range(n)))
    after, metrics_after = server.statistics(model), server.metrics()
    images = after["inference_count"] - before["inference_count"]
    executions = after["execution_count"] - before["execution_count"]
    assert images == n and executions < n, (images, executions)  # some execution ran several requests
    sizes = {b["batch_size"]: b["compute_infer"]["count"] for b in after["batch_stats"]}
    assert max(sizes) > 1, sizes
    exec_delta = (_metric(metrics_after, "nv_inference_exec_count", model)
                  - _metric(metrics_before, "nv_inference_exec_count", model))
    count_delta = (_metric(metrics_after, "nv_inference_count", model)
                   - _metric(metrics_before, "nv_inference_count", model))
    assert count_delta == n and exec_delta == executions


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_malformed_requests_get_errors_and_serving_goes_on(server, refs, protocol):
    url = url_of(server, protocol)
    x = mixed_images([3, 8], seed=3)
    with pytest.raises(InferenceServerException, match="shape"):
        infer(protocol, url, "vwt_python", np.zeros((1, 3, 32, 32), np.float32))
    with pytest.raises(InferenceServerException, match="(?i)data[- ]?type"):
        infer(protocol, url, "vwt_python", x.astype(np.float64), dtype="FP64")
    with pytest.raises(InferenceServerException, match="(?i)unknown model|not found"):
        infer(protocol, url, "no_such_model", x)
    np.testing.assert_allclose(infer(protocol, url, "vwt_python", x), refs["vwt_python"](x), rtol=0, atol=1e-4)


def test_a_model_that_fails_to_load_is_reported_with_the_log(repo, tmp_path):
    broken = tmp_path / "triton"
    (broken / "baseline_python" / "1").mkdir(parents=True)
    (broken / "baseline_python" / "config.pbtxt").write_text((repo / "baseline_python" / "config.pbtxt").read_text())
    (broken / "baseline_python" / "1" / "model.py").write_text(
        "class TritonPythonModel:\n    def initialize(self, args):\n        raise RuntimeError('boom: no graph')\n")
    s = srv.TritonServer(broken)
    with pytest.raises(VWTError, match="(?s)before it was ready.*boom: no graph"):
        s.start(timeout=60)
    assert s.pids() == []


def test_a_busy_port_is_refused_before_starting(repo):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(VWTError, match=f"port {port} on 127.0.0.1 is in use"):
            srv.TritonServer(repo, http_port=port)


def test_missing_extra_is_one_clear_line(monkeypatch, tmp_path):
    from click.testing import CliRunner

    from vwt_export.serving import serve

    monkeypatch.setattr(srv.importlib.util, "find_spec", lambda name: None)
    result = CliRunner().invoke(serve, [str(tmp_path)])
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1] == (
        "error: serving needs the tritonserver of the nvidia-pytriton wheel, which is not installed: "
        "pip install 'vwt-export[serving]'")


def test_serve_command_prints_endpoints_and_stops_on_sigterm(repo):
    port = srv.free_port()
    proc = subprocess.Popen([sys.executable, "-m", "vwt_export.serving", str(repo), "--http-port", str(port),
                             "--model", "baseline_python"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)
    reader.start()
    deadline = time.monotonic() + 90
    while not any(l.startswith("  pid") for l in lines) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    try:
        assert lines and lines[0].startswith("ready: baseline_python"), (lines, proc.poll() and proc.stderr.read())
        assert f"http://127.0.0.1:{port}" in "".join(lines)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/models/baseline_python/ready", timeout=5) as r:
            assert r.status == 200
        pgid = int(lines[-1].split()[1])
        assert len(srv.group_members(pgid)) >= 2  # the server and the model's stub run...
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(60)
    err = proc.stderr.read()
    assert rc == 0, err
    assert "stopped (tritonserver exit code 0)" in err and "skipped vwt_python: not asked for" in err
    assert srv.group_members(pgid) == []  # ...and nothing of them is left
    assert srv._port_free(port)
