"""vwt::BlockMerge (the hybrid's in-block merge) against the torch spec, vwt_export.hybrid.merge.merge_step, and a
hand-worked case. The portable form runs on ONNX Runtime with no op library (the model-local function is
inlined), and the op library's C++ kernel (plugins/common/vwt_block_merge.h) runs the same cases."""

from fractions import Fraction

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import vwt_export as vx
from vwt_export.backends.onnxruntime import create_session, needs_op_library
from vwt_export.graph import ops
from vwt_export.hybrid.merge import merge_step, removed, removed_per_image

FORMS = ["portable", "library"]
RULES = [0, 3, 1000, Fraction(11, 200), Fraction(1, 2)]  # 1000: clamped to half the non-prefix tokens


def rule_attrs(rule) -> dict:
    """The op's attributes for a torch rule: a count r (r_den = 0), or the fraction r / r_den."""
    return {"r": rule, "r_den": 0} if isinstance(rule, int) else {"r": rule.numerator, "r_den": rule.denominator}


def open_session(form: str, num_prefix: int, **attrs):
    model = ops.single_op_model(ops.BLOCK_MERGE, portable=form == "portable", num_prefix=num_prefix, **attrs)
    if form == "portable":  # plain ONNX Runtime, no op library: the body alone
        return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return create_session(model)


@pytest.fixture(params=FORMS)
def block_merge(request):
    """A factory: (num_prefix, rule) -> run(tokens, metric, sizes) -> (merged, merged_sizes); sessions cached."""
    sessions = {}

    def make(num_prefix: int, rule):
        key = (num_prefix, rule)
        if key not in sessions:
            sessions[key] = open_session(request.param, num_prefix, **rule_attrs(rule))
        session = sessions[key]
        return lambda t, m, s: session.run(None, {"tokens": t, "metric": m, "sizes": s})

    return make


def draw(rng, lengths, T, P, D=8, C=6):
    """A padded batch: image b has lengths[b] real tokens (P prefix tokens of size 1, then tokens of integer sizes
    1..4, as after earlier merges), then pads of size 0 whose tokens and metric are garbage. The metric is
    redrawn until no decision is within 1e-4 of a tie (two correct implementations may differ there)."""
    B = len(lengths)
    real = np.arange(T)[None, :] < np.array(lengths)[:, None]
    sizes = np.where(real, rng.integers(1, 5, (B, T)), 0).astype(np.float32)
    sizes[:, :P] = np.where(real[:, :P], 1, 0)
    tokens = np.where(real[..., None], rng.standard_normal((B, T, D)), 1e4 * rng.standard_normal((B, T, D)))
    for _ in range(20):
        metric = rng.standard_normal((B, T, C))
        metric = np.where(real[..., None], metric, 0 if rng.random() < 0.5 else 1e3 * metric).astype(np.float32)
        margins = []
        for rule in RULES:
            merge_step(*map(torch.from_numpy, (tokens.astype(np.float32), metric, sizes)), rule, P, margins=margins)
        if all(bool((m > 1e-4).all()) for m in margins):
            return tokens.astype(np.float32), metric, sizes
    raise AssertionError("no batch without near-ties in 20 draws")


def assert_matches_spec(run, tokens, metric, sizes, rule, P, case=""):
    merged, merged_sizes = run(tokens, metric, sizes)
    ref, ref_sizes = (a.numpy() for a in merge_step(*map(torch.from_numpy, (tokens, metric, sizes)), rule, P))
    B, T, D = tokens.shape
    assert merged.shape == ref.shape == (B, T - removed(T, P, rule), D), case
    assert merged_sizes.shape == ref_sizes.shape == merged.shape[:2], case
    np.testing.assert_array_equal(merged_sizes, ref_sizes, err_msg=case)
    real = ref_sizes > 0  # pads' token values are unspecified
    np.testing.assert_allclose(merged[real], ref[real], rtol=1e-5, atol=1e-5, err_msg=case)
    return merged, merged_sizes


