"""python -m vwt_export.serving OUT/triton: the `serve` command, usable before `vwt-export serve` is wired."""

from .cli import serve

serve(prog_name="vwt-export serve")
