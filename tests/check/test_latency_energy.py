import numpy as np

from vwt_export.check import energy, latency


def test_latency_covers_every_variant_and_batch_with_ordered_percentiles():
    calls = []
    runners = {name: (lambda x, n=name: calls.append((n, len(x)))) for name in ("a", "b", "c")}
    out = latency.measure(runners, {1: np.zeros((1, 2)), 4: np.zeros((4, 2))}, warmup=2, reps=5)
    assert set(out) == {"a", "b", "c"} and all(set(v) == {1, 4} for v in out.values())
    for per_batch in out.values():
        for b, s in per_batch.items():
            assert s["runs"] == 5 and s["min_ms"] <= s["p50_ms"] <= s["p90_ms"] <= s["p99_ms"]
            assert s["images_per_s"] > 0
    assert len(calls) == 3 * 2 * (2 + 5)
    firsts = [calls[i * 6][0] for i in range(7)]  # the order rotates between repetitions
    assert len(set(firsts)) == 3


def test_energy_is_unavailable_on_cpu_with_a_reason():
    result = energy.measure_cpu_variant()
    assert result["available"] is False and "NVML" in result["reason"]


def test_gpu_energy_without_a_gpu_says_why():
    result = energy.measure_gpu(lambda: None, images_per_call=1, window_s=0.01)
    assert result["available"] is False and result["reason"]


def test_several_inputs_per_batch_are_each_a_sample_and_only_limits_a_runner_to_its_batches():
    calls = []
    runners = {name: (lambda x, n=name: calls.append((n, int(x[0, 0])))) for name in ("a", "swept")}
    images = [np.full((1, 2), i) for i in range(3)]
    out = latency.measure(runners, {1: images, 4: np.zeros((4, 2))}, warmup=1, reps=2, only={"swept": (1,)})
    assert out["a"][1]["runs"] == 2 * 3 and out["a"][4]["runs"] == 2
    assert set(out["swept"]) == {1}  # never timed at batch 4
    assert sorted(i for n, i in calls if n == "swept") == [0, 0, 0, 1, 1, 1, 2, 2, 2]  # every image, every repetition


def test_timed_sessions_do_not_spin(tmp_path):
    """Interleaved sessions whose idle threads spin take the cores from the next one: every measured runner sleeps."""
    import onnx
    from onnx import TensorProto, helper

    from vwt_export.artefacts import Variant
    from vwt_export.check.variants import Candidate, load_runner

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10), tmp_path / "m.onnx")
    runner = load_runner(Candidate("fp32", Variant("", "fp32"), tmp_path / "m.onnx"))
    options = runner.session.get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
