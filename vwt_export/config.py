"""What one export asks for: a frozen, grouped configuration, validated where it is made.

    cfg = ExportConfig.from_options("deit_s", mode="inter", calib="images/", threshold=0.1)
    cfg.compression.threshold, cfg.checks.batches, cfg.engines.backend

`from_options` takes the command line's options by their flag names (`--vocab-size` is `vocab_size`), so the
CLI and Python callers build the same object and get the same checks. Every check that needs no file and no
model happens here; `pipeline.export` checks files and folders next, before any slow work. The compression
method's options are its registry entry's (vwt_export.methods): declared, defaulted and checked there.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

from . import methods
from .errors import VWTError

BACKENDS = ("ort", "trt")


def parse_batches(value: str | int | tuple | list) -> tuple[int, ...]:
    """"1,8" or [1, 8] -> (1, 8), sorted and unique."""
    items = value.split(",") if isinstance(value, str) else ([value] if isinstance(value, int) else list(value))
    try:
        out = tuple(sorted({int(v) for v in items if str(v).strip()}))
    except (TypeError, ValueError):
        out = ()
    if not out or min(out) < 1:
        raise VWTError(f"batch sizes {value!r}: give positive sizes like 1,8,32")
    return out


def _positive(name: str, value: int | None, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise VWTError(f"{name}={value!r}: give a whole number of at least 1")


def _choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise VWTError(f"{name}={value!r} is not one of {', '.join(choices)}")


METRICS = {"cosine": "cosine of the outputs to FP32", "top1": "top-1 agreement with FP32"}  # --target's


@dataclass(frozen=True)
class Target:
    metric: str  # cosine | top1
    value: float  # the least quality accepted

    def __str__(self) -> str:
        return f"{self.metric}={self.value:g}"

    def met(self, quality: float) -> bool:
        return quality >= self.value


def parse_target(value: "str | Target | None") -> Target | None:
    """"cosine=0.98" or "top1=0.9" -> Target; anything else a VWTError saying what is expected."""
    if value is None or isinstance(value, Target):
        return value
    metric, sep, number = str(value).partition("=")
    hint = "expected cosine=0.98 or top1=0.9 (a quality in (0, 1] the chosen setting must keep)"
    try:
        quality = float(number)
    except ValueError:
        quality = float("nan")
    if not sep or metric.strip() not in METRICS or not 0.0 < quality <= 1.0:  # NaN fails too
        raise VWTError(f"--target {value}: {hint}")
    return Target(metric.strip(), quality)


def searchable() -> list[methods.Method]:
    """The methods --target searches: the registered ones with a search ladder (vwt_export.methods)."""
    return [m for m in map(methods.get, methods.names()) if m.search_ladder]


@dataclass(frozen=True)
class ModelSpec:
    name: str
    weights: str = "pretrained"  # "pretrained", "random" or a checkpoint path
    args: Mapping[str, Any] = field(default_factory=dict)  # extra timm.create_model arguments

    def __post_init__(self) -> None:
        if not self.name or not isinstance(self.name, str):
            raise VWTError("give a model: an alias such as deit_s or a timm ViT name")
        object.__setattr__(self, "args", MappingProxyType(dict(self.args)))  # read-only, as the config is frozen
        for key in self.args:
            if not str(key).isidentifier():
                raise VWTError(f"model argument {key!r}: expected KEY=VALUE, e.g. img_size=384")


@dataclass(frozen=True)
class Data:
    calib: Path | None = None  # calibration images: learn the vocabulary, calibrate INT8
    val: Path | None = None  # check images (default: calib)
    max_images: int | None = None
    batch_size: int = 32

    def __post_init__(self) -> None:
        for name in ("calib", "val"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, Path(value))
        _positive("max_images", self.max_images, allow_none=True)
        _positive("batch_size", self.batch_size)

    @property
    def check_folder(self) -> Path | None:
        return self.val or self.calib


@dataclass(frozen=True)
class Compression:
    mode: str = "inter"  # a registered method: vwt_export.methods.names()
    options: Mapping[str, Any] = field(default_factory=dict)  # its options by name; checked, defaults filled in
    vocab: Path | None = None  # a vocabulary file; None: learn one from the calibration images
    vocab_size: int = 1000
    seed: int = 0  # k-means seed
    spec: methods.Spec = field(init=False, repr=False, compare=False)  # mode + options: what the stages read

    def __post_init__(self) -> None:
        spec = methods.spec(self.mode, **self.options)
        object.__setattr__(self, "spec", spec)
        object.__setattr__(self, "options", spec.values)
        if self.vocab is not None:
            object.__setattr__(self, "vocab", Path(self.vocab))
        _positive("vocab_size", self.vocab_size)

    def __getattr__(self, name: str) -> Any:
        """The method's options by name (cfg.compression.threshold)."""
        return getattr(self.__dict__["spec"], name) if "spec" in self.__dict__ else super().__getattribute__(name)

    @property
    def method(self) -> methods.Method:
        return methods.get(self.mode)


