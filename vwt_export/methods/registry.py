"""The registry of compression methods, as timm registers its models: one module per method, found by name.

    methods.names()                          ('none', 'intra', 'inter', 'tome')
    method = methods.get("inter")            its options, sweep keys, file names, torch model and graph pass
    spec = methods.spec("inter", threshold=0.2)   # every value checked once, the method's defaults filled in
    cmodel = method.build(model, spec, vocab)     # the torch reference
    proto = method.graph(base, cmodel, spec)      # model.onnx -> the compressed graph
    methods.compress(model, "inter", vocab=vocab, threshold=0.2)   # build in one call (vx.compress)

A method is a `Method` subclass decorated with `@register`; importing its module registers it (methods/__init__.py
imports the built-in ones). An option is one `Option` object owned by the methods that list it: a method may list
another's (hybrid: `options = (*Inter.options, R, TILE)`), and the check comes with it. Two different options under one
name are refused at registration, so each option is declared once. A method may give a shared option a default of
its own (`Method.defaults`: hybrid groups at a lower threshold than inter, its blocks merging the rest).

Which options a method takes is strict: an option of another method given a value other than its default is an
error ("grouping='local' applies to inter and hybrid modes only, not 'intra'"), whoever gives it (CLI, config,
vx.compress). None stands for "not given" (the CLI's value for an option whose default depends on the mode).
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, ClassVar, Iterable, Mapping

from ..errors import VWTError
from ..vwt import defaults
from .options import Option

log = logging.getLogger(__name__)

PROP_ATTN = Option("prop_attn", defaults.PROP_ATTN, "proportional attention: weight merged tokens by their size", kind=bool)
COMMON = (PROP_ATTN,)  # options every method takes; methods without merged tokens have nothing to weight


@dataclass(frozen=True)
class Spec:
    """One method with a checked value for each of its options: what flows down from the configuration to the
    torch model and the graph pass (`spec.threshold`, `spec.prop_attn`)."""

    method: str
    values: Mapping[str, Any]

    def __getattr__(self, name: str) -> Any:
        values = self.__dict__.get("values", {})
        if name in values:
            return values[name]
        raise AttributeError(f"the {self.__dict__.get('method')} method has no option {name!r}")

    def __hash__(self) -> int:  # sweep settings are deduplicated
        return hash((self.method, tuple(self.values.items())))


class Method:
    """A compression method. Class attributes describe it; the methods below build it.

    The torch model `build` returns is the reference every graph of the method is checked against. It takes
    normalised pixels [B, C, H, W], returns what the uncompressed model returns, and tells the checks its tokens:
    `tokens_in` (P + N) and, after each call, `last_token_counts` (real tokens per image). Verification reads two
    optional abilities of it (check/verify.py): `match(pixels)` and `near_ties(pixels)` for graphs that hold the
    tensor vwt/keys (discrete word matches), `decision_margins(pixels)` for methods with other discrete decisions.
    """

    name: ClassVar[str]  # --mode NAME
    summary: ClassVar[str] = ""  # one line for --mode's help
    variant: ClassVar[str] = ""  # the compressed variant's name in files and report rows (model.vwt.onnx, vwt+int8)
    options: ClassVar[tuple[Option, ...]] = ()  # besides COMMON
    defaults: ClassVar[Mapping[str, Any]] = MappingProxyType({})  # its own defaults for options it shares
    sweep_keys: ClassVar[tuple[str, ...]] = ()  # the options --sweep varies for it (every combination)
    sweep_group: ClassVar[str] = ""  # the sweep rows' method column and plot marker (default: name)
    # --target walks it: settings (its options' values) from least to most compression; no ladder, not searched
    search_ladder: ClassVar[tuple[Mapping[str, Any], ...]] = ()
    needs_vocabulary: ClassVar[bool] = False  # matches visual words: learn or load a vocabulary
    precisions: ClassVar[tuple[str, ...]] = ("fp32", "fp16")  # exported from torch (INT8 is quantized from FP32)
    stages: ClassVar[bool] = False  # also written as tokenize + trunk graphs (length-aware batching)
    groups_patches: ClassVar[bool] = False  # its reference has match(pixels) and grid_w: report.md draws the groups

    def check(self, spec: Spec) -> None:
        """A VWTError where values each valid for its option do not suit this method (ToMe takes no fraction r)."""

    def build(self, model, spec: Spec, vocab=None):
        """The torch reference of `model` (a timm ViT, unchanged) compressed as `spec` says, in eval mode."""
        raise NotImplementedError

    def graph(self, base, reference, spec: Spec):
        """The compressed ONNX graph, from the baseline graph `base` (model.onnx, or its float16 twin) and the
        torch reference it must equal (whose derived values, such as normalised words, it reads)."""
        raise NotImplementedError(f"the {self.name} method writes no compressed graph")

    def settings(self, spec: Spec, reference) -> dict[str, Any]:
        """What report.json's settings say of this method beyond mode and prop_attn."""
        return {o.name: spec.values[o.name] for o in self.options}

    def describe(self, settings: Mapping[str, Any]) -> str:
        """The rest of report.md's "Mode **name**" line, from report.json's settings."""
        return "".join(f", {o.name} {settings[o.name]}" for o in self.options if settings.get(o.name) is not None)

    def label(self, params: Mapping[str, Any]) -> str:
        """A sweep setting's row label (also its file name, model.<label>.onnx)."""
        words = [f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items()]
        return " ".join([self.sweep_group or self.name, *words])


