"""The methods registry: every option declared and checked once, and a new method is one module: this one
registers a toy method ("drop every other patch") and gets it exported, quantized, verified, measured and reported
by vx.export, with no other file changed."""

import json
import re

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
import torch

import vwt_export as vx
from vwt_export import methods
from vwt_export.demo import write_demo_images
from vwt_export.graph import ops
from vwt_export.graph.surgery import replace_uses, token_pass
from vwt_export.methods import registry
from vwt_export.models import embed_tokens, patch_tokens


@pytest.mark.parametrize("mode, options, message", [
    ("intra", {"keep": 4, "grouping": "global"}, "grouping='global' applies to inter and hybrid modes only, not 'intra'"),
    ("intra", {"keep": 4, "grouping": "nearby"}, "unknown grouping 'nearby' (use one of global, local)"),
    ("tome", {"threshold": 0.2}, "threshold=0.2 applies to inter and hybrid modes only, not 'tome'"),
    ("tome", {"space": "embed"}, "space='embed' applies to intra, inter and hybrid modes only, not 'tome'"),
    ("inter", {"r": 4}, "r=4 applies to tome and hybrid modes only, not 'inter'"),
    ("hybrid", {"r": 0.75}, "r=0.75: expected a whole number of merges per block"),
    ("hybrid", {"r": -1}, "r=-1 is out of range: give the merges per block, >= 0"),
    ("inter", {"threshold": float("nan")}, "threshold=nan is out of range: cosine distance lies in [0, 2]"),
    ("tome", {"r": 2.5}, "r=2.5: expected a whole number"),
    ("tome", {"r": True}, "r=True: expected a whole number"),
    ("inter", {"treshold": 0.1}, "unknown option treshold=0.1: the inter mode takes threshold, grouping, space"),
])
def test_options_are_checked_once_by_the_method_that_owns_them(mode, options, message):
    with pytest.raises(vx.VWTError, match="^" + re.escape(message)):
        methods.spec(mode, **options)
    with pytest.raises(vx.VWTError):  # the configuration asks the same registry (so the CLI and vx.export do)
        vx.ExportConfig.from_options("deit_s", mode=mode, calib="c", **options)


def test_defaults_come_from_the_registry_and_other_methods_defaults_are_harmless():
    spec = methods.spec("intra", keep="147", threshold=0.05, r=8)  # the CLI passes every option, defaults included
    assert dict(spec.values) == {"keep": 147, "space": None, "prop_attn": True}
    assert methods.spec("inter").threshold == 0.05 and methods.spec("tome").r == 8
    swept = methods.sweep_specs(methods.parse_sweep(["grouping=local", "r=2,3"]), methods.spec("inter", threshold=0.3))
    assert [(s.method, dict(s.values)) for s in swept] == [
        ("inter", {"threshold": 0.3, "grouping": "local", "space": None, "prop_attn": True}),  # the run's threshold
        ("tome", {"r": 2, "prop_attn": True}), ("tome", {"r": 3, "prop_attn": True}),
        ("hybrid", {"threshold": 0.3, "grouping": "local", "space": None, "r": 2, "tile": 2, "prop_attn": True}),
        ("hybrid", {"threshold": 0.3, "grouping": "local", "space": None, "r": 3, "tile": 2, "prop_attn": True})]