@pytest.mark.parametrize("P", [0, 1, 5])
@pytest.mark.parametrize("rule", RULES, ids=str)
def test_against_the_spec(block_merge, P, rule):
    """Random batches of 1 and 3 images, each its own length, pads at the end."""
    rng = np.random.default_rng(P * 100 + RULES.index(rule))
    run = block_merge(P, rule)
    for trial in range(4):
        T = int(rng.integers(P + 20, P + 70))
        lengths = [T] if trial % 2 == 0 else [T, *rng.integers(P + 1, T + 1, 2)]
        t, m, s = draw(rng, lengths, T, P)
        assert_matches_spec(run, t, m, s, rule, P, f"trial {trial}: T={T} lengths={lengths}")


@pytest.mark.parametrize("P, rule, T", [(1, 3, 2), (0, 5, 1), (5, 1000, 6), (1, Fraction(11, 200), 19),
                                        (0, Fraction(1, 2), 1), (1, 0, 30)])
def test_nothing_removed_keeps_the_input(block_merge, P, rule, T):
    """removed(T) = 0: the input order and sizes; real tokens unchanged, pads come out as zero tokens."""
    assert removed(T, P, rule) == 0
    rng = np.random.default_rng(T)
    t, m, s = draw(rng, [T, max(P, T - 1), max(P, T // 2)], T, P)
    merged, merged_sizes = assert_matches_spec(block_merge(P, rule), t, m, s, rule, P)
    np.testing.assert_array_equal(merged_sizes, s)
    np.testing.assert_allclose(merged, np.where(s[..., None] > 0, t, 0), rtol=1e-6, atol=1e-6)


def test_hand_worked_case(block_merge):
    """P = 1, r = 1, T = 6: A = positions 0 (prefix), 2, 4; B = 1, 3, 5. Token 4's metric is nearly token 3's,
    so 4 merges into 3: [0][2][1][3+4][5], sizes [1, 1, 1, 2+3, 1]."""
    metric = np.eye(6, 4, dtype=np.float32)[None].copy()  # token i points along axis i (i < 4)
    metric[0, 4] = [0, 0.1, 0.2, 1]  # nearest to 3, far from 1 and 5
    metric[0, 5] = [-1, 0, 0, 0]  # opposite the prefix token; 2 scores 0 with every B token (and stays)
    tokens = np.arange(6 * 2, dtype=np.float32).reshape(1, 6, 2)  # token i = [2i, 2i+1]
    sizes = np.array([[1, 1, 1, 2, 3, 1]], np.float32)
    merged, merged_sizes = block_merge(1, 1)(tokens, metric, sizes)
    assert merged_sizes.tolist() == [[1, 1, 1, 5, 1]]
    t = tokens[0]
    np.testing.assert_allclose(merged[0], [t[0], t[2], t[1], (2 * t[3] + 3 * t[4]) / 5, t[5]], rtol=1e-6)


@pytest.mark.parametrize("rule", [3, Fraction(11, 200), Fraction(1, 2)], ids=str)
def test_batch_gives_each_image_what_it_gets_alone(block_merge, rule):
    """Each image's row in a batch against the body run on that image alone, its pads stripped."""
    P, T = 1, 60
    lengths = [T, 31, 12, 3]  # with 11/200: r_b = 3, 1, 0, 0
    rng = np.random.default_rng(5)
    t, m, s = draw(rng, lengths, T, P)
    run = block_merge(P, rule)
    merged, merged_sizes = run(t, m, s)
    r_img = removed_per_image(torch.tensor(lengths), P, rule).tolist()
    for b, length in enumerate(lengths):
        alone, alone_sizes = run(t[b:b + 1, :length], m[b:b + 1, :length], s[b:b + 1, :length])
        kept = length - r_img[b]
        assert alone.shape[1] == kept
        row, row_sizes = merged[b, :kept], merged_sizes[b, :kept]  # images that merge nothing keep their order
        np.testing.assert_array_equal(row_sizes, alone_sizes[0], err_msg=f"image {b}")
        assert (merged_sizes[b, kept:] == 0).all(), f"image {b}"
        np.testing.assert_allclose(row, alone[0], rtol=1e-5, atol=1e-5, err_msg=f"image {b}")


def test_single_op_model_interface():
    m = ops.single_op_model(ops.BLOCK_MERGE, num_prefix=1, r=3)
    assert [i.name for i in m.graph.input] == ["tokens", "metric", "sizes"]
    assert [o.name for o in m.graph.output] == ["merged", "merged_sizes"]
    assert {(o.domain, o.version) for o in m.opset_import} == {("", ops.OPSET), ("vwt", 2)}
    assert needs_op_library(m) and not m.functions
    portable = ops.single_op_model(ops.BLOCK_MERGE, portable=True, num_prefix=1, r=11, r_den=200)
    onnx.checker.check_model(portable)
    body_ops = {n.op_type for n in portable.functions[0].node}
    assert not body_ops & {"ScatterElements", "ScatterND", "TopK", "Loop", "If"}, body_ops
    with pytest.raises(vx.VWTError, match="TokenMerge, BlockMerge"):
        ops.single_op_model("WordLabels")
    with pytest.raises(vx.VWTError, match="float32"):
        ops.single_op_model(ops.BLOCK_MERGE, token_type=onnx.TensorProto.FLOAT16, num_prefix=1, r=3)


def test_r_den_defaults_to_a_count():
    """Leaving r_den out is r_den = 0: r counts tokens."""
    rng = np.random.default_rng(3)
    t, m, s = draw(rng, [40, 25], 40, 1)
    default = open_session("portable", 1, r=7).run(None, {"tokens": t, "metric": m, "sizes": s})
    assert default[0].shape == (2, 33, 8)
    assert_matches_spec(lambda *a: default, t, m, s, 7, 1)


def test_check_version_names_the_ops():
    m = ops.single_op_model(ops.BLOCK_MERGE, num_prefix=1, r=3)
    ops.check_version(m)  # BlockMerge is a version-2 op
    m.graph.node[0].op_type = "WordLabels"
    with pytest.raises(vx.VWTError, match=r"version 2 \(TokenMerge, BlockMerge\)"):
        ops.check_version(m)


def test_library_refuses_bad_attributes_and_shapes_in_one_line():
    """The kernel's checks (plugins/common/vwt_block_merge.h), each a one-line error naming the values."""
    for attrs, msg in (({"r": -1}, "must be >= 0"), ({"r": 3, "r_den": 4}, "above 1/2"),
                       ({"r": 1, "r_den": 2**40}, "above 2\\^31")):
        with pytest.raises(Exception, match=msg):
            open_session("library", 1, **attrs).run(None, {"tokens": np.zeros((1, 8, 4), np.float32),
                                                           "metric": np.zeros((1, 8, 2), np.float32),
                                                           "sizes": np.ones((1, 8), np.float32)})
    session = open_session("library", 5, r=2)
    with pytest.raises(Exception, match="fewer than num_prefix 5"):
        session.run(None, {"tokens": np.zeros((1, 3, 4), np.float32), "metric": np.zeros((1, 3, 2), np.float32),
                           "sizes": np.ones((1, 3), np.float32)})
    with pytest.raises(Exception, match=r"expected tokens \[B, T, D\], metric \[B, T, C\] and sizes \[B, T\]"):
        session.run(None, {"tokens": np.zeros((1, 8, 4), np.float32), "metric": np.zeros((1, 7, 2), np.float32),
                           "sizes": np.ones((1, 8), np.float32)})


def test_library_stays_in_bounds_on_degenerate_metrics():
    """NaN or all-zero metric rows (0/0 cosines): no score can be trusted, but the kernel must neither merge a
    prefix token nor write past its output (the candidates are the A tokens that scored above -inf)."""
    run = open_session("library", 1, r=1)
    for metric in (np.full((2, 6, 3), np.nan, np.float32), np.zeros((2, 6, 3), np.float32)):
        tokens = np.arange(2 * 6 * 4, dtype=np.float32).reshape(2, 6, 4)
        merged, merged_sizes = run.run(None, {"tokens": tokens, "metric": metric, "sizes": np.ones((2, 6), np.float32)})
        assert merged.shape == (2, 5, 4) and merged_sizes.shape == (2, 5)
        np.testing.assert_array_equal(merged[:, 0], tokens[:, 0])  # the prefix token stays itself
        assert (merged_sizes == 1).all()  # nothing merged: no prefix token summed into a B token
