"""Ops v2, portable form: matching in standard ops + vwt::TokenMerge's function body (ONNX Runtime, no library)
against the torch reference, on data with near-duplicate words so that near ties really happen.

Keys are compared exactly except where vwt.inter.near_ties says two correct implementations may disagree;
merged, sizes and length are compared given the same keys (the graph's)."""

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

import vwt_export as vx
from vwt_export.backends.onnxruntime import create_session, needs_op_library
from vwt_export.graph import ops
from vwt_export.graph.surgery import make_portable, matching_model
from vwt_export.vwt.inter import match_keys, near_ties, normalized_words
from vwt_export.vwt.merge import token_merge

from .. import reference_tmlr2025 as ref


def vocabulary(V, F, duplicates, g):
    """V random words plus near-copies (1e-7 noise) of the first `duplicates`, as k-means vocabularies hold."""
    w = torch.randn(V, F, generator=g)
    return torch.cat([w, w[:duplicates] + 1e-7 * torch.randn(duplicates, F, generator=g)])


def features_near(words, B, N, spread, g):
    """Each patch a random word, scaled, plus noise of a random level up to `spread` (words have unit std): the
    cosines to the best word spread from ~1 down to well below the threshold, so some patches match, some do
    not, and some sit on a duplicate."""
    pick = torch.randint(len(words), (B, N), generator=g)
    scale = 0.5 + torch.rand(B, N, 1, generator=g)
    level = spread * torch.rand(B, N, 1, generator=g)
    return words[pick] * scale + level * torch.randn(B, N, words.shape[1], generator=g)


def run_portable(words, f, t, thr, P, grid_w=0, token_type=TensorProto.FLOAT):
    model = matching_model(words.numpy(), thr, f.shape[1], num_prefix=P, grid_w=grid_w, token_type=token_type,
                           portable=True)
    assert not needs_op_library(model)
    keys, merged, sizes, length = create_session(model).run(None, {"features": f.numpy(), "tokens": t.numpy()})
    return keys, merged, sizes, length


def check_case(words, f, t, thr, P, grid_w=0, token_type=TensorProto.FLOAT):
    """Returns the near-tie mask after checking everything else."""
    keys, merged, sizes, length = run_portable(words, f, t, thr, P, grid_w, token_type)
    unit = normalized_words(words)
    ties = near_ties(f, unit, thr).numpy()
    np.testing.assert_array_equal(keys[~ties], match_keys(f, unit, thr).numpy()[~ties])
    ref_merged, ref_sizes = token_merge(t, torch.from_numpy(keys), P, grid_w)
    tol = 2e-3 if t.dtype == torch.float16 else 1e-5
    assert merged.dtype == t.numpy().dtype
    np.testing.assert_allclose(merged.astype(np.float32), ref_merged.float().numpy(), rtol=tol, atol=tol)
    np.testing.assert_array_equal(sizes, ref_sizes.numpy())
    assert length.shape == () and length.dtype == np.int64 and int(length) == ref_merged.shape[1]
    return ties


@pytest.mark.parametrize("P", [0, 1, 2])
@pytest.mark.parametrize("grid_w", [0, 14])
def test_matching_and_merge_match_the_reference_with_near_duplicate_words(P, grid_w):
    g = torch.Generator().manual_seed(P + grid_w)
    words = vocabulary(100, 768, 30, g)
    B, N, D, thr = 8, 196, 64, 0.2
    f = features_near(words, B, N, 1.2, g)
    t = torch.randn(B, P + N, D, generator=g)
    ties = check_case(words, f, t, thr, P, grid_w)
    assert ties.any(), "the near-duplicate words should give near ties"
    assert ties.mean() < 0.5, "most keys should be compared exactly"
    keys = match_keys(f, normalized_words(words), thr)
    assert 0.2 < (keys < len(words)).float().mean() < 0.8, "both matched and unmatched patches"
    counts = [len(set(k.tolist())) for k in keys]
    assert min(counts) < N and len(set(counts)) > 1, "real merging, and images of different lengths (padding)"


def test_float16_tokens():
    g = torch.Generator().manual_seed(3)
    words = vocabulary(50, 588, 10, g)
    f = features_near(words, 4, 256, 1.2, g)
    t = torch.randn(4, 1 + 256, 32, generator=g).half()
    check_case(words, f, t, 0.3, 1, token_type=TensorProto.FLOAT16)
    check_case(words, f, t, 0.3, 1, grid_w=16, token_type=TensorProto.FLOAT16)


