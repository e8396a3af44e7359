"""Triton model configurations (config.pbtxt) in protobuf text format: write, parse, check.

    text = dumps(config)              # a dict -> protobuf text; enum values are Enum("TYPE_FP32")
    config = loads(text)              # protobuf text -> the same dict (schema-checked: unknown fields are errors)
    check_model_config(config)        # Triton's own rules for the fields we write (one clear VWTError line)

A Python dict stands for a message, a list for a repeated field (written `field [ ... ]`, which protobuf text
accepts for scalars and messages alike), a str for a quoted string, an Enum for a bare enum identifier. Maps
(`parameters`, an ensemble step's `input_map`) are repeated {key, value} messages, as protobuf writes them.

The schema is the part of Triton's model_config.proto that vwt-export writes (plus a few neighbours a user may add
by hand). Parsing against it means a typo in a field name is caught here, with a line number, rather than by the
server at load time. It is deliberately not the whole proto: an unknown field is reported as unknown to *this*
checker, and the message says so.
"""

from __future__ import annotations

import json
import re
from typing import Any

from ..errors import VWTError


class Enum(str):
    """An enum value, written bare (TYPE_FP32, KIND_CPU), unlike a string, which is quoted."""

    def __repr__(self) -> str:
        return f"Enum({str.__repr__(self)})"


# field -> (type, repeated). Types: "string", "int", "bool", "float", "enum:<Name>" or a message name.
SCHEMA: dict[str, dict[str, tuple[str, bool]]] = {
    "ModelConfig": {
        "name": ("string", False), "platform": ("string", False), "backend": ("string", False),
        "runtime": ("string", False), "max_batch_size": ("int", False), "input": ("ModelInput", True),
        "output": ("ModelOutput", True), "instance_group": ("ModelInstanceGroup", True),
        "dynamic_batching": ("DynamicBatching", False), "ensemble_scheduling": ("EnsembleScheduling", False),
        "parameters": ("ParameterEntry", True), "model_operations": ("ModelOperations", False),
        "default_model_filename": ("string", False), "version_policy": ("VersionPolicy", False),
        "optimization": ("ModelOptimizationPolicy", False),
    },
    "ModelInput": {
        "name": ("string", False), "data_type": ("enum:DataType", False), "dims": ("int", True),
        "format": ("enum:Format", False), "optional": ("bool", False), "allow_ragged_batch": ("bool", False),
    },
    "ModelOutput": {"name": ("string", False), "data_type": ("enum:DataType", False), "dims": ("int", True),
                    "label_filename": ("string", False)},
    "ModelInstanceGroup": {"name": ("string", False), "kind": ("enum:Kind", False), "count": ("int", False),
                           "gpus": ("int", True)},
    "DynamicBatching": {"preferred_batch_size": ("int", True), "max_queue_delay_microseconds": ("int", False),
                        "preserve_ordering": ("bool", False)},
    "EnsembleScheduling": {"step": ("EnsembleStep", True)},
    "EnsembleStep": {"model_name": ("string", False), "model_version": ("int", False),
                     "input_map": ("StringMapEntry", True), "output_map": ("StringMapEntry", True)},
    "StringMapEntry": {"key": ("string", False), "value": ("string", False)},
    "ParameterEntry": {"key": ("string", False), "value": ("ModelParameter", False)},
    "ModelParameter": {"string_value": ("string", False)},
    "ModelOperations": {"op_library_filename": ("string", True)},
    "VersionPolicy": {"latest": ("VersionPolicyLatest", False), "all": ("Empty", False),
                      "specific": ("VersionPolicySpecific", False)},
    "VersionPolicyLatest": {"num_versions": ("int", False)},
    "VersionPolicySpecific": {"versions": ("int", True)},
    "Empty": {},
    "ModelOptimizationPolicy": {"execution_accelerators": ("ExecutionAccelerators", False),
                                "input_pinned_memory": ("PinnedMemoryBuffer", False),
                                "output_pinned_memory": ("PinnedMemoryBuffer", False)},
    "ExecutionAccelerators": {"gpu_execution_accelerator": ("Accelerator", True),
                              "cpu_execution_accelerator": ("Accelerator", True)},
    "Accelerator": {"name": ("string", False), "parameters": ("StringMapEntry", True)},
    "PinnedMemoryBuffer": {"enable": ("bool", False)},
}
ENUMS = {
    "DataType": {"TYPE_INVALID", "TYPE_BOOL", "TYPE_UINT8", "TYPE_UINT16", "TYPE_UINT32", "TYPE_UINT64", "TYPE_INT8",
                 "TYPE_INT16", "TYPE_INT32", "TYPE_INT64", "TYPE_FP16", "TYPE_FP32", "TYPE_FP64", "TYPE_STRING",
                 "TYPE_BF16"},
    "Format": {"FORMAT_NONE", "FORMAT_NHWC", "FORMAT_NCHW"},
    "Kind": {"KIND_AUTO", "KIND_GPU", "KIND_CPU", "KIND_MODEL"},
}
BACKENDS = {"onnxruntime", "tensorrt", "python", "pytorch", "tensorflow", "openvino", "fil", "dali"}


