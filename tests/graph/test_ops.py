"""vwt::TokenMerge (op version 2) in its CPU forms: the C++ op library and the portable function body, each
against the torch spec (vwt_export.vwt.merge.token_merge), and a hand-worked case against neither."""

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto

import vwt_export as vx
from vwt_export import plugins
from vwt_export.backends.onnxruntime import create_session, needs_op_library

from .conftest import merge_model, reference

FORMS = ["custom", "portable"]

# Keys a 2x4 grid (grid_w = 4 below): two separate components of key 5, one of -3, one of 2**62.
HAND_KEYS = np.array([[5, 5, -3, 5,
                       2**62, -3, -3, 5]], np.int64)


def hand_tokens():
    return np.arange(1 * (1 + 8) * 2, dtype=np.float32).reshape(1, 9, 2)  # token i = [2i, 2i+1]


def mean_of(t, patches):  # mean of the tokens of these patches (prefix P = 1 first)
    return t[0, [1 + p for p in patches]].mean(0)


@pytest.mark.parametrize("form", FORMS)
def test_hand_worked_case(form, op_library):
    """Worked out by hand from the spec: global groups in ascending key order; local (grid_w = 4) groups are
    the 4-connected components, in (key, first patch) order."""
    t = hand_tokens()
    session = create_session(merge_model(num_prefix=1, portable=form == "portable"))
    merged, sizes, length = session.run(None, {"tokens": t, "keys": HAND_KEYS})
    groups = [[2, 5, 6], [0, 1, 3, 7], [4]]  # keys -3, 5, 2**62
    np.testing.assert_allclose(merged[0], np.stack([t[0, 0]] + [mean_of(t, g) for g in groups]), rtol=1e-6)
    assert sizes.tolist() == [[1, 3, 4, 1]] and int(length) == 4 and length.shape == ()
    session = create_session(merge_model(num_prefix=1, grid_w=4, portable=form == "portable"))
    merged, sizes, length = session.run(None, {"tokens": t, "keys": HAND_KEYS})
    # -3: {2, 5, 6} touch (2 above 6, 5 left of 6); 5: {0, 1} and {3, 7} (3 above 7) apart; 2**62: {4}
    groups = [[2, 5, 6], [0, 1], [3, 7], [4]]
    np.testing.assert_allclose(merged[0], np.stack([t[0, 0]] + [mean_of(t, g) for g in groups]), rtol=1e-6)
    assert sizes.tolist() == [[1, 3, 2, 2, 1]] and int(length) == 5


def fuzz_keys(rng, layout, B, N):
    """Keys anywhere in int64: one group, all distinct, few values (many merges), or a mix with extremes."""
    lo, hi = np.iinfo(np.int64).min, np.iinfo(np.int64).max
    if layout == "one":
        return np.full((B, N), rng.integers(lo, hi), np.int64)
    if layout == "distinct":
        return np.stack([rng.permutation(N) * 3 - 10**18 for _ in range(B)]).astype(np.int64)
    if layout == "few":
        return (rng.integers(-2, 3, (B, N)) * 2**40).astype(np.int64)
    return rng.choice(np.array([lo, -1, 0, 1, 1000, 2**53 + 1, hi], np.int64), size=(B, N))


@pytest.mark.parametrize("form", FORMS)
def test_fuzz_against_the_spec(form, op_library):
    """Random shapes, keys, prefixes and grid widths; merged, sizes and length against the spec."""
    rng = np.random.default_rng(7)
    sessions = {}
    for trial in range(48):
        P = int(rng.choice([0, 1, 3]))
        grid_w = int(rng.choice([0, 0, 1, 3, 4]))
        rows, B, D = int(rng.integers(1, 7)), int(rng.integers(1, 5)), int(rng.integers(1, 20))
        N = rows * (grid_w or int(rng.integers(1, 6)))
        layout = ["one", "distinct", "few", "mix"][trial % 4]
        keys = fuzz_keys(rng, layout, B, N)
        t = rng.standard_normal((B, P + N, D)).astype(np.float32)
        if (P, grid_w) not in sessions:
            sessions[P, grid_w] = create_session(merge_model(P, grid_w, portable=form == "portable"))
        merged, sizes, length = sessions[P, grid_w].run(None, {"tokens": t, "keys": keys})
        ref_m, ref_s, ref_len = reference(t, keys, P, grid_w)
        case = f"trial {trial}: {layout} B={B} N={N} P={P} grid_w={grid_w}"
        np.testing.assert_allclose(merged, ref_m, rtol=1e-5, atol=1e-6, err_msg=case)
        np.testing.assert_array_equal(sizes, ref_s, err_msg=case)
        assert int(length) == ref_len == merged.shape[1], case
        if layout == "one" and grid_w in (0, 1):
            assert ref_len == P + 1  # one group (a single column is connected too)
        if layout == "distinct":
            assert ref_len == P + N


