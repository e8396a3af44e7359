"""Every written graph against the torch model of its own precision, on the same pixels.

Matching is a threshold and an argmax, so two correct implementations can disagree where two words are
equally near a patch or a similarity sits on the threshold: real vocabularies hold near-duplicate words, and
ONNX Runtime's GEMM rounds differently from torch's. Such a patch then joins another group and the outputs
differ, while both are correct VWT. So an inter graph is checked in two parts (DESIGN, "Verification of
discrete decisions"):

  1. its word matches (the graph's `vwt/keys` tensor) equal torch's exactly, except at near-ties
     (`vwt_export.vwt.inter.near_ties`, within NEAR_TIE_EPS in cosine similarity), which are counted;
  2. its output equals the torch model's run on the graph's own matches, within the tolerance.

A near-tie is never an error. A match that differs away from any near-tie is (in FP32 graphs; FP16 graphs
compute their embed-space features in float16, so there a differing match is counted and reported instead).

A wrong FP32 or FP16 graph stops the run. Quantized graphs and their stage pairs are lossy: they are measured
against the graph they come from (measure_lossy), and stop the run only below the floor of a miswired graph.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
import torch

from ..errors import VWTError
from ..graph import ops

log = logging.getLogger("vwt_export")

# Each graph against the torch model of its own precision. Float16 results differ with the order of summation.
RTOL = {"fp32": 1e-4, "fp16": 1e-2}
# FP16 graphs compute embed-space features in float16, so some matches differ from torch's away from near-ties;
# more than this share of the patches means the matching is wrong, not rounded.
FP16_MATCHES_DIFFER = 0.01


@dataclass
class Verification:
    file: str  # the graph, or "TOKENIZE + TRUNK" for a stage pair
    verified: bool
    max_rel_err: float | None = None  # of the outputs (logits, or a headless model's features)
    reason: str | None = None
    patches: int = 0  # patch matches compared (inter graphs)
    near_ties: int = 0  # patches whose match could go either way (word matching; 0 where decisions are per image)
    images_with_near_ties: int = 0  # images holding any near-tie decision (ToMe: left out of the output comparison)
    matches_differ: int = 0  # patches matched differently by the graph (near-ties, or FP16 rounding)
    against: str | None = None  # what it was checked against, when not its torch model (a stage pair: its one graph)
    images: int = 0  # verification images it ran on
    compared: int | None = None  # of those, the images whose outputs were compared (the rest hold near-tie decisions)
    tolerance: float | None = None  # the largest max_rel_err that passes

    def as_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


def relative_error(expected: np.ndarray, actual: np.ndarray, what: str) -> float:
    """Largest difference relative to the output scale."""
    if actual.shape != expected.shape:
        raise VWTError(f"{what}: output shape {actual.shape} differs from torch {expected.shape}")
    return float(np.abs(actual - expected).max() / max(np.abs(expected).max(), 1e-6))


def _check(err: float, rtol: float, what: str) -> float:
    if not err <= rtol:
        raise VWTError(f"{what}: ONNX output differs from torch by {err:.2e} (relative), over the {rtol:.0e} tolerance")
    return err


def verify_graph(graph: Path | onnx.ModelProto, reference, pixels: torch.Tensor, precision: str = "fp32") -> Verification:
    """Check `graph` (a file or a proto) against `reference`, the torch module it must equal: the model, or a
    method's torch model. What the reference can tell decides how discrete decisions are compared
    (vwt_export.methods.Method):

      match(pixels), near_ties(pixels)   the graph's vwt/keys equal torch's except at near-ties, and the output
                                         equals the reference run on the graph's own keys;
      decision_margins(pixels)           images with a decision within NEAR_TIE_EPS are counted, not compared.

    Raises VWTError when the graph is wrong; returns what was compared, near-ties included."""
    from ..backends.onnxruntime import OrtRunner, load_proto
    from ..vwt.inter import NEAR_TIE_EPS

    rtol, name = RTOL[precision], graph.name if isinstance(graph, Path) else "the graph"
    x = pixels.cpu().numpy()
    keyed = hasattr(reference, "match") and any(ops.KEYS_TENSOR in n.output for n in load_proto(graph).graph.node)
    v = Verification(name, True, images=len(x), tolerance=rtol)
    with torch.no_grad():
        if keyed:
            actual, extras = OrtRunner(graph, extra_outputs={ops.KEYS_TENSOR: onnx.TensorProto.INT64}).infer_extras(x)
            keys = extras[ops.KEYS_TENSOR]
            ours, ties = reference.match(pixels).cpu().numpy(), reference.near_ties(pixels).cpu().numpy()
            differ = keys != ours
            unexplained = differ & ~ties
            if unexplained.any() and (precision == "fp32" or unexplained.mean() > FP16_MATCHES_DIFFER):
                b, n = map(int, np.argwhere(unexplained)[0])
                raise VWTError(f"{name}: {int(unexplained.sum())} patch matches differ from torch away from any "
                               f"near-tie (first: image {b}, patch {n}: graph key {int(keys[b, n])}, torch key "
                               f"{int(ours[b, n])})")
            expected = reference(pixels, keys=torch.from_numpy(keys).to(pixels.device)).float().cpu().numpy()
            v.patches, v.near_ties, v.matches_differ = int(keys.size), int(ties.sum()), int(differ.sum())
            v.images_with_near_ties = int(ties.any(axis=1).sum())
        else:
            actual = OrtRunner(graph).infer(x)
            expected = reference(pixels).float().cpu().numpy()
        clear = np.ones(len(x), dtype=bool)
        if hasattr(reference, "decision_margins"):  # given the graph's keys, where it has them (the hybrid's blocks)
            margins = (reference.decision_margins(pixels, torch.from_numpy(keys).to(pixels.device)) if keyed
                       else reference.decision_margins(pixels))
            clear = (margins >= NEAR_TIE_EPS).cpu().numpy()
            # decisions per image: no patch count; with keys too, an image may hold either kind
            v.images_with_near_ties = int(((ties.any(axis=1) if keyed else False) | ~clear).sum())
    relative_error(expected, actual, name)  # the shapes, whatever is compared
    v.compared = int(clear.sum())
    if not clear.any():  # nothing to compare is no verification: say so rather than report an error of 0
        v.verified = False
        v.reason = (f"not compared with torch: all {len(x)} verification images hold a decision within "
                    f"{NEAR_TIE_EPS:g} of a tie")
        return v
    v.max_rel_err = _check(relative_error(expected[clear], actual[clear], name), rtol, name)
    return v


def check_stage_pair(tokenize: Path, trunk: Path, one_graph: Path, pixels: np.ndarray) -> Verification:
    """A float graph's tokenize + trunk (run length-aware, as users run them) against the one graph they were
    split from: the same ops on the same values, so equal but for float rounding (the trunk may see shorter
    sequences, so sums round differently by an ulp). A quantized pair is measured instead (measure_lossy)."""
    from ..runtime import load

    rtol = 1e-5  # tighter than a graph against torch: the same ops in the same runtime
    err = relative_error(load(one_graph, stages=False)(pixels), load(tokenize)(pixels), tokenize.name)
    if err > rtol:
        raise VWTError(f"{tokenize.name} + {trunk.name} differ from {one_graph.name} by {err:.1e} (relative), over "
                       f"the {rtol:.0e} tolerance")
    log.info("split %s into %s + %s for length-aware batching: together they agree with it (max relative error "
             "%.1e)", one_graph.name, tokenize.name, trunk.name, err)
    return Verification(f"{tokenize.name} + {trunk.name}", True, err, against=one_graph.name, images=len(pixels),
                        tolerance=rtol)


# -- lossy graphs: measured ---------------------------------------------------------------------------------

# A quantized graph (or a quantized stage pair) is lossy, so it is measured, not verified: its output cosine and
# top-1 agreement with the graph it comes from. It stops the run only on a gross failure that quantization cannot
# produce and a miswired graph does: NaN or Inf outputs, an output shape other than its reference's, or a mean
# output cosine below FLOOR_COSINE. Quantization keeps outputs pointing the same way (real weights, DINOv2-S/14 on
# 22 photos: INT8 0.985 mean cosine to FP32, VWT+INT8 0.927, an INT8 stage pair 0.995 to its one graph, whose max
# relative error was 1.9e-1); swapped tensors, scrambled outputs or wrong scales give outputs unrelated to the
# reference, with a cosine near 0 or below. 0.5 lies far from both.
FLOOR_COSINE = 0.5


@dataclass
class Measurement:
    """A lossy graph against its reference, over the verification images (summary.json's and report.json's
    `measured`)."""

    file: str  # the graph, or "TOKENIZE + TRUNK" for a stage pair
    against: str  # the reference: the FP32 graph it was quantized from, or the one graph a pair was split from
    images: int
    cosine_mean: float
    cosine_min: float
    top1_agreement: float | None  # None: the model has no classifier head
    max_rel_err: float  # for information only: single quantization flips make it large while the outputs agree
    floor: float = FLOOR_COSINE  # a mean cosine under it stops the run


def measure_lossy(file: str, against: str, expected: np.ndarray, actual: np.ndarray, headless: bool) -> Measurement:
    """`actual` (a lossy graph's outputs) against `expected` (its reference's, on the same images); VWTError on
    a gross failure (see FLOOR_COSINE)."""
    from .accuracy import cosine_similarities, top1_agreement

    if actual.shape != expected.shape:
        raise VWTError(f"{file}: output shape {actual.shape} differs from {against}'s {expected.shape}; the graph is "
                       "miswired")
    if not np.isfinite(actual).all():
        raise VWTError(f"{file}: its outputs hold NaN or Inf ({against}'s do not); the graph is miswired")
    per_image = cosine_similarities(expected, actual).reshape(len(actual), -1).mean(axis=1)
    m = Measurement(file, against, len(actual), float(per_image.mean()), float(per_image.min()),
                    None if headless else top1_agreement(expected, actual), relative_error(expected, actual, file))
    if not m.cosine_mean >= FLOOR_COSINE:
        raise VWTError(f"{file}: the mean cosine of its outputs to {against}'s is {m.cosine_mean:.3f}, under the "
                       f"{FLOOR_COSINE} floor that quantization stays far above; the graph is miswired")
    return m


# -- one wording for every place that states these results (report.md, the console) -------------------------------


def plural(n: int, one: str, many: str | None = None) -> str:
    return f"{n} {one if n == 1 else many or one + 's'}"


def near_tie_phrase(c: dict) -> str:
    """A verification's near-ties, counted the one way report.md, the console and summary.json count them: patches
    whose word match could go either way, and images holding any near-tie decision."""
    if c.get("patches"):
        compared = f"{c['patches']} word matches compared with torch's"
        if not c["near_ties"]:
            return f"{compared}, no near-ties, {c['matches_differ']} differ"
        ties = plural(c["near_ties"], "near-tie patch", "near-tie patches")
        return (f"{compared}: {ties} in {plural(c['images_with_near_ties'], 'image')}, "
                f"{c['matches_differ']} matched differently")
    if c.get("images_with_near_ties"):
        return (f"{plural(c['images_with_near_ties'], 'image holds', 'images hold')} a near-tie merge decision, "
                "left out of the output comparison")
    return ""


def near_tie_summary(ties: dict) -> str:
    """The console's line on summary.json's near_ties (ExportResult.near_ties), in near_tie_phrase's counts."""
    images = f"{ties['images']} of {plural(ties['of_images'], 'verification image')}"
    if ties["patches"]:
        return f"{plural(ties['patches'], 'patch', 'patches')} in {images} could match either of two words ({ties['file']})"
    return f"{images} hold a near-tie merge decision ({ties['file']})"


