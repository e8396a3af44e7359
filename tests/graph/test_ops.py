"""The vwt ops in all their CPU forms (portable function bodies, C++ custom op) against the torch spec."""

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto

from vwt_export.backends.onnxruntime import create_session, needs_op_library
from vwt_export.vwt.inter import normalized_words, word_labels
from vwt_export.vwt.merge import token_merge

from .conftest import merge_model, op_model

FORMS = ["portable", "custom"]


def run(model, feeds):
    return create_session(model).run(None, feeds)


def make_case(seed, B, N, F, V, D, P, spread=0.4):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(V, F, generator=g)
    f = w[torch.randint(V, (B, N), generator=g)] + spread * torch.randn(B, N, F, generator=g)
    t = torch.randn(B, P + N, D, generator=g)
    return f, w, t


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("B,N,F,V,D,P,thr", [
    (1, 196, 768, 100, 384, 1, 0.2),
    (8, 196, 768, 100, 384, 1, 0.2),
    (8, 256, 588, 50, 64, 2, 0.3),
    (3, 16, 8, 5, 4, 0, 0.3),
    (2, 1, 8, 5, 4, 1, 2.0),
])
def test_ops_match_the_spec(form, B, N, F, V, D, P, thr, op_library):
    f, w, t = make_case(B * 1000 + N, B, N, F, V, D, P)
    model = op_model(threshold=thr, num_prefix=P, portable=form == "portable")
    assert needs_op_library(model) == (form == "custom")
    labels, merged, sizes = run(model, {"f": f.numpy(), "w": w.numpy(), "t": t.numpy()})
    ref_labels = word_labels(f, normalized_words(w), thr)
    ref_merged, ref_sizes = token_merge(t, ref_labels, P)
    np.testing.assert_array_equal(labels, ref_labels.numpy())
    np.testing.assert_allclose(merged, ref_merged.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(sizes, ref_sizes.numpy())
    assert 1 < ref_labels.max() + 1 < N or N == 1 or thr >= 2  # cases with real merging and padding


@pytest.mark.parametrize("form", FORMS)
def test_merge_fuzz(form, op_library):
    """Random shapes and label layouts: all one group, all distinct, arbitrary dense labels, B=0."""
    rng = np.random.default_rng(0)
    model = {P: create_session(merge_model(num_prefix=P, portable=form == "portable")) for P in (0, 1, 3)}
    for trial in range(60):
        P = int(rng.choice([0, 1, 3]))
        B, N, D = int(rng.integers(0 if form == "custom" else 1, 6)), int(rng.integers(1, 40)), int(rng.integers(1, 33))
        layout = trial % 3
        if layout == 0:
            labels = np.zeros((B, N), np.int64)
        elif layout == 1:
            labels = np.tile(np.arange(N), (B, 1))
        else:
            keys = rng.integers(0, max(1, N // 2), (B, N))  # random keys, densely relabelled per image
            labels = np.stack([np.unique(k, return_inverse=True)[1].reshape(-1) for k in keys]).astype(np.int64) if B else keys
        t = rng.standard_normal((B, P + N, D)).astype(np.float32)
        merged, sizes = model[P].run(None, {"tokens": t, "labels": labels})
        if B == 0:
            assert merged.shape[0] == 0 and sizes.shape[0] == 0
            continue
        ref_m, ref_s = token_merge(torch.from_numpy(t), torch.from_numpy(labels), P)
        np.testing.assert_allclose(merged, ref_m.numpy(), rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(sizes, ref_s.numpy())


def test_custom_merge_float16(op_library):
    rng = np.random.default_rng(1)
    t = rng.standard_normal((3, 2 + 20, 16)).astype(np.float16)
    labels = rng.integers(0, 5, (3, 20)).astype(np.int64)
    labels = np.stack([np.unique(k, return_inverse=True)[1].reshape(-1) for k in labels]).astype(np.int64)
    merged, sizes = run(merge_model(num_prefix=2, token_type=TensorProto.FLOAT16), {"tokens": t, "labels": labels})
    ref_m, ref_s = token_merge(torch.from_numpy(t), torch.from_numpy(labels), 2)
    assert merged.dtype == np.float16
    np.testing.assert_allclose(merged.astype(np.float32), ref_m.float().numpy(), rtol=2e-3, atol=2e-3)
    np.testing.assert_array_equal(sizes, ref_s.numpy())


@pytest.mark.parametrize("bad", [-1, 20, 10**12])
def test_custom_merge_refuses_out_of_range_labels(bad, op_library):
    labels = np.zeros((2, 20), np.int64)
    labels[1, 7] = bad
    t = np.zeros((2, 21, 4), np.float32)
    with pytest.raises(Exception, match=r"label .* at \[1, 7\] is outside \[0, 20\)"):
        run(merge_model(), {"tokens": t, "labels": labels})


def test_custom_ops_refuse_mismatched_shapes(op_library):
    with pytest.raises(Exception, match="expected tokens"):
        run(merge_model(num_prefix=1), {"tokens": np.zeros((2, 5, 4), np.float32), "labels": np.zeros((2, 7), np.int64)})
    with pytest.raises(Exception, match="expected features"):
        run(op_model(), {"f": np.ones((1, 4, 8), np.float32), "w": np.ones((3, 6), np.float32),
                         "t": np.ones((1, 5, 2), np.float32)})


def test_word_labels_unit_case_and_zero_features(op_library):
    # unmatched patches follow matched groups in raster order; an all-zero feature matches nothing (cos 0)
    w = np.eye(3, dtype=np.float32)
    f = np.array([[[0, 0, 1], [1, 1, 0], [1, 0, 0], [0, 0, 2], [0, 0, 0]]], np.float32)
    for portable in (False, True):
        labels, *_ = run(op_model(threshold=0.1, num_prefix=0, portable=portable),
                         {"f": f, "w": w, "t": np.zeros((1, 5, 1), np.float32)})
        assert labels.tolist() == [[1, 2, 0, 1, 3]]
