"""What every plot of a run says on top: which model, which weights, which images, and, for random weights, that
the plot checks the pipeline, not quality. One heading for report.py's plots, merges.png and the sweep's
tradeoff.png, so that a plot read on its own says what it shows."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

RANDOM_CAVEAT = "random weights: pipeline check, not quality"


@dataclass(frozen=True)
class Heading:
    model: str  # the name the run was given (deit_s, a timm name)
    weights: str  # pretrained, random, or a checkpoint path
    images: int  # check images the figures come from
    folder: str  # where they came from

    @classmethod
    def of_report(cls, report: dict) -> "Heading":
        return cls(report["model"]["name"], report["model"]["weights"], report["images"]["count"],
                   report["images"]["folder"])

    @classmethod
    def of_run(cls, run) -> "Heading":
        cfg = run.cfg
        return cls(cfg.model.name, cfg.model.weights, len(run.images.files), str(cfg.data.check_folder))

    @property
    def random_weights(self) -> bool:
        return self.weights == "random"

    def caption(self) -> str:
        weights = self.weights if self.weights in ("pretrained", "random") else Path(self.weights).name
        images = f"{self.images} image{'' if self.images == 1 else 's'}"
        return f"{self.model}, {weights} weights, {images} from {Path(self.folder).name or self.folder}"

    def lines(self, what: str) -> list[str]:
        return [what, self.caption()] + ([RANDOM_CAVEAT] if self.random_weights else [])

    def apply(self, fig, what: str) -> None:
        """`what` (the plot's subject), the caption and, where the weights are random, the caveat, as the figure's
        title (in red when random). Call before fig.tight_layout(), which makes room for it."""
        fig.suptitle("\n".join(self.lines(what)), fontsize=9, color="firebrick" if self.random_weights else "black")