# ---------------------------------------------------------------------------------------------------- writing

def _scalar(value: Any) -> str:
    if isinstance(value, Enum):
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # protobuf text accepts C-style escapes; JSON's \" \\ \n \t \uXXXX are among them
    raise VWTError(f"cannot write a {type(value).__name__} ({value!r}) in protobuf text")


def _lines(message: dict, indent: int) -> list[str]:
    pad, out = "  " * indent, []
    for key, value in message.items():
        if isinstance(value, dict):
            out += [f"{pad}{key} {{", *_lines(value, indent + 1), f"{pad}}}"]
        elif isinstance(value, (list, tuple)):
            if value and all(isinstance(v, dict) for v in value):
                out.append(f"{pad}{key} [")
                for i, item in enumerate(value):
                    out += [f"{pad}  {{", *_lines(item, indent + 2), f"{pad}  }}{',' if i < len(value) - 1 else ''}"]
                out.append(f"{pad}]")
            else:
                out.append(f"{pad}{key}: [ {', '.join(_scalar(v) for v in value)} ]")
        else:
            out.append(f"{pad}{key}: {_scalar(value)}")
    return out


def dumps(config: dict, header: str = "") -> str:
    """Protobuf text for `config`; `header` becomes leading '#' comment lines (why the values are what they are)."""
    comments = [f"# {line}".rstrip() for line in header.splitlines()] if header else []
    return "\n".join(comments + _lines(config, 0)) + "\n"


# ---------------------------------------------------------------------------------------------------- parsing

_TOKEN = re.compile(r"""
    (?P<space>[ \t\r\n]+|\#[^\n]*)
  | (?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
  | (?P<number>[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?[fF]?(?![A-Za-z_0-9]))
  | (?P<ident>[A-Za-z_][A-Za-z_0-9]*)
  | (?P<punct>[{}\[\]:,;<>])
""", re.VERBOSE)
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "'": "'", "\\": "\\", "a": "\a", "b": "\b", "f": "\f",
            "v": "\v", "?": "?"}


def _unescape(body: str, line: int, where: str) -> str:
    out, i = [], 0
    while i < len(body):
        c = body[i]
        if c != "\\":
            out.append(c)
            i += 1
            continue
        nxt = body[i + 1]
        if nxt in _ESCAPES:
            out.append(_ESCAPES[nxt])
            i += 2
        elif nxt in "xX" and re.match(r"[0-9a-fA-F]{1,2}", body[i + 2:]):
            digits = re.match(r"[0-9a-fA-F]{1,2}", body[i + 2:]).group()
            out.append(chr(int(digits, 16)))
            i += 2 + len(digits)
        elif nxt == "u" and re.match(r"[0-9a-fA-F]{4}", body[i + 2:]):
            out.append(chr(int(body[i + 2:i + 6], 16)))
            i += 6
        elif nxt in "01234567":
            digits = re.match(r"[0-7]{1,3}", body[i + 1:]).group()
            out.append(chr(int(digits, 8)))
            i += 1 + len(digits)
        else:
            raise VWTError(f"{where} line {line}: unknown escape \\{nxt} in a string")
    return "".join(out)


def _tokens(text: str, where: str) -> list[tuple[str, str, int]]:
    out, pos, line = [], 0, 1
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m:
            raise VWTError(f"{where} line {line}: unexpected character {text[pos]!r}")
        kind = m.lastgroup
        if kind != "space":
            out.append((kind, m.group(), line))
        line += m.group().count("\n")
        pos = m.end()
    return out


