"""The runner interface every backend implements, after Polygraphy's runners: one loaded model, the same methods
whatever runs it (backends/onnxruntime.py: OrtRunner; backends/tensorrt.py: EngineRunner; runtime.py:
LengthAwareRunner, the two stages of a VWT graph).

    runner.infer(pixels)          the model's output: logits, or features for a headless model
    runner.infer_tokens(pixels)   (output, real tokens per image), the tokens None where the runner cannot count them
    runner.metadata               {"kind": ..., "file": ...}
    runner(pixels)                runner.infer(pixels)
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np


class Runner:
    kind: ClassVar[str] = ""  # report.json's backend of a variant: onnxruntime-cpu, tensorrt, length-aware

    def __init__(self, name: str):
        self.name = name  # the file it runs

    def infer(self, *inputs: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def infer_tokens(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """The output and the real tokens per image (prefix tokens included), where the runner can count them."""
        return self.infer(pixels), None

    @property
    def metadata(self) -> dict[str, Any]:
        return {"kind": self.kind, "file": self.name}

    def __call__(self, *inputs: np.ndarray) -> np.ndarray:
        return self.infer(*inputs)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"