def test_a_method_may_default_a_shared_option_its_own_way():
    """The hybrid shares inter's threshold and ToMe's r (one Option each) with defaults of its own; None (what the
    CLI passes for an option not given) takes the mode's default, and those defaults count as not given."""
    hybrid = methods.spec("hybrid", threshold=None, r=None, keep=0.75)
    assert (hybrid.threshold, hybrid.r) == (methods.get("hybrid").defaults["threshold"], methods.get("hybrid").defaults["r"])
    assert hybrid.threshold != methods.spec("inter").threshold and hybrid.r != methods.spec("tome").r
    assert methods.spec("inter", threshold=None, r=None).threshold == methods.spec("inter").threshold
    assert methods.spec("hybrid", r="0.1").r == 0.1 and methods.spec("hybrid", r="4").r == 4
    assert methods.sweep_specs({"r": (3,)}, methods.spec("tome"))[1].threshold == hybrid.threshold
    assert vx.ExportConfig.from_options("deit_s", mode="hybrid", calib="c", threshold=None,
                                        r=None).compression.spec == methods.spec("hybrid")
    model = vx.load_model("vit_tiny_patch16_224", weights="random", img_size=32, depth=1)
    with pytest.raises(vx.VWTError, match=re.escape("r=0.05: tome merges a whole number of tokens per block")):
        vx.compress(model, "tome", r=0.05)  # a fraction is a valid r, for the hybrid only


def test_an_option_is_declared_once(scratch_registry):
    from vwt_export.methods.options import Option

    class Copycat(methods.Method):
        name = "copycat"
        options = (Option("threshold", 0.2, "a second threshold"),)

    with pytest.raises(ValueError, match="another option is already called 'threshold'"):
        methods.register(Copycat)
    assert "copycat" not in methods.names()


# -- a toy method: one module's worth -------------------------------------------------------------------------

STRIDE = methods.Option("stride", 2, "drop: keep every stride-th patch", kind=int, bounds=(1, None),
                        why="keep every stride-th patch, stride >= 1")


class EveryOther(torch.nn.Module):
    """The torch reference: timm's blocks on the prefix tokens and every stride-th patch token."""

    def __init__(self, model, stride: int):
        super().__init__()
        self.model, self.stride = model, stride
        self.num_prefix = model.num_prefix_tokens
        self.tokens_in = self.num_prefix + model.patch_embed.num_patches
        self.last_token_counts = None

    @torch.no_grad()
    def forward(self, pixels):
        m, p = self.model, self.num_prefix
        x = embed_tokens(m, patch_tokens(m, pixels))
        x = torch.cat([x[:, :p], x[:, p :: self.stride]], dim=1)
        self.last_token_counts = torch.full((len(x),), x.shape[1])
        return m.forward_head(m.norm(m.blocks(x)))


def drop_patches(base: onnx.ModelProto, stride: int) -> onnx.ModelProto:
    """The graph pass: a strided Slice of the patch tokens, named vwt/selected so the checks count its tokens."""

    def insert(graph: gs.Graph, site):
        C = lambda name, v: gs.Constant(f"drop/{name}", np.array(v, np.int64))  # noqa: E731
        prefix, kept = gs.Variable("drop/prefix", dtype=site.tokens.dtype), gs.Variable("drop/kept", dtype=site.tokens.dtype)
        selected = gs.Variable(ops.SELECTED_TENSOR, dtype=site.tokens.dtype)
        slices = [gs.Node("Slice", inputs=[site.tokens, C("zero", [0]), C("p", [site.num_prefix]), C("ax", [1])],
                          outputs=[prefix]),
                  gs.Node("Slice", inputs=[site.tokens, C("p2", [site.num_prefix]), C("end", [ops.INT64_MAX]),
                                           C("ax2", [1]), C("step", [stride])], outputs=[kept])]
        graph.nodes += [*slices, gs.Node("Concat", inputs=[prefix, kept], outputs=[selected], attrs={"axis": 1})]
        replace_uses(site.tokens, selected, except_nodes=tuple(slices))
        graph.cleanup().toposort()

    return token_pass(base, insert)


class DropEveryOther(methods.Method):
    name = variant = "drop"
    summary = "keep every stride-th patch (a toy)"
    options = (STRIDE,)
    sweep_keys = ("stride",)

    def build(self, model, spec, vocab=None):
        return EveryOther(model, spec.stride).eval()

    def graph(self, base, reference, spec):
        return drop_patches(base, spec.stride)


@pytest.fixture
def scratch_registry(monkeypatch):
    """Methods registered in a test stay in it (the registry is restored after)."""
    monkeypatch.setattr(registry, "_METHODS", dict(registry._METHODS))
    monkeypatch.setattr(registry, "_OPTIONS", dict(registry._OPTIONS))