class _Parser:
    def __init__(self, text: str, where: str):
        self.toks, self.i, self.where = _tokens(text, where), 0, where

    def _fail(self, msg: str):
        line = self.toks[min(self.i, len(self.toks) - 1)][2] if self.toks else 1
        raise VWTError(f"{self.where} line {line}: {msg}")

    def _peek(self) -> tuple[str, str, int] | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def _take(self, value: str | None = None, kind: str | None = None) -> str:
        tok = self._peek()
        if tok is None:
            self._fail(f"expected {value or kind}, found the end of the text")
        if (value is not None and tok[1] != value) or (kind is not None and tok[0] != kind):
            self._fail(f"expected {value or kind}, found {tok[1]!r}")
        self.i += 1
        return tok[1]

    def _at(self, value: str) -> bool:
        tok = self._peek()
        return tok is not None and tok[0] == "punct" and tok[1] == value

    def message(self, mtype: str, close: str | None) -> dict:
        fields = SCHEMA[mtype]
        out: dict[str, Any] = {}
        while True:
            if self._peek() is None:
                if close is None:
                    return out
                self._fail(f"missing '{close}' at the end of a {mtype}")
            if close is not None and self._at(close):
                self.i += 1
                return out
            key = self._take(kind="ident")
            if key not in fields:
                self._fail(f"unknown field '{key}' in {mtype} (known here: {', '.join(sorted(fields)) or 'none'})")
            ftype, repeated = fields[key]
            is_message = ftype in SCHEMA
            colon = self._at(":")
            if colon:
                self.i += 1
            elif not is_message:
                self._fail(f"expected ':' after '{key}'")
            if self._at("["):
                self.i += 1
                values = []
                while not self._at("]"):
                    values.append(self._value(ftype, key))
                    if self._at(","):
                        self.i += 1
                    elif not self._at("]"):
                        self._fail(f"expected ',' or ']' in the list of '{key}'")
                self.i += 1
                if not repeated:
                    self._fail(f"'{key}' is not a repeated field: it takes one value, not a list")
            else:
                values = [self._value(ftype, key)]
            if repeated:
                out.setdefault(key, []).extend(values)
            elif key in out:
                self._fail(f"'{key}' is given twice in {mtype}")
            else:
                out[key] = values[0]
            if self._at(",") or self._at(";"):
                self.i += 1

    def _value(self, ftype: str, key: str) -> Any:
        if ftype in SCHEMA:
            if self._at("{"):
                self.i += 1
                return self.message(ftype, "}")
            if self._at("<"):
                self.i += 1
                return self.message(ftype, ">")
            self._fail(f"expected '{{' to open the {ftype} '{key}'")
        tok = self._peek()
        if tok is None:
            self._fail(f"expected a value for '{key}'")
        kind, text, line = tok
        self.i += 1
        if ftype == "string":
            if kind != "string":
                self._fail(f"'{key}' takes a quoted string, found {text!r}")
            value = _unescape(text[1:-1], line, self.where)
            while self._peek() and self._peek()[0] == "string":  # adjacent literals concatenate, as in protobuf
                value += _unescape(self._take(kind="string")[1:-1], line, self.where)
            return value
        if ftype == "int":
            if kind != "number" or not re.fullmatch(r"[-+]?\d+", text):
                self._fail(f"'{key}' takes an integer, found {text!r}")
            return int(text)
        if ftype == "float":
            if kind != "number":
                self._fail(f"'{key}' takes a number, found {text!r}")
            return float(text.rstrip("fF"))
        if ftype == "bool":
            if text in ("true", "True", "t", "1"):
                return True
            if text in ("false", "False", "f", "0"):
                return False
            self._fail(f"'{key}' takes true or false, found {text!r}")
        if ftype.startswith("enum:"):
            allowed = ENUMS[ftype[5:]]
            if kind != "ident" or text not in allowed:
                self._fail(f"'{key}' takes one of {', '.join(sorted(allowed))}, found {text!r}")
            return Enum(text)
        raise AssertionError(ftype)


def loads(text: str, where: str = "config.pbtxt") -> dict:
    """Parse a Triton model configuration; a VWTError naming `where` and the line for malformed text."""
    return _Parser(text, where).message("ModelConfig", None)


# ---------------------------------------------------------------------------------------------------- checking