@dataclass(frozen=True)
class Checks:
    enabled: bool = True  # compare with the uncompressed model, evaluate and time every variant
    batches: tuple[int, ...] = (1, 8)  # batch sizes timed
    reps: int = 10  # timed repetitions per variant and batch
    sweep: Mapping[str, tuple] = field(default_factory=dict)  # {key: values}, keys: the methods' sweep keys
    target: Any = None  # "cosine=0.98" | "top1=0.9" -> check.target.Target: search for the fastest setting keeping it

    def __post_init__(self) -> None:
        object.__setattr__(self, "batches", parse_batches(self.batches))
        object.__setattr__(self, "target", parse_target(self.target))
        _positive("reps", self.reps)
        sweep = dict(self.sweep) if isinstance(self.sweep, Mapping) else self.sweep
        object.__setattr__(self, "sweep", MappingProxyType(methods.parse_sweep(sweep) if sweep else {}))


@dataclass(frozen=True)
class Engines:
    onnx: bool = True  # write the ONNX graphs (everything below needs them)
    int8: bool = True  # INT8 Q/DQ variants (needs calibration images)
    backend: str = "ort"  # ort: ONNX Runtime CPU; trt: also TensorRT engines
    trt_target: str | None = None  # TensorRT-RTX ahead-of-time compute capability, e.g. SM89
    int8_attention: bool = False  # also quantize attention's activation products (for TensorRT's fused attention)
    int8_calibration: str = "minmax"  # minmax | entropy | percentile
    triton: bool = False  # also write OUT/triton/, a Triton Inference Server model repository

    def __post_init__(self) -> None:
        from .graph.quantize import CALIBRATIONS

        _choice("backend", self.backend, BACKENDS)
        _choice("int8_calibration", self.int8_calibration, CALIBRATIONS)
        if self.trt_target is not None and self.backend != "trt":
            raise VWTError("trt_target builds TensorRT engines: it needs backend='trt'")