def _files(file: str) -> str:
    return " + ".join(f"`{f}`" for f in file.split(" + "))


def describe_verification(key: str, c: dict, output: str) -> str:
    """report.md's line for a verified graph (`output`: what it returns, logits or features)."""
    if not c["verified"]:
        return f"- `{key}`: written but not verified: {c['reason']}"
    pair = " + " in c["file"]
    name = _files(c["file"]) if pair else f"`{key}`"
    against = (f"`{c['against']}` (the one graph they were split from; run length-aware)" if pair
               else f"`{c['against']}`" if c.get("against") else "its torch model")
    images = c.get("compared", c.get("images"))  # the images whose outputs were compared
    on = f" on {plural(images, 'image')}" if images else ""
    tol = f" (tolerance {c['tolerance']:.0e})" if c.get("tolerance") is not None else ""
    given = ", the torch model run on the graph's own word matches" if c.get("patches") else ""
    ties = near_tie_phrase(c)
    return (f"- {name}: verified against {against}{on}: max relative error of the {output} {c['max_rel_err']:.1e}"
            f"{tol}{given}" + (f"; {ties}" if ties else ""))


def describe_measurement(m: dict, output: str) -> str:
    """report.md's line for a lossy graph measured against the graph it comes from."""
    agree = f", top-1 agreement {m['top1_agreement']:.1%}" if m.get("top1_agreement") is not None else ""
    return (f"- {_files(m['file'])}: measured against `{m['against']}` on {plural(m['images'], 'image')}: per-image "
            f"cosine of the {output} {m['cosine_mean']:.4f} mean, {m['cosine_min']:.4f} min (the run stops under a "
            f"mean of {m.get('floor', FLOOR_COSINE)}){agree}; max relative error {m['max_rel_err']:.1e}, for "
            "information only (one flipped rounding makes it large while the outputs agree)")
