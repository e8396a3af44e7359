"""Export + surgery end to end (ops v2): the graph's keys == the torch reference's except at near ties, and its
logits == the torch model's given those keys; portable form (no library), and the custom-op form where marked."""

import numpy as np
import onnx
import pytest
import torch

import vwt_export as vx
from vwt_export.backends.onnxruntime import create_session
from vwt_export.graph import ops
from vwt_export.graph.export import export_model
from vwt_export.graph.surgery import apply_vwt, make_portable
from vwt_export.vwt.features import patch_features
from vwt_export.vwt.inter import near_ties

from ..conftest import blocky_images


def rel_err(a, b):
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-6))


def with_keys_output(model):
    """The same graph, also returning the matching's keys (to check them exactly)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    m.graph.output.append(onnx.helper.make_tensor_value_info(ops.KEYS_TENSOR, onnx.TensorProto.INT64, None))
    return m


def images(model, n, seed, cells=None):
    size, p = model.patch_embed.img_size[0], model.patch_embed.patch_size[0]
    return blocky_images(n, size, cells=cells or size // p, seed=seed, noise=0.05)


def unit_features(model, x, space="image"):
    with torch.no_grad():
        return torch.nn.functional.normalize(patch_features(model, x, space, model.patch_embed.patch_size[0]), dim=-1)


def threshold_for(model, vocab, x, space="image"):
    """The median nearest-word distance: about half the patches match, so the merge has real work to do."""
    d = 1 - unit_features(model, x, space) @ torch.nn.functional.normalize(vocab.words, dim=-1).T
    return float(d.min(-1).values.quantile(0.5))


def check_inter(cmodel, graph, x, tol=1e-4):
    """The graph's keys equal the torch reference's except at near ties; its logits equal the torch model's given
    the graph's keys. Returns the graph's keys."""
    logits, keys = create_session(with_keys_output(graph)).run(None, {"pixels": x.numpy()})
    ties = near_ties(cmodel.features(x), cmodel.unit_words, cmodel.threshold).numpy()
    assert ties.mean() < 0.1, "most keys should be compared exactly"
    np.testing.assert_array_equal(keys[~ties], cmodel.match(x).numpy()[~ties])
    with torch.no_grad():
        expected = cmodel(x, keys=torch.from_numpy(keys)).float().numpy()
    assert rel_err(logits, expected) < tol
    return keys


CASES = {
    "deit_t": lambda: vx.load_model("deit_t", weights="random"),
    "p14_distilled": lambda: vx.load_model("deit_tiny_distilled_patch16_224", weights="random", img_size=112,
                                           patch_size=14, depth=3, num_classes=10),
}


# DeiT-T at full size: the full tier (make test); the small distilled model covers the same paths in make test-fast
@pytest.fixture(scope="module", params=[pytest.param("deit_t", marks=pytest.mark.slow), "p14_distilled"])
def exported(request):
    model = CASES[request.param]()
    return request.param, model, export_model(model)


@pytest.mark.parametrize("grouping", ["global", "local"])
@pytest.mark.parametrize("batch", [1, 8])
def test_inter_parity(exported, batch, grouping):
    name, model, base = exported
    grid = model.patch_embed.grid_size[1]
    vocab = vx.learn_vocabulary(model, [images(model, 8, seed=1, cells=grid // 2)], size=32, progress=False)
    x = images(model, batch, seed=2, cells=grid // 2)
    thr = threshold_for(model, vocab, x)
    cmodel = vx.compress(model, "inter", vocab=vocab, threshold=thr, grouping=grouping)
    vwt = apply_vwt(base, "inter", vocab=vocab.words.numpy(), threshold=thr, grouping=grouping)
    tm = next(n for n in vwt.graph.node if n.domain == "vwt")
    assert tm.op_type == "TokenMerge" and list(tm.input)[1] == ops.KEYS_TENSOR and len(tm.output) == 3
    assert {a.name: a.i for a in tm.attribute} == {"num_prefix": model.num_prefix_tokens,
                                                   "grid_w": grid if grouping == "local" else 0}
    assert ("vwt", 2) in {(o.domain, o.version) for o in vwt.opset_import}
    keys = check_inter(cmodel, make_portable(vwt), x)
    counts = [len(set(k)) for k in keys.tolist()]
    assert min(counts) < model.patch_embed.num_patches, "the test data should merge something"
    if batch > 1:
        assert len(set(cmodel.last_token_counts.tolist())) > 1, "the batch should need padding"
    if grouping == "local":
        glob = vx.compress(model, "inter", vocab=vocab, threshold=thr, grouping="global")
        glob(x, keys=torch.from_numpy(keys))
        assert (cmodel.last_token_counts > glob.last_token_counts).any(), "local grouping should split some group"


@pytest.mark.parametrize("batch", [1, 8])
def test_intra_parity(exported, batch):
    name, model, base = exported
    x = images(model, batch, seed=3)
    k = model.patch_embed.num_patches // 2
    expected = vx.compress(model, "intra", keep=k)(x).numpy()
    got = create_session(apply_vwt(base, "intra", keep=k)).run(None, {"pixels": x.numpy()})[0]
    assert rel_err(got, expected) < 1e-4


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
@pytest.mark.parametrize("pool,extra", [("token", {"reg_tokens": 1}), ("avg", {"class_token": False})])
def test_exporters_pooling_and_prop_attn(exporter, pool, extra):
    model = vx.load_model("vit_tiny_patch16_224", weights="random", img_size=64, depth=2, global_pool=pool, **extra)
    base = export_model(model, exporter=exporter)
    vocab = vx.learn_vocabulary(model, [images(model, 8, seed=4)], size=8, progress=False)
    x = images(model, 6, seed=5)
    thr = threshold_for(model, vocab, x)
    for prop in (False, True):
        cmodel = vx.compress(model, "inter", vocab=vocab, threshold=thr, prop_attn=prop)
        vwt = apply_vwt(base, "inter", vocab=vocab.words.numpy(), threshold=thr, prop_attn=prop, pooling=pool)
        check_inter(cmodel, make_portable(vwt), x)


@pytest.mark.slow
def test_embed_space():
    model = vx.load_model("vit_tiny_patch16_224", weights="random", img_size=64, depth=2)
    vocab = vx.learn_vocabulary(model, [images(model, 8, seed=6)], size=8, space="embed", progress=False)
    x = images(model, 5, seed=7)
    thr = threshold_for(model, vocab, x, "embed")
    vwt = apply_vwt(export_model(model), "inter", vocab=vocab.words.numpy(), threshold=thr, space="embed")
    for grouping in ("global", "local"):
        cmodel = vx.compress(model, "inter", vocab=vocab, threshold=thr, grouping=grouping)
        vwt = apply_vwt(export_model(model), "inter", vocab=vocab.words.numpy(), threshold=thr, space="embed",
                        grouping=grouping)
        check_inter(cmodel, make_portable(vwt), x)


@pytest.mark.slow
def test_custom_op_form_equals_the_portable_form(op_library):
    """The graph as exported (vwt::TokenMerge run by the op library) against its portable twin."""
    model = vx.load_model("vit_tiny_patch16_224", weights="random", img_size=64, depth=2)
    vocab = vx.learn_vocabulary(model, [images(model, 8, seed=6)], size=8, progress=False)
    x = images(model, 6, seed=7, cells=2)
    thr = threshold_for(model, vocab, x)
    for grouping in ("global", "local"):
        vwt = apply_vwt(export_model(model), "inter", vocab=vocab.words.numpy(), threshold=thr, grouping=grouping)
        custom = create_session(with_keys_output(vwt)).run(None, {"pixels": x.numpy()})
        portable = create_session(with_keys_output(make_portable(vwt))).run(None, {"pixels": x.numpy()})
        np.testing.assert_array_equal(custom[1], portable[1])  # the same standard ops: the same keys
        assert rel_err(custom[0], portable[0]) < 1e-4


def test_bad_grouping_or_vocabulary_is_a_clear_error():
    model = vx.load_model("vit_tiny_patch16_224", weights="random", img_size=64, depth=1)
    base = export_model(model)
    with pytest.raises(vx.VWTError, match="unknown grouping 'nearby'"):
        apply_vwt(base, "inter", vocab=np.ones((4, 768), np.float32), grouping="nearby")
    with pytest.raises(vx.VWTError, match="words have shape \\(588,\\).*image-space patch features have 768"):
        apply_vwt(base, "inter", vocab=np.ones((4, 588), np.float32))


def test_the_baseline_export_matches_torch_and_keeps_the_sequence_dynamic():
    model = vx.load_model("vit_tiny_patch16_224", weights="random", img_size=64, depth=2)
    base = export_model(model)
    x = torch.randn(3, 3, 64, 64)
    assert rel_err(create_session(base).run(None, {"pixels": x.numpy()})[0], model(x).detach().numpy()) < 1e-4
    assert base.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # dynamic batch


def test_a_static_export_is_refused_with_the_fix(tmp_path):
    import io

    model = vx.load_model("vit_tiny_patch16_224", weights="random", img_size=64, depth=1)
    buf = io.BytesIO()
    torch.onnx.export(model, (torch.randn(1, 3, 64, 64),), buf, dynamo=False, opset_version=18,
                      input_names=["pixels"], output_names=["logits"])
    with pytest.raises(vx.VWTError, match="hard-codes the sequence length 17.*vwt_export.graph.export"):
        apply_vwt(onnx.load_from_string(buf.getvalue()), "intra", keep=4)


def test_a_graph_that_is_not_a_vit_is_refused():
    conv = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.LazyLinear(2))
    conv(torch.randn(1, 3, 8, 8))
    import io

    buf = io.BytesIO()
    torch.onnx.export(conv, (torch.randn(1, 3, 8, 8),), buf, dynamo=False, opset_version=18, input_names=["pixels"])
    with pytest.raises(vx.VWTError, match="no patch-embedding convolution"):
        apply_vwt(onnx.load_from_string(buf.getvalue()), "intra", keep=4)


@pytest.mark.filterwarnings("ignore:embedding-space vocabulary was learned with other")  # the float16 copy's, rounded
@pytest.mark.parametrize("name", ["p16_avg", "p14_distilled"])
@pytest.mark.slow
def test_fp16_graphs_match_the_fp16_torch_model(tiny_models, name):
    """model.fp16.onnx and its VWT twins: float32 in and out, float16 inside, equal to the float16 torch model
    within float16 rounding. Image-space keys come from the float32 pixels, so they are compared exactly (but at
    near ties); embed-space features come out of a float16 convolution whose rounding differs between torch and
    ONNX Runtime by far more than NEAR_TIE_EPS, so there only the logits given the graph's keys are compared."""
    from vwt_export.graph.export import cast_model

    model = tiny_models[name]
    half = cast_model(model, "fp16")
    base = export_model(model, precision="fp16")
    inits = {onnx.helper.tensor_dtype_to_np_dtype(t.data_type) for t in base.graph.initializer if t.dims}
    assert np.dtype(np.float16) in inits and np.dtype(np.float32) not in inits
    assert [i.type.tensor_type.elem_type for i in (*base.graph.input, *base.graph.output)] == [onnx.TensorProto.FLOAT] * 2
    x = images(model, 8, seed=8)
    with torch.no_grad():
        assert rel_err(create_session(base).run(None, {"pixels": x.numpy()})[0], half(x.half()).float().numpy()) < 1e-2
    for space in ("image", "embed"):
        vocab = vx.learn_vocabulary(model, [images(model, 8, seed=9)], size=16, space=space, progress=False)
        thr = threshold_for(model, vocab, x, space)
        k = model.patch_embed.num_patches // 2
        cmodel = vx.compress(half, "intra", keep=k, space=space)
        with torch.no_grad():
            expected = cmodel(x).float().numpy()
        got = create_session(apply_vwt(base, "intra", keep=k, space=space)).run(None, {"pixels": x.numpy()})[0]
        assert rel_err(got, expected) < 1e-2, (space, "intra")
        for grouping in ("global", "local"):
            cmodel = vx.compress(half, "inter", vocab=vocab, threshold=thr, grouping=grouping)
            vwt = make_portable(apply_vwt(base, "inter", vocab=vocab.words.numpy(), threshold=thr, space=space,
                                          pooling=model.global_pool, grouping=grouping))
            if space == "image":
                check_inter(cmodel, vwt, x, tol=1e-2)
                assert len(set(cmodel.last_token_counts.tolist())) > 1, "the batch should need padding"
            else:
                logits, keys = create_session(with_keys_output(vwt)).run(None, {"pixels": x.numpy()})
                with torch.no_grad():
                    expected = cmodel(x, keys=torch.from_numpy(keys)).float().numpy()
                assert rel_err(logits, expected) < 1e-2, (space, grouping)