def _check_tensors(config: dict, key: str, where: str, batching: bool) -> set[str]:
    names: set[str] = set()
    for t in config.get(key, []):
        name = t.get("name")
        if not name:
            raise VWTError(f"{where}: an {key} has no name")
        if name in names:
            raise VWTError(f"{where}: {key} '{name}' is declared twice")
        names.add(name)
        if "data_type" not in t or t["data_type"] == "TYPE_INVALID":
            raise VWTError(f"{where}: {key} '{name}' has no data_type")
        dims = t.get("dims")
        if not dims and not batching:
            raise VWTError(f"{where}: {key} '{name}' has no dims (without batching a tensor needs at least one)")
        if any(d == 0 or d < -1 for d in dims or []):
            raise VWTError(f"{where}: {key} '{name}' dims {dims}: each is a size >= 1 or -1 (variable)")
    return names


def check_model_config(config: dict, where: str = "config.pbtxt", folder_name: str | None = None) -> None:
    """Triton's rules for a model configuration, as far as they can be checked without the model file."""
    name = config.get("name")
    if folder_name is not None and name not in (None, folder_name):
        raise VWTError(f"{where}: name '{name}' differs from its folder '{folder_name}' (Triton refuses that)")
    platform, backend = config.get("platform"), config.get("backend")
    if bool(platform) == bool(backend):
        raise VWTError(f"{where}: give exactly one of backend (onnxruntime, tensorrt, python, ...) or platform")
    if backend and backend not in BACKENDS:
        raise VWTError(f"{where}: unknown backend '{backend}' (known: {', '.join(sorted(BACKENDS))})")
    mbs = config.get("max_batch_size", 0)
    if mbs < 0:
        raise VWTError(f"{where}: max_batch_size {mbs} < 0")
    inputs = _check_tensors(config, "input", where, mbs > 0)
    outputs = _check_tensors(config, "output", where, mbs > 0)
    if not inputs or not outputs:
        raise VWTError(f"{where}: a model needs at least one input and one output")
    dyn = config.get("dynamic_batching")
    if dyn is not None:
        if mbs == 0:
            raise VWTError(f"{where}: dynamic_batching needs max_batch_size > 0")
        bad = [b for b in dyn.get("preferred_batch_size", []) if not 1 <= b <= mbs]
        if bad:
            raise VWTError(f"{where}: preferred_batch_size {bad} outside 1..max_batch_size ({mbs})")
        if dyn.get("max_queue_delay_microseconds", 0) < 0:
            raise VWTError(f"{where}: max_queue_delay_microseconds must be >= 0")
    for group in config.get("instance_group", []):
        if group.get("count", 1) < 1:
            raise VWTError(f"{where}: instance_group count {group.get('count')} < 1")
        if group.get("kind") == "KIND_CPU" and group.get("gpus"):
            raise VWTError(f"{where}: a KIND_CPU instance_group cannot list gpus")
    for lib in config.get("model_operations", {}).get("op_library_filename", []):
        if not lib:
            raise VWTError(f"{where}: an empty op_library_filename")
    if platform == "ensemble":
        steps = config.get("ensemble_scheduling", {}).get("step", [])
        if not steps:
            raise VWTError(f"{where}: an ensemble needs ensemble_scheduling with at least one step")
        produced = set(inputs)
        for step in steps:
            if not step.get("model_name"):
                raise VWTError(f"{where}: an ensemble step has no model_name")
            for entry in step.get("input_map", []):
                if entry.get("value") not in produced:
                    raise VWTError(f"{where}: ensemble step '{step['model_name']}' reads '{entry.get('value')}', "
                                   "which no earlier step or ensemble input provides")
            produced |= {e.get("value") for e in step.get("output_map", [])}
        missing = outputs - produced
        if missing:
            raise VWTError(f"{where}: ensemble outputs {sorted(missing)} are produced by no step")
    elif "ensemble_scheduling" in config:
        raise VWTError(f"{where}: ensemble_scheduling belongs to platform \"ensemble\" only")


def parameter(key: str, value: str) -> dict:
    """One `parameters` map entry (Triton passes them to the backend as strings)."""
    return {"key": key, "value": {"string_value": str(value)}}


def parameters_of(config: dict) -> dict[str, str]:
    return {p["key"]: p.get("value", {}).get("string_value", "") for p in config.get("parameters", [])}