@pytest.fixture
def toy(scratch_registry):
    methods.register(DropEveryOther)
    return DropEveryOther


def test_a_method_may_take_other_methods_options(scratch_registry):
    """A hybrid takes inter's options and ToMe's r: the same Option objects, so the same checks."""
    from vwt_export.methods.inter import Inter
    from vwt_export.methods.tome import R

    @methods.register
    class Both(methods.Method):
        name = "both"
        options = (*Inter.options, R)
        sweep_keys = ("r",)

    spec = methods.spec("both", threshold=0.2, grouping="local", r="4")
    assert dict(spec.values) == {"threshold": 0.2, "grouping": "local", "space": None, "r": 4, "prop_attn": True}
    with pytest.raises(vx.VWTError, match=re.escape("threshold=2.5 is out of range: cosine distance lies in [0, 2]")):
        methods.spec("both", threshold=2.5)
    with pytest.raises(vx.VWTError, match="grouping='global' applies to inter, hybrid and both modes only, not 'intra'"):
        methods.spec("intra", grouping="global")
    assert [m.name for m in methods.swept({"r": (2,)})] == ["tome", "hybrid", "both"]


def test_a_new_method_is_one_module_exported_verified_measured_and_reported(toy, tmp_path):
    images = write_demo_images(tmp_path / "imgs", count=6, size=64)
    result = vx.export("vit_tiny_patch16_224", mode="drop", stride=2, calib=images, batches=[1], reps=1,
                       sweep=["stride=2,4"], out=tmp_path / "out", weights="random", progress=False,
                       model_args={"img_size": 64, "depth": 1, "num_classes": 10})
    assert {g.path.name for g in result.graphs} == {"model.onnx", "model.drop.onnx", "model.int8.onnx",
                                                   "model.drop.int8.onnx"}
    check = result.verification["model.drop.onnx"]
    assert check["verified"] and check["max_rel_err"] < 1e-4
    assert result.measured["model.drop.int8.onnx"]["against"] == "model.drop.onnx"
    variants = result.report["variants"]
    assert list(variants) == ["fp32", "int8", "drop", "drop+int8"]
    assert variants["drop"]["tokens"]["mean"] == variants["drop+int8"]["tokens"]["mean"] == 1 + 16 // 2
    assert variants["drop"]["method"] == "drop" and variants["drop"]["vwt"] is True
    assert result.torch_check["tokens_mean"] == 9 and result.report["settings"]["stride"] == 2
    ranked = {r["label"]: r for r in result.report["sweep"]["ranked"]}
    assert ranked["drop stride=4"]["tokens"] == 1 + 16 // 4 and ranked["drop stride=4"]["file"] == "sweep/model.drop-stride4.onnx"
    md = (tmp_path / "out" / "report.md").read_text()
    assert "Mode **drop**, stride 2." in md and "| **drop+int8** |" in md
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["mode"] == "drop" and summary["settings"]["stride"] == 2
    model = vx.load_model("vit_tiny_patch16_224", weights="random", img_size=64, depth=1)
    assert vx.compress(model, "drop", stride=4)(torch.randn(2, 3, 64, 64)).shape == (2, 1000)
    with pytest.raises(vx.VWTError, match="stride=0 is out of range"):
        vx.compress(model, "drop", stride=0)


def test_a_sweep_value_one_owner_cannot_take_is_left_out_for_it_alone():
    """r is tome's and the hybrid's: a fraction r sweeps the hybrid, and tome takes only its counts."""
    specs = methods.sweep_specs(methods.parse_sweep(["r=0.03,8"]), methods.spec("inter"))
    assert sorted((s.method, s.r) for s in specs) == [("hybrid", 0.03), ("hybrid", 8), ("tome", 8)]
    with pytest.raises(vx.VWTError, match="tome merges a whole number of tokens"):
        methods.spec("tome", r=0.05)
