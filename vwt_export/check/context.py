"""The run context: what one export's stages and checks share, held in one place.

    inputs = read_inputs(cfg)            every input file and folder checked, before any slow work
    run = Run(cfg, model, inputs)
    run.images                  every check image that decodes, decoded once: pixels, files, labels
    run.verification_pixels     the first 8 of them: every graph is verified on these
    run.calibration             the first 32 calibration images (INT8 ranges)
    run.note("energy", why)     what was not measured, and why
    run.verify(path, reference, "fp32")    a graph against its torch model; an FP32 graph that is wrong stops the run
    run.measure(int8_path, fp32_path)      a lossy graph against the graph it comes from; stops only a miswired one
    run.verification, run.measured, run.not_measured, run.written     what the report and summary.json say

The check images are held in memory once decoded (float32: 0.6 MB per 224 px image); --max-images bounds them.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from ..artefacts import Graph, Variant
from ..errors import OpLibraryMissing, VWTError

log = logging.getLogger("vwt_export")

VERIFICATION_IMAGES, CALIBRATION_IMAGES = 8, 32


@dataclass(frozen=True)
class Inputs:
    """What the input checks found: image lists and a loaded vocabulary."""

    calib_files: list[Path]
    check_files: list[Path]
    vocab: Any  # Vocabulary | None
    labels: np.ndarray | None  # class index per check image, when the check folder carries labels


@dataclass(frozen=True)
class Images:
    """Check images as the model takes them, with the files they came from (those that decoded) and labels."""

    pixels: np.ndarray  # float32 [N, C, H, W]
    files: list[Path]
    labels: np.ndarray | None

    def batches(self, size: int) -> Iterator[np.ndarray]:
        for i in range(0, len(self.pixels), size):
            yield self.pixels[i : i + size]


@dataclass(frozen=True)
class Note:
    """Something the run did not measure, and why (report.json's not_measured)."""

    what: str
    why: str


def read_inputs(cfg) -> Inputs:
    """Every input file and folder, before any slow work, so that mistakes fail in a second."""
    from ..data import readable_images
    from ..vwt import Vocabulary
    from .accuracy import read_labels

    d, c = cfg.data, cfg.compression
    calib = readable_images(d.calib, d.max_images) if d.calib else []
    check = readable_images(d.val, d.max_images) if d.val else (calib if cfg.checks.enabled else [])
    vocab = None
    space = c.spec.values.get("space")
    if c.vocab is not None and not cfg.needs_vocabulary:
        log.warning("--vocab %s is not used: mode %s matches no words", c.vocab, c.mode)
    if cfg.needs_vocabulary and c.vocab is not None:
        vocab = Vocabulary.load(c.vocab, space=space)
        if space and vocab.space != space:
            raise VWTError(f"{c.vocab}: a {vocab.space}-space vocabulary, but --space {space} was given")
    if cfg.engines.backend == "trt" and cfg.engines.onnx:
        from ..backends.tensorrt import import_tensorrt

        import_tensorrt()  # no TensorRT, no point exporting for it
    labels = read_labels(d.check_folder, check) if check else None
    return Inputs(calib, check, vocab, labels)


def decode(model, files: list[Path], limit: int | None = None, progress=None) -> tuple[np.ndarray, list[Path]]:
    """The first `limit` images of `files` that decode (all by default), preprocessed for `model`."""
    from ..data import iter_image_batches
    from ..models import transform

    batches, used = [], []
    for batch, paths in iter_image_batches(files, transform(model), min(limit or 32, 32), progress=progress):
        batches.append(batch.numpy())
        used += paths
        if limit is not None and len(used) >= limit:
            break
    return np.concatenate(batches)[:limit], used[:limit]


@dataclass(frozen=True)
class ExportResult:
    config: Any  # ExportConfig
    out: Path
    graphs: list[Graph] = field(default_factory=list)  # ONNX files written
    engines: dict[Variant, Path] = field(default_factory=dict)  # TensorRT engines
    verification: dict[str, dict] = field(default_factory=dict)  # graph file -> check against torch
    torch_check: dict | None = None  # tokens and agreement on the torch path
    report: dict | None = None  # report.json
    not_measured: list[dict[str, str]] = field(default_factory=list)
    written: list[Path] = field(default_factory=list)
    measured: dict[str, dict] = field(default_factory=dict)  # quantized graph file -> measured against its source

    def graph(self, variant: str = "fp32", portable: bool = False) -> Path:
        """The file of a variant by its report name (fp32, vwt, vwt+int8, ...)."""
        for g in self.graphs:
            if g.variant.name == variant and g.portable == portable and not g.stage:
                return g.path
        raise KeyError(f"no {'portable ' if portable else ''}graph of variant {variant!r} was written")

    @property
    def near_ties(self) -> dict[str, Any]:
        """The near-ties of the verified graph that had the most (summary.json's near_ties; the console's line):
        its file, its near-tie patches (word matching; 0 where decisions are per image), the images holding any,
        and the verification images. Counted as each graph's verification counts them (check/verify.py)."""
        verified = {k: v for k, v in self.verification.items() if v.get("verified")}
        worst = max(verified.items(), key=lambda kv: (kv[1].get("images_with_near_ties", 0),
                                                                kv[1].get("near_ties", 0)), default=(None, {}))
        file, v = worst if worst[1].get("images_with_near_ties") else (None, {})
        return {"file": file, "patches": v.get("near_ties", 0), "images": v.get("images_with_near_ties", 0),
                "of_images": v.get("images", 0)}


class Run:
    """One export's shared state: the config, the uncompressed model, the inputs, the images decoded from them
    (once, on first use), and what the stages verified, measured, did not measure and wrote."""

    def __init__(self, cfg, model, inputs: Inputs):
        self.cfg, self.model, self.inputs = cfg, model, inputs
        self.verification: dict[str, Any] = {}  # graph file -> Verification (check/verify.py)
        self.measured: dict[str, Any] = {}  # lossy graph file -> Measurement (check/verify.py)
        self.not_measured: list[Note] = []
        self.written: list[Path] = []
        self._outputs: dict[Path, np.ndarray] = {}  # a graph's outputs on the verification images

    def note(self, what: str, why: str) -> None:
        self.not_measured.append(Note(what, why))

    @functools.cached_property
    def images(self) -> Images:
        from tqdm.auto import tqdm

        files = self.inputs.check_files
        with tqdm(total=len(files), desc="decoding check images", unit="img", disable=not self.cfg.progress) as bar:
            pixels, used = decode(self.model, files, progress=bar.update)
        labels = self.inputs.labels
        if labels is not None:
            index = {p: i for i, p in enumerate(files)}
            labels = labels[[index[p] for p in used]]
        return Images(pixels, used, labels)

    @functools.cached_property
    def calibration(self) -> np.ndarray:
        return decode(self.model, self.inputs.calib_files, CALIBRATION_IMAGES)[0]

    @functools.cached_property
    def verification_pixels(self) -> torch.Tensor:
        """Up to 8 check images (a batch with padding in it), else calibration images, else seeded noise."""
        if self.inputs.check_files:
            enabled = self.cfg.checks.enabled  # all of them are decoded anyway
            pixels = self.images.pixels if enabled else decode(self.model, self.inputs.check_files,
                                                               VERIFICATION_IMAGES)[0]
        elif self.inputs.calib_files:
            pixels = self.calibration
        else:
            c, (h, w) = self.model.patch_embed.proj.in_channels, self.model.patch_embed.img_size
            return torch.randn(4, c, h, w, generator=torch.Generator().manual_seed(0))
        return torch.from_numpy(pixels[:VERIFICATION_IMAGES])

    def verify(self, path: Path, reference, precision: str, key: str | None = None):
        """`path` against its torch model on the verification images, recorded under `key` (its file name). A
        wrong FP32 graph stops the run; an FP16 miss and a missing op library are warnings."""
        from .verify import Verification, verify_graph

        pixels = self.verification_pixels.to(self.cfg.device)
        try:
            v = verify_graph(path, reference, pixels, precision)
        except VWTError as e:
            if precision == "fp32" and not isinstance(e, OpLibraryMissing):
                raise
            log.warning("%s written but not verified: %s", path.name, e)
            v = Verification(path.name, False, reason=str(e))
        else:
            from .verify import near_tie_phrase

            ties = near_tie_phrase(v.as_dict())
            if not v.verified:
                log.warning("%s written but %s", path.name, v.reason)
            else:
                log.info("verified %s against torch (%s) on %d images: max relative error of the outputs %.1e "
                         "(tolerance %.0e)%s", path.name, precision, v.compared, v.max_rel_err, v.tolerance,
                         f"; {ties}" if ties else "")
        self.verification[key or path.name] = v
        return v

    def outputs(self, path: Path) -> np.ndarray:
        """A graph's outputs on the verification images, run as runtime.load runs that file (a tokenize file with its
        trunk, length-aware; any other the one graph it holds), once per graph."""
        if path not in self._outputs:
            from ..runtime import load

            self._outputs[path] = load(path, stages=False)(self.verification_pixels.cpu().numpy())
        return self._outputs[path]

    def measure(self, path: Path, against: Path, name: str | None = None):
        """A lossy graph (a quantized graph; a quantized pair: the tokenize file, run length-aware, named `name`)
        against `against` on the verification images, recorded; only a gross failure stops the run."""
        from ..models import is_headless
        from .verify import measure_lossy

        m = measure_lossy(name or path.name, against.name, self.outputs(against), self.outputs(path),
                          is_headless(self.model))
        agree = f", top-1 agreement {m.top1_agreement:.1%}" if m.top1_agreement is not None else ""
        log.info("measured %s against %s on %d images: output cosine %.4f mean, %.4f min%s", m.file, m.against,
                 m.images, m.cosine_mean, m.cosine_min, agree)
        self.measured[path.name] = m
        return m

    def serialised(self) -> dict[str, Any]:
        """verification, measured and not_measured as report.json and summary.json hold them."""
        return {"verification": {k: v.as_dict() for k, v in self.verification.items()},
                "measured": {k: asdict(m) for k, m in self.measured.items()},
                "not_measured": [asdict(n) for n in self.not_measured]}

    def result(self, graphs, engines, torch_check: dict | None, report: dict | None) -> ExportResult:
        facts = self.serialised()
        return ExportResult(self.cfg, self.cfg.out, graphs, engines, facts["verification"], torch_check, report,
                            facts["not_measured"], self.written, facts["measured"])