def test_local_grouping_with_few_words_matches_a_flood_fill():
    """Four words on a 14x14 grid: large, snake-shaped components that touch every border."""
    g = torch.Generator().manual_seed(4)
    words = vocabulary(4, 48, 0, g)
    f = features_near(words, 6, 196, 0.05, g)
    t = torch.randn(6, 1 + 196, 16, generator=g)
    keys, merged, sizes, length = run_portable(words, f, t, 0.5, 1, grid_w=14)
    assert (keys < 4).all(), "every patch should match one of the four words"
    expected = ref.local_labels(vx.vwt.dense_relabel(torch.from_numpy(keys)), 14)
    np.testing.assert_array_equal(sizes[:, 1:][sizes[:, 1:] > 0],
                                  np.concatenate([np.bincount(e) for e in expected.numpy()]))
    assert 4 < int(length) - 1 < 196


def test_all_one_group_and_all_distinct():
    g = torch.Generator().manual_seed(5)
    words = vocabulary(1, 16, 0, g)
    f = torch.randn(3, 9, 16, generator=g)
    t = torch.randn(3, 1 + 9, 8, generator=g)
    keys, merged, sizes, length = run_portable(words, f, t, 2.0, 1)  # every patch matches the only word
    assert (keys == 0).all() and int(length) == 2 and sizes.tolist() == [[1, 9]] * 3
    np.testing.assert_allclose(merged[:, 1], t[:, 1:].mean(1).numpy(), rtol=1e-5, atol=1e-6)
    keys, merged, sizes, length = run_portable(words, f, t, 0.0, 1, grid_w=3)  # nothing matches
    assert keys.tolist() == [list(range(1, 10))] * 3 and int(length) == 10
    np.testing.assert_allclose(merged, t.numpy(), rtol=1e-6, atol=1e-6)


def test_empty_batch():
    g = torch.Generator().manual_seed(6)
    words = vocabulary(5, 16, 0, g)
    for grid_w in (0, 3):
        keys, merged, sizes, length = run_portable(words, torch.zeros(0, 9, 16), torch.zeros(0, 11, 4), 0.3, 2, grid_w)
        assert keys.shape == (0, 9) and merged.shape == (0, 2, 4) and sizes.shape == (0, 2) and int(length) == 2


@pytest.mark.parametrize("grid_w", [0, 1, 5])
def test_token_merge_takes_any_integer_keys(grid_w):
    """The op alone: keys anywhere in int64 (negative, beyond 2**53), with repeats."""
    rng = np.random.default_rng(grid_w)
    model = create_session(ops.single_op_model(ops.TOKEN_MERGE, portable=True, num_prefix=1, grid_w=grid_w))
    for _ in range(10):
        B, N = int(rng.integers(1, 4)), 5 * int(rng.integers(1, 6))
        keys = rng.choice(np.array([-(2**62), -1, 0, 7, 2**53 + 1, 2**62], np.int64), size=(B, N))
        t = rng.standard_normal((B, 1 + N, 3)).astype(np.float32)
        merged, sizes, length = model.run(None, {"tokens": t, "keys": keys})
        ref_m, ref_s = token_merge(torch.from_numpy(t), torch.from_numpy(keys), 1, grid_w)
        np.testing.assert_allclose(merged, ref_m.numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(sizes, ref_s.numpy())
        assert int(length) == ref_m.shape[1]


def test_single_op_model_interface():
    m = ops.single_op_model(ops.TOKEN_MERGE, num_prefix=1, grid_w=4)
    assert [i.name for i in m.graph.input] == ["tokens", "keys"]
    assert [o.name for o in m.graph.output] == ["merged", "sizes", "length"]
    assert m.graph.output[2].type.tensor_type.shape.dim == []  # a scalar
    assert {(o.domain, o.version) for o in m.opset_import} == {("", ops.OPSET), ("vwt", 2)}
    assert needs_op_library(m) and not m.functions
    onnx.checker.check_model(ops.single_op_model(ops.TOKEN_MERGE, portable=True, num_prefix=1))
    with pytest.raises(vx.VWTError, match="unknown vwt op WordLabels"):
        ops.single_op_model("WordLabels")


def test_a_v1_graph_is_refused_with_the_fix():
    node = helper.make_node("WordLabels", ["f", "w"], ["labels"], domain="vwt", threshold=0.1)
    graph = helper.make_graph([node], "v1", [helper.make_tensor_value_info("f", TensorProto.FLOAT, [1, 2, 3]),
                                             helper.make_tensor_value_info("w", TensorProto.FLOAT, [4, 3])],
                              [helper.make_tensor_value_info("labels", TensorProto.INT64, [1, 2])])
    v1 = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("vwt", 1)])
    with pytest.raises(vx.VWTError, match="vwt ops version \\[1\\].*export the graph again"):
        make_portable(v1)
    v1.opset_import[1].version = 2
    with pytest.raises(vx.VWTError, match="op WordLabels.*export the graph again"):
        make_portable(v1)


