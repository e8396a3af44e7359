"""A compression option, declared once by the method that owns it: its default, its check and its help line.

    THRESHOLD = Option("threshold", 0.1, "inter: largest cosine distance at which a patch matches a word",
                       bounds=(0.0, 2.0), why="cosine distance lies in [0, 2]")
    THRESHOLD.parse("0.2") -> 0.2;  THRESHOLD.parse(2.5) -> VWTError("threshold=2.5 is out of range: ...")

`parse` is the one check of a value, whoever gives it: the configuration (so the CLI and vx.export),
vx.compress, and --sweep's values (text). The CLI builds its flag from the same declaration (cli.py), so the
range of a value, its default and its help are written here and nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from ..errors import VWTError

_KIND_WORDS = {float: "a number", int: "a whole number", bool: "true or false", str: "text"}


@dataclass(frozen=True)
class Option:
    name: str  # the keyword argument; the command line's flag is --name with dashes
    default: Any
    help: str
    kind: type = float  # float, int, bool or str: text (from --sweep) is converted to it
    choices: tuple[str, ...] = ()  # allowed values (None too when the default is None)
    bounds: tuple[float | None, float | None] = (None, None)  # inclusive
    why: str = ""  # what the bounds mean, for the out-of-range message
    parser: Callable[[Any], Any] | None = None  # a check of its own, replacing the above (keep: count or fraction)

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def parse(self, value: Any) -> Any:
        """The value checked and in its kind, or a VWTError naming the option and what it takes."""
        if self.parser is not None:
            return self.parser(value)
        if value is None and self.default is None:
            return None
        if self.choices:
            if value not in self.choices:
                raise VWTError(f"unknown {self.name} {value!r} (use one of {', '.join(self.choices)})")
            return value
        if isinstance(value, str) and self.kind is not str:
            value = self._from_text(value)
        if self.kind is bool:
            if not isinstance(value, bool):
                raise VWTError(f"{self.name}={value!r}: expected true or false")
            return value
        number = int if self.kind is int else (int, float)
        if isinstance(value, bool) or not isinstance(value, number):
            raise VWTError(f"{self.name}={value!r}: expected {_KIND_WORDS[self.kind]}")
        lo, hi = self.bounds
        if not ((lo is None or value >= lo) and (hi is None or value <= hi)):  # NaN fails both
            raise VWTError(f"{self.name}={value!r} is out of range: {self.why}")
        return self.kind(value)

    def _from_text(self, text: str) -> Any:
        if self.kind is bool and text.lower() in ("true", "false"):
            return text.lower() == "true"
        try:
            return self.kind(text)
        except ValueError:
            raise VWTError(f"{self.name}={text!r}: expected {_KIND_WORDS[self.kind]}") from None


__all__ = ["Option"]
