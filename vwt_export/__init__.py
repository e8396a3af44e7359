"""vwt-export: compress timm Vision Transformers with the Visual Word Tokenizer and ship them.

    import vwt_export as vx
    result = vx.export("deit_s", mode="inter", calib="images/", val="val/")   # the whole job, as the CLI does
    result.graph("vwt"), result.report["variants"]

    # or the pieces:
    model = vx.load_model("deit_s", weights="random")
    vocab = vx.learn_vocabulary(model, "images/", size=1000)
    cmodel = vx.compress(model, mode="inter", vocab=vocab, threshold=0.1)   # any of vx.methods.names()
    logits = cmodel(x); cmodel.last_token_counts
"""

from . import methods, runtime
from .config import ExportConfig
from .errors import VWTError
from .models import load_model, model_cards
from .check.context import ExportResult
from .pipeline import export
from .methods import compress
from .vwt import CompressedViT, Vocabulary, learn_vocabulary
from .version import __version__

__all__ = ["CompressedViT", "ExportConfig", "ExportResult", "VWTError", "export", "Vocabulary", "compress", "learn_vocabulary", "load_model", "methods", "model_cards", "runtime",
           "__version__"]