def test_the_matching_is_standard_ops_with_a_named_similarity_gemm():
    words = torch.randn(7, 12)
    m = matching_model(words.numpy(), 0.2, 9)
    sim = next(n for n in m.graph.node if n.name == "vwt/similarity")
    assert sim.op_type == "MatMul"
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in m.graph.initializer}
    wt = inits[sim.input[1]]
    assert wt.shape == (12, 7)  # pre-normalised words, transposed
    np.testing.assert_array_equal(wt, normalized_words(words).numpy().T)
    assert [n.op_type for n in m.graph.node if n.domain == "vwt"] == ["TokenMerge"]
    assert {n.op_type for n in m.graph.node if n.domain != "vwt"} <= {
        "ReduceL2", "Max", "Div", "MatMul", "ArgMax", "ReduceMax", "Reshape", "GreaterOrEqual", "Where", "Constant"}


@pytest.mark.parametrize("token_type", [TensorProto.FLOAT, TensorProto.FLOAT16])
@pytest.mark.parametrize("grid_w", [0, 14])
def test_the_custom_op_equals_the_reference_given_the_same_keys(token_type, grid_w, op_library):
    """The graph as exported (vwt::TokenMerge from the op library): the same standard-op matching, so the same
    keys as the portable form; merged, sizes and length as the torch reference given those keys."""
    g = torch.Generator().manual_seed(7 + grid_w)
    words = vocabulary(100, 768, 30, g)
    for B in (8, 0):
        f = features_near(words, B, 196, 1.2, g)
        t = torch.randn(B, 2 + 196, 64, generator=g)
        t = t.half() if token_type == TensorProto.FLOAT16 else t
        custom = matching_model(words.numpy(), 0.2, 196, num_prefix=2, grid_w=grid_w, token_type=token_type)
        assert needs_op_library(custom)
        keys, merged, sizes, length = create_session(custom).run(None, {"features": f.numpy(), "tokens": t.numpy()})
        portable_keys = run_portable(words, f, t, 0.2, 2, grid_w, token_type)[0]
        np.testing.assert_array_equal(keys, portable_keys)
        ref_merged, ref_sizes = token_merge(t, torch.from_numpy(keys), 2, grid_w)
        tol = 2e-3 if t.dtype == torch.float16 else 1e-5
        np.testing.assert_allclose(merged.astype(np.float32), ref_merged.float().numpy(), rtol=tol, atol=tol)
        np.testing.assert_array_equal(sizes, ref_sizes.numpy())
        assert length.shape == () and int(length) == ref_merged.shape[1]


def test_local_grouping_follows_a_snake_through_the_whole_grid():
    """One component winding through every row (the longest path min-label propagation can meet) beside the
    walls between its rows, each split by the snake's turns into its own component."""
    k = np.ones((14, 14), np.int64)
    for r in range(1, 14, 2):
        k[r, :] = 0
        k[r, 13 if (r // 2) % 2 == 0 else 0] = 1  # the snake turns at alternating ends
    keys = np.stack([k.reshape(-1), k[::-1, ::-1].reshape(-1)])  # and reversed: the first patch at the far end
    t = np.random.default_rng(0).standard_normal((2, 1 + 196, 4)).astype(np.float32)
    model = create_session(ops.single_op_model(ops.TOKEN_MERGE, portable=True, num_prefix=1, grid_w=14))
    merged, sizes, length = model.run(None, {"tokens": t, "keys": keys})
    expected = ref.local_labels(vx.vwt.dense_relabel(torch.from_numpy(keys)), 14)
    assert int(length) == 1 + 8 and expected.max() == 7  # seven walls and the snake
    np.testing.assert_array_equal(sizes[:, 1:], np.stack([np.bincount(e) for e in expected.numpy()]))
    np.testing.assert_allclose(merged, token_merge(torch.from_numpy(t), torch.from_numpy(keys), 1, 14)[0].numpy(),
                               rtol=1e-5, atol=1e-6)
