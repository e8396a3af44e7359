"""Every file and variant vwt-export writes, named in one place.

A variant is a precision and a compression method; each has ONNX graphs (the custom-op form and, for
compressed variants, the portable form with standard-op bodies) and, with TensorRT, an engine:

    variant     graph(s)                                            engine
    fp32        model.onnx                                          model.fp32.engine
    fp16        model.fp16.onnx                                     model.fp16.engine
    int8        model.int8.onnx                                     model.int8.engine
    vwt         model.vwt.onnx, model.vwt.portable.onnx             model.vwt.fp32.engine
    vwt+fp16    model.vwt.fp16.onnx, model.vwt.fp16.portable.onnx   model.vwt.fp16.engine
    vwt+int8    model.vwt.int8.onnx, model.vwt.int8.portable.onnx   model.vwt.int8.engine
    (vwt, inter mode: the same graph in two stages for length-aware batching: model.vwt.tokenize.onnx and
     model.vwt.trunk.onnx, model.vwt.int8.tokenize.onnx and model.vwt.int8.trunk.onnx)
    tome        model.tome.onnx (standard ops only: no portable twin)  model.tome.fp32.engine
    tome+int8   model.tome.int8.onnx                                model.tome.int8.engine

A compressed variant's name is its method's (vwt_export.methods: `Method.variant`); adding a precision changes
this module only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

PRECISIONS = ("fp32", "fp16", "int8")


@dataclass(frozen=True, order=True)
class Variant:
    """One model the run produces: the baseline or a compressed model, in one precision."""

    method: str = ""  # "" (the uncompressed baseline), or a method's variant name ("vwt", "tome")
    precision: str = "fp32"

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r}")

    @property
    def name(self) -> str:
        """fp32, int8, vwt, vwt+int8, ...: the report's row names."""
        if not self.method:
            return self.precision
        return self.method if self.precision == "fp32" else f"{self.method}+{self.precision}"

    @property
    def compressed(self) -> bool:
        return bool(self.method)

    @property
    def _stem(self) -> str:
        return f"model.{self.method}" if self.method else "model"

    def onnx_file(self, portable: bool = False) -> str:
        """The graph's file name; `portable`: the form whose vwt ops carry standard-op bodies (a compressed graph
        that holds vwt ops has one; the baseline never does)."""
        precision = "" if self.precision == "fp32" else f".{self.precision}"
        return f"{self._stem}{precision}{'.portable' if portable and self.compressed else ''}.onnx"

    def stage_file(self, stage: str) -> str:
        """The tokenize or trunk stage of the custom-op graph (length-aware batching; the naming rule is the
        stages module's, which the runtime also follows)."""
        from .graph.stages import stage_files

        return dict(zip(("tokenize", "trunk"), stage_files(self.onnx_file())))[stage]

    def engine_file(self, stage: str = "") -> str:
        return f"{self._stem}{'.' + stage if stage else ''}.{self.precision}.engine"

    def label(self, backend: str) -> str:
        """The row name of this variant run on `backend` (ort or trt)."""
        return self.name if backend == "ort" else f"trt:{self.name}"


@dataclass(frozen=True)
class Graph:
    """A written ONNX file of a variant."""

    variant: Variant
    portable: bool
    path: Path
    stage: str = ""  # "" (the whole model), "tokenize" or "trunk"


def exported_precisions(backend: str) -> tuple[str, ...]:
    """The precisions exported from torch (INT8 is quantized from FP32 afterwards). FP16 graphs are written for
    TensorRT only: ONNX Runtime's CPU provider runs float16 slower than float32."""
    return ("fp32", "fp16") if backend == "trt" else ("fp32",)


def in_order(variants_: set[Variant] | list[Variant]) -> list[Variant]:
    """Baseline first, then by method; precisions in the order fp32, fp16, int8."""
    return sorted(variants_, key=lambda v: (v.method, PRECISIONS.index(v.precision)))


def find(graphs: list[Graph], variant: Variant, portable: bool = False, stage: str = "") -> Graph | None:
    return next((g for g in graphs if g.variant == variant and g.portable == portable and g.stage == stage), None)


def engine_sources(graphs: list[Graph], plugin: bool) -> list[tuple[Variant, str, Graph]]:
    """(variant, stage, graph) of every TensorRT engine: one per variant, from its custom-op graph when the plugin
    library exists, else from its portable twin where it has one; and one per trunk stage."""
    plan = [(v, "", find(graphs, v, portable=not plugin and find(graphs, v, True) is not None))
            for v in in_order({g.variant for g in graphs})]
    return plan + [(g.variant, "trunk", g) for g in graphs if g.stage == "trunk"]