_METHODS: dict[str, Method] = {}
_OPTIONS: dict[str, Option] = {}  # the methods' options; COMMON come last


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: add a method to the registry (its name and options checked against the others)."""
    method = cls()
    if not getattr(cls, "name", "") or method.name in _METHODS:
        raise ValueError(f"a method needs a name no other method has: {getattr(cls, 'name', None)!r}")
    for option in method.options:
        if {**_OPTIONS, **{o.name: o for o in COMMON}}.get(option.name, option) is not option:
            raise ValueError(f"{method.name}: another option is already called {option.name!r}; list that one")
    own = {o.name for o in method.options}
    if not set(method.sweep_keys) <= own:
        raise ValueError(f"{method.name}: sweep keys {set(method.sweep_keys) - own} are not its options")
    _OPTIONS.update((o.name, o) for o in method.options)
    _METHODS[method.name] = method
    return cls


def names() -> tuple[str, ...]:
    return tuple(_METHODS)


def get(name: str) -> Method:
    if name not in _METHODS:
        raise VWTError(f"mode={name!r} is not one of {', '.join(_METHODS)}")
    return _METHODS[name]


def all_options() -> dict[str, Option]:
    """Every method's options (in the order methods were registered), then the common ones, by name."""
    return {**_OPTIONS, **{o.name: o for o in COMMON}}


def takes(method: Method) -> dict[str, Option]:
    return {o.name: o for o in (*method.options, *COMMON)}


def default(method: Method, key: str) -> Any:
    """The default of option `key` in `method`: the method's own (Method.defaults), else the option's."""
    return method.defaults.get(key, takes(method)[key].default)


def mode_defaults(key: str) -> dict[str, Any]:
    """{method: its default} for the methods whose default of option `key` is their own (the CLI's help)."""
    return {m.name: m.defaults[key] for m in _METHODS.values() if key in m.defaults}


def _modes(owners: list[str]) -> str:
    words = owners[0] if len(owners) == 1 else f"{', '.join(owners[:-1])} and {owners[-1]}"
    return f"{words} mode{'s' if len(owners) > 1 else ''}"


def spec(name: str, **given: Any) -> Spec:
    """The checked options of method `name`: each value given is checked by its option; the method's own
    options take it, those given no value their default. Other methods' options must keep their defaults."""
    method = get(name)
    own, known = takes(method), all_options()
    values = {}
    for key, value in given.items():
        if key not in known:
            raise VWTError(f"unknown option {key}={value!r}: the {name} mode takes {', '.join(own)}")
        if value is None and known[key].default is not None:
            continue  # not given
        value = known[key].parse(value)
        if key in own:
            values[key] = value
        elif value != known[key].default:
            owners = [m.name for m in _METHODS.values() if key in takes(m)]
            raise VWTError(f"{key}={value!r} applies to {_modes(owners)} only, not '{name}'")
    out = Spec(name, MappingProxyType({k: values.get(k, default(method, k)) for k in own}))
    method.check(out)
    return out


def compress(model, mode: str = "inter", *, vocab=None, **options: Any):
    """Wrap a timm ViT (from `load_model`) with a registered compression method; `options` by their names
    (threshold=0.1, keep=0.75, grouping="local", r=13, prop_attn=True, ...: see `get(mode).options`)."""
    return get(mode).build(model, spec(mode, **options), vocab)


# -- the sweep's keys ---------------------------------------------------------------------------------------


def sweep_options() -> dict[str, Option]:
    return {k: takes(m)[k] for m in _METHODS.values() for k in m.sweep_keys}


def swept(sweep: Iterable[str]) -> list[Method]:
    """The methods a sweep over these keys exports settings of."""
    keys = set(sweep)
    return [m for m in _METHODS.values() if keys & set(m.sweep_keys)]


def parse_sweep(items: list[str] | tuple[str, ...] | Mapping[str, Any]) -> dict[str, tuple]:
    """["threshold=0.05,0.1", "r=8"] (or {key: values}) -> {"threshold": (0.05, 0.1), "r": (8,)}, each value
    checked by its option."""
    if isinstance(items, Mapping):
        items = [f"{k}={','.join(map(str, v if isinstance(v, (list, tuple)) else [v]))}" for k, v in items.items()]
    keys = sweep_options()
    out: dict[str, tuple] = {}
    for item in items:
        key, sep, values = str(item).partition("=")
        if not sep or key not in keys or not values.strip():
            raise VWTError(f"--sweep {item}: expected KEY=V1,V2,... with KEY one of {', '.join(keys)}")
        try:
            parsed = tuple(keys[key].parse(v.strip()) for v in values.split(",") if v.strip())
        except VWTError as e:
            raise VWTError(f"--sweep {item}: {e}") from None
        out[key] = out.get(key, ()) + parsed
    return out


def sweep_specs(sweep: Mapping[str, tuple], run: Spec) -> list[Spec]:
    """Every setting a sweep asks for, one spec each: per swept method, every combination of its sweep keys,
    the run's own value (or the default) standing in for a key not swept, the run's values for its other options."""
    out = []
    for method in swept(sweep):
        own = takes(method)
        base = {k: v for k, v in run.values.items() if k in own}
        axes = [sweep.get(k, (base.get(k, default(method, k)),)) for k in method.sweep_keys]
        for combo in itertools.product(*axes):
            try:
                out.append(spec(method.name, **{**base, **dict(zip(method.sweep_keys, combo))}))
            except VWTError as e:  # a value another method takes (a fraction r: hybrid, not tome)
                log.info("--sweep: %s leaves out %s", method.name, e)
    return list(dict.fromkeys(out))
