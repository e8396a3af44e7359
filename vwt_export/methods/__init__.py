"""Compression methods, one module each, in a registry (registry.py says how to add one)."""

from . import none, intra, inter, tome, hybrid  # noqa: F401  registers the built-in methods, in --mode's order
from .options import Option
from .registry import (COMMON, Method, Spec, all_options, compress, default, get, mode_defaults, names, parse_sweep,
                       register, spec, sweep_specs, swept, takes)

__all__ = ["COMMON", "Method", "Option", "Spec", "all_options", "compress", "default", "get", "mode_defaults", "names",
           "parse_sweep", "register", "spec", "sweep_specs", "swept", "takes"]
