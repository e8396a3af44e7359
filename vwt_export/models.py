"""Model cards and model loading.

A card (one YAML file per alias in the top-level `models/` folder) maps a short alias such as `deit_s` to a
timm name. Any other timm VisionTransformer-family name works too; extra keyword arguments (`img_size`,
`num_classes`, `depth`, ...) pass straight through to `timm.create_model`.

Weights are one of:
  "pretrained"  timm's hub download or local cache (HF_HUB_OFFLINE=1 uses the cache only),
  a file path   .pth / .pt / .bin / .safetensors, a plain state dict or one wrapped as timm/DeiT trainers save it,
                in timm's naming or Hugging Face transformers' (ViT, DeiT, DINOv2; see hf_weights.py), or a
                folder written by transformers' save_pretrained,
  "random"      timm's seeded initialisation; results are then meaningless for accuracy and reports say so.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import importlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from . import hf_weights
from .errors import VWTError

log = logging.getLogger(__name__)

_CARD_DIRS = (
    Path(__file__).parent / "model_cards",  # inside a wheel
    Path(__file__).parent.parent / "models",  # a source checkout / editable install
)


@dataclass(frozen=True)
class ModelCard:
    alias: str
    timm_name: str
    description: str
    patch_size: int
    embed_dim: int
    num_prefix_tokens: int


@functools.cache
def model_cards() -> dict[str, ModelCard]:
    """All cards, keyed by alias."""
    for folder in _CARD_DIRS:
        if folder.is_dir():
            cards = {}
            for f in sorted(folder.glob("*.yaml")):
                card = ModelCard(**yaml.safe_load(f.read_text()))
                cards[card.alias] = card
            return cards
    return {}


def resolve_name(name: str) -> str:
    """Alias or timm name -> timm name; unknown names get a clear error with suggestions."""
    import timm

    cards = model_cards()
    if name in cards:
        return cards[name].timm_name
    base = name.split(".")[0]  # timm names may carry a pretrained tag: vit_small_patch16_224.augreg_in1k
    if timm.is_model(base):
        return name
    candidates = list(cards) + timm.list_models("*vit*") + timm.list_models("deit*")
    close = difflib.get_close_matches(name, candidates, n=3, cutoff=0.6)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise VWTError(
        f"unknown model '{name}'.{hint} Use an alias ({', '.join(cards)}) or a timm ViT name "
        "(python -c \"import timm; print(timm.list_models('vit_*'))\")"
    )


def load_model(
    name: str, weights: str | os.PathLike = "pretrained", device: str | torch.device = "cpu", **timm_kwargs: Any
) -> torch.nn.Module:
    """Create a timm ViT in eval mode with the requested weights.

    The returned model carries `vwt_weights` ("pretrained", "random" or the checkpoint path) and
    `vwt_name` (the name asked for) so that later stages can say what they measured.
    """
    import timm
    from timm.models.vision_transformer import VisionTransformer

    timm_name = resolve_name(name)
    weights = str(weights)
    try:
        if weights == "pretrained":
            model = _create_pretrained(timm_name, timm_kwargs)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)  # "random" is reproducible and leaves the caller's RNG alone
                model = timm.create_model(timm_name, pretrained=False, **timm_kwargs)
            if weights != "random":
                _load_checkpoint(model, Path(weights), timm_name)
    except TypeError as e:  # a bad pass-through kwarg
        raise VWTError(f"model '{name}' does not accept these arguments {timm_kwargs}: {e}") from None
    if not isinstance(model, VisionTransformer):
        raise VWTError(
            f"model '{name}' ({type(model).__name__}) is not a timm VisionTransformer; "
            "VWT needs a plain ViT/DeiT token sequence (patch_embed -> _pos_embed -> blocks)"
        )
    model.vwt_weights = weights
    model.vwt_name = name
    return model.eval().to(device)


def _hub_unreachable() -> str | None:
    """Why the Hugging Face hub cannot be reached, when its host name does not even resolve (no network);
    None when it may be reachable, or when a proxy resolves names for us."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None
    host = urlparse(constants.ENDPOINT).hostname or ""
    try:
        socket.getaddrinfo(host, 443)
    except OSError as e:
        return f"{host} does not resolve ({e.strerror or e})"
    return None


@contextlib.contextmanager
def _hub_cache_only():
    """huggingface_hub's offline mode for the duration of the block. Its switch is read once at import from
    HF_HUB_OFFLINE, so the constant is set directly (and restored): otherwise an unreachable hub is retried with
    back-off for about 50 seconds, with a warning per try, before the cache is consulted."""
    from huggingface_hub import constants

    saved = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = saved


def _create_pretrained(timm_name: str, timm_kwargs: dict) -> torch.nn.Module:
    import timm

    unreachable = _hub_unreachable()
    try:
        with _hub_cache_only() if unreachable else contextlib.nullcontext():
            return timm.create_model(timm_name, pretrained=True, **timm_kwargs)
    except TypeError:
        raise
    except Exception as e:  # hub, network and cache errors come in many types
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if unreachable:
            reason = f"not in the local cache, and the hub is unreachable: {unreachable}"
        raise VWTError(
            f"could not get pretrained weights for {timm_name} ({type(e).__name__}: {reason[:200]}). "
            "Without network access: download them once elsewhere into the Hugging Face cache "
            "(HF_HOME) and set HF_HUB_OFFLINE=1, or pass --weights PATH to a local checkpoint "
            "(or --weights random for a smoke test)"
        ) from None