@dataclass(frozen=True)
class ExportConfig:
    model: ModelSpec
    data: Data = field(default_factory=Data)
    compression: Compression = field(default_factory=Compression)
    checks: Checks = field(default_factory=Checks)
    engines: Engines = field(default_factory=Engines)
    out: Path | None = None  # default: vwt-out/MODEL-MODE
    device: str = "cpu"  # torch device of the torch path
    progress: bool = True
    command: str | None = None  # what produced this run, for report.json; default: the Python call

    def __post_init__(self) -> None:
        out = Path(self.out) if self.out is not None else Path("vwt-out") / f"{self.model.name}-{self.compression.mode}"
        object.__setattr__(self, "out", out)
        c, d = self.compression, self.data
        if c.method.needs_vocabulary and c.vocab is None and d.calib is None:
            raise VWTError(f"{c.mode} mode needs a vocabulary: pass --vocab FILE or --calib DIR to learn one (or --demo)")
        if self.checks.enabled and d.check_folder is None:
            raise VWTError("the checks need images: pass --val DIR or --calib DIR (or --skip-checks)")
        if self.engines.triton and not self.engines.onnx:
            raise VWTError("--triton serves the ONNX graphs: drop --skip-export")
        if self.checks.sweep and not (self.checks.enabled and self.engines.onnx):
            raise VWTError("--sweep measures ONNX graphs on the check images: drop --skip-checks / --skip-export")
        if self.checks.target and (d.calib is None or d.val is None or not self.checks.enabled or not self.engines.onnx):
            raise VWTError(f"--target {self.checks.target} chooses on the --calib images and reports on held-out --val "
                           "images: pass both (and drop --skip-checks / --skip-export)")
        if self.checks.target and d.val.resolve() == d.calib.resolve():
            raise VWTError(f"--target {self.checks.target}: --val {d.val} is the --calib folder; the check images must "
                           "be held out from the choice: pass another folder")
        if self.needs_vocabulary and c.vocab is None and d.calib is None:
            keys = [k for m in methods.swept(self.checks.sweep) if m.needs_vocabulary for k in m.sweep_keys]
            raise VWTError(f"sweeping {' or '.join(keys)} needs a vocabulary: pass --vocab FILE or --calib DIR")
        if self.command is None:
            object.__setattr__(self, "command", f"vwt_export.export({self!r})")

    @property
    def method(self) -> str:
        """The compressed variants' name in files and rows (vwt, tome), or "" (mode none: no compressed variant)."""
        return self.compression.method.variant

    @property
    def needs_vocabulary(self) -> bool:
        searched = searchable() if self.checks.target else []
        return any(m.needs_vocabulary for m in (self.compression.method, *methods.swept(self.checks.sweep), *searched))

    @classmethod
    def from_options(cls, model: str, *, mode: str = "inter", weights: str = "pretrained",
                     model_args: Mapping[str, Any] | None = None, calib=None, val=None, vocab=None,
                     vocab_size: int = 1000, out=None,
                     skip_checks: bool = False, skip_export: bool = False, skip_int8: bool = False,
                     backend: str = "ort", trt_target: str | None = None, batches=(1, 8), reps: int = 10,
                     batch_size: int = 32, max_images: int | None = None, seed: int = 0, device: str = "cpu",
                     sweep=(), target=None, int8_attention: bool = False, int8_calibration: str = "minmax", triton: bool = False,
                     progress: bool = True, command: str | None = None, **method_options: Any) -> "ExportConfig":
        """The configuration from the command line's options, by their flag names; `method_options` are the
        compression methods' (threshold=0.2, keep=0.5, grouping="local", r=13, prop_attn=True, ...)."""
        if command is None:
            given = {k: v for k, v in locals().items() if k not in ("cls", "model", "command", "method_options")}
            given.update(method_options)
            defaults = {p.name: p.default for p in _OPTION_DEFAULTS}
            defaults.update((k, o.default) for k, o in methods.all_options().items())
            changed = {k: v for k, v in given.items() if v != defaults.get(k) and v is not None}  # None: not given
            args = ", ".join([repr(model)] + [f"{k}={_plain(v)!r}" for k, v in changed.items()])
            command = f"vwt_export.export({args})"
        return cls(
            model=ModelSpec(model, weights, model_args or {}),
            data=Data(calib=calib, val=val, max_images=max_images, batch_size=batch_size),
            compression=Compression(mode=mode, options=method_options, vocab=vocab, vocab_size=vocab_size, seed=seed),
            checks=Checks(enabled=not skip_checks, batches=batches, reps=reps, sweep=sweep, target=target),
            engines=Engines(onnx=not skip_export, int8=not skip_int8, backend=backend, trt_target=trt_target,
                            int8_attention=int8_attention, int8_calibration=int8_calibration, triton=triton),
            out=out, device=device, progress=progress, command=command,
        )

    def replace(self, **groups: Any) -> "ExportConfig":
        """A copy with whole groups or fields replaced (the original stays as it is); its command is the Python
        call that makes the copy unless one is given."""
        return dataclasses.replace(self, **{"command": None, **groups})


def _plain(value: Any) -> Any:
    return str(value) if isinstance(value, Path) else value


def _option_defaults():
    import inspect

    params = inspect.signature(ExportConfig.from_options).parameters.values()
    return [p for p in params if p.default is not inspect.Parameter.empty]


_OPTION_DEFAULTS = _option_defaults()

__all__ = ["BACKENDS", "METRICS", "Checks", "Compression", "Data", "Engines", "ExportConfig", "ModelSpec", "Target",
           "parse_batches", "parse_target", "searchable"]