@pytest.mark.parametrize("grid_w", [0, 78])
def test_large_n_custom(grid_w, op_library):
    """N = 6084 (a 78 x 78 grid): sort-based relabelling, no quadratic term (the portable body is quadratic, so
    only the op library is run at this size)."""
    rng = np.random.default_rng(grid_w)
    B, N, D, P = 2, 78 * 78, 8, 1
    keys = rng.integers(-50, 50, (B, N)).astype(np.int64) * 10**15
    keys[1, : N // 2] = keys[1, 0]  # one large group (and, locally, one large component) in image 1
    t = rng.standard_normal((B, P + N, D)).astype(np.float32)
    merged, sizes, length = create_session(merge_model(P, grid_w)).run(None, {"tokens": t, "keys": keys})
    ref_m, ref_s, ref_len = reference(t, keys, P, grid_w)
    np.testing.assert_allclose(merged, ref_m, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(sizes, ref_s)
    assert int(length) == ref_len and sizes[1].max() >= N // 2 and sizes.sum(1).tolist() == [P + N] * B


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("grid_w", [0, 3])
def test_empty_batch(form, grid_w, op_library):
    merged, sizes, length = create_session(merge_model(2, grid_w, portable=form == "portable")).run(
        None, {"tokens": np.zeros((0, 2 + 9, 4), np.float32), "keys": np.zeros((0, 9), np.int64)})
    assert merged.shape == (0, 2, 4) and sizes.shape == (0, 2) and int(length) == 2


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("grid_w", [0, 5])
def test_float16(form, grid_w, op_library):
    rng = np.random.default_rng(grid_w + 1)
    t = rng.standard_normal((3, 2 + 20, 16)).astype(np.float16)
    keys = rng.integers(0, 4, (3, 20)).astype(np.int64)
    model = merge_model(num_prefix=2, grid_w=grid_w, token_type=TensorProto.FLOAT16, portable=form == "portable")
    merged, sizes, length = create_session(model).run(None, {"tokens": t, "keys": keys})
    ref_m, ref_s, ref_len = reference(t, keys, 2, grid_w)
    assert merged.dtype == np.float16 and int(length) == ref_len
    np.testing.assert_allclose(merged.astype(np.float32), ref_m.astype(np.float32), rtol=2e-3, atol=2e-3)
    np.testing.assert_array_equal(sizes, ref_s)


def test_bad_inputs_are_one_clear_line(op_library):
    with pytest.raises(Exception, match="20 patches do not fill a grid 3 wide"):
        create_session(merge_model(1, 3)).run(None, {"tokens": np.zeros((1, 21, 4), np.float32),
                                                     "keys": np.zeros((1, 20), np.int64)})
    with pytest.raises(Exception, match="tokens hold 5 tokens per image but num_prefix 1 \\+ keys' 7 patches"):
        create_session(merge_model(1)).run(None, {"tokens": np.zeros((2, 5, 4), np.float32),
                                                  "keys": np.zeros((2, 7), np.int64)})
    with pytest.raises(Exception, match="expected tokens \\[B, P\\+N, D\\] and keys \\[B, N\\]"):
        create_session(merge_model(1)).run(None, {"tokens": np.zeros((2, 8, 4), np.float32),
                                                  "keys": np.zeros((3, 7), np.int64)})
    with pytest.raises(Exception, match="must be >= 0"):
        create_session(merge_model(-1)).run(None, {"tokens": np.zeros((1, 8, 4), np.float32),
                                                   "keys": np.zeros((1, 7), np.int64)})


def test_the_library_refuses_a_v1_node(op_library):
    """Registered for vwt opset 2 only: a node of a graph importing opset 1 finds no kernel (ONNX Runtime
    itself, without the Python-side check) instead of running v1 semantics."""
    model = merge_model(1)
    for o in model.opset_import:
        if o.domain == "vwt":
            o.version = 1
    so = ort.SessionOptions()
    so.register_custom_ops_library(str(op_library))
    with pytest.raises(Exception, match="TokenMerge"):
        ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    assert needs_op_library(merge_model(1)) and not needs_op_library(merge_model(1, portable=True))


def test_a_library_of_another_version_is_refused(op_library, monkeypatch):
    assert plugins.check_library_version(op_library) == plugins.LIBRARY_VERSION == "0.3.0"
    monkeypatch.setattr(plugins, "LIBRARY_VERSION", "0.1.0")
    with pytest.raises(vx.VWTError, match="version 0.3.0, but this vwt-export needs 0.1.0; rebuild it"):
        plugins.check_library_version(op_library)


def test_library_lookup_is_one_function(tmp_path, monkeypatch, op_library):
    """Both libraries are found the same way; a missing one is a clear error naming where it looked and the fix."""
    monkeypatch.setenv("VWT_TRT_PLUGIN", str(tmp_path / "none.so"))
    with pytest.raises(vx.VWTError, match=r"TensorRT plugin library was not found \(looked at .*none.so\); .*TENSORRT_ROOT"):
        plugins.trt_plugin_library()
    monkeypatch.setenv("VWT_ORT_LIBRARY", str(tmp_path / "none.so"))
    with pytest.raises(vx.VWTError, match="ONNX Runtime op library was not found"):
        plugins.ort_library()
    monkeypatch.delenv("VWT_ORT_LIBRARY")
    assert plugins.ort_library() == op_library


def test_library_lookup_order_in_a_wheel_and_in_a_checkout(tmp_path, monkeypatch):
    """Installed (no plugins/ beside the package): only the package's lib/. In a checkout: lib/, then CMake's
    build folder. The environment variable, when set, is the only candidate."""
    monkeypatch.delenv("VWT_ORT_LIBRARY", raising=False)
    site = tmp_path / "site-packages" / "vwt_export"
    monkeypatch.setattr(plugins, "_HERE", site)
    assert plugins.library_candidates(plugins.ORT) == [site / "lib" / "libvwt_ort_ops.so"]
    (tmp_path / "site-packages" / "plugins").mkdir(parents=True)
    (tmp_path / "site-packages" / "plugins" / "CMakeLists.txt").write_text("")
    assert plugins.library_candidates(plugins.TRT) == [
        site / "lib" / "libvwt_trt_plugin.so", tmp_path / "site-packages" / "build" / "plugins" / "tensorrt" / "libvwt_trt_plugin.so"]
    monkeypatch.setenv("VWT_ORT_LIBRARY", "/elsewhere/lib.so")
    assert plugins.library_candidates(plugins.ORT) == [Path("/elsewhere/lib.so")]