_WRAPPER_KEYS = ("state_dict", "model", "module", "state_dict_ema", "model_ema")
_PRETRAINED_FILES = ("model.safetensors", "pytorch_model.bin")  # what transformers' save_pretrained writes


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read a checkpoint file (or a save_pretrained folder) into a flat state dict, unwrapping trainer formats."""
    if path.is_dir():
        path = next((path / n for n in _PRETRAINED_FILES if (path / n).is_file()), path)
    if not path.is_file():
        raise VWTError(f"{path}: no such checkpoint file; pass --weights pretrained, random or a "
                       ".pth/.bin/.safetensors file (or a save_pretrained folder holding one)")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd: Any = load_file(str(path))
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise VWTError(f"{path}: not a readable checkpoint ({type(e).__name__}: {str(e)[:160]})") from None
    while isinstance(sd, dict) and not _is_state_dict(sd):
        inner = next((sd[k] for k in _WRAPPER_KEYS if isinstance(sd.get(k), dict)), None)
        if inner is None:
            raise VWTError(f"{path}: holds no state dict (top-level keys: {sorted(sd)[:8]})")
        sd = inner
    if not isinstance(sd, dict) or not sd:
        raise VWTError(f"{path}: holds no state dict (found {type(sd).__name__})")
    prefix = "module."  # DistributedDataParallel
    if all(k.startswith(prefix) for k in sd):
        sd = {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def _is_state_dict(d: dict) -> bool:
    return bool(d) and all(isinstance(v, torch.Tensor) for v in d.values())


def _load_checkpoint(model: torch.nn.Module, path: Path, timm_name: str) -> None:
    sd = read_state_dict(path)
    found = hf_weights.naming(sd)
    log.info("%s: %s naming", path.name, found)
    if found != "timm":
        try:
            sd, notes = hf_weights.to_timm(sd, model)
        except VWTError as e:
            raise VWTError(f"{path}: {e}") from None
        for note in notes:
            log.info("%s: %s", path.name, note)
    errors = _try_load(model, sd)
    if errors:
        # Original (non-timm) DeiT/ViT checkpoints need timm's key conversion; try it before giving up.
        module = importlib.import_module(type(model).__module__)
        filter_fn = getattr(module, "checkpoint_filter_fn", None)
        if filter_fn is not None:
            try:
                if not _try_load(model, filter_fn(dict(sd), model)):
                    return
            except Exception:
                pass
        raise VWTError(f"{path}: does not fit {timm_name}: {errors}; is it a checkpoint for another model "
                       "or size (pass the same timm arguments, e.g. num_classes)?")


def _try_load(model: torch.nn.Module, sd: dict) -> str:
    """Load strictly; return '' on success, else a one-line description of the mismatch."""
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shape = [k for k in own if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shape:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
        if shape:
            k = shape[0]
            parts.append(f"{len(shape)} shape mismatches (e.g. {k}: {tuple(sd[k].shape)} vs {tuple(own[k].shape)})")
        return ", ".join(parts)
    model.load_state_dict(sd, strict=True)
    return ""


# ----------------------------------------------------------------------------------------------------------
# Geometry and preprocessing


def patch_size(model: torch.nn.Module) -> int:
    ph, pw = model.patch_embed.patch_size
    if ph != pw:
        raise VWTError(f"non-square patches {ph}x{pw} are not supported")
    return ph


def data_config(model: torch.nn.Module) -> dict:
    """timm's preprocessing config (input size, interpolation, crop, mean, std) for this model."""
    from timm.data import resolve_data_config

    cfg = resolve_data_config({}, model=model)
    # timm's pretrained config keeps the checkpoint's resolution; a model built with another img_size wants its own.
    h, w = model.patch_embed.img_size
    cfg["input_size"] = (cfg["input_size"][0], h, w)
    return cfg


def transform(model: torch.nn.Module):
    """The eval transform (PIL image -> normalised tensor) timm uses for this model."""
    from timm.data import create_transform

    return create_transform(**data_config(model), is_training=False)


# ----------------------------------------------------------------------------------------------------------
# The token sequence: the only place that knows the order of timm's embedding modules


def patch_tokens(model: torch.nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """The patch-embedding output for float32 (or the model's dtype) pixels, in the model's dtype."""
    dtype = model.patch_embed.proj.weight.dtype
    return model.patch_embed(pixels if pixels.dtype == dtype else pixels.to(dtype))


def embed_tokens(model: torch.nn.Module, patches: torch.Tensor) -> torch.Tensor:
    """Patch tokens -> the sequence the first block reads: prefix tokens and positional embedding added
    (timm's _pos_embed), then patch_drop and norm_pre, as timm's forward_features does."""
    return model.norm_pre(model.patch_drop(model._pos_embed(patches)))


def is_headless(model: torch.nn.Module) -> bool:
    """A model without a classifier head (num_classes=0, e.g. a DINOv2 backbone) outputs features."""
    return getattr(model, "num_classes", 1) == 0


def sequence_length(model: torch.nn.Module) -> int:
    """P + N: the tokens the first block sees without compression."""
    return model.num_prefix_tokens + model.patch_embed.num_patches
