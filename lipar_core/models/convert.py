"""Weight-name conversion: original Wan / Self-Forcing checkpoints → diffusers ``WanTransformer3DModel``.

The Self-Forcing generator checkpoint (``checkpoints/self_forcing_dmd.pt``, LIPAR.md §2.2 and §9) is a
pickled dict ``{"generator": state_dict, "generator_ema": state_dict, ...}``; each state dict holds the
original Wan2.1 parameter names behind a ``model.`` prefix (the Self-Forcing diffusion wrapper). The
renaming itself is done by diffusers' :func:`convert_wan_transformer_to_diffusers`; this module adds what
it lacks for our use: stripping wrapper prefixes (``model.``, ``_orig_mod.``, ``module.``,
``_fsdp_wrapped_module.``, ...), detecting checkpoints that already use diffusers names, strict validation
of every key of the text-to-video architecture (unknown keys raise), and the checkpoint loader.

Name mapping (N = block index):

======================================  ==============================================
original (Wan / Self-Forcing)           diffusers ``WanTransformer3DModel``
======================================  ==============================================
``patch_embedding.{weight,bias}``       ``patch_embedding.{weight,bias}``
``text_embedding.{0,2}.*``              ``condition_embedder.text_embedder.linear_{1,2}.*``
``time_embedding.{0,2}.*``              ``condition_embedder.time_embedder.linear_{1,2}.*``
``time_projection.1.*``                 ``condition_embedder.time_proj.*``
``blocks.N.self_attn.{q,k,v,o}.*``      ``blocks.N.attn1.to_{q,k,v,out.0}.*``
``blocks.N.self_attn.norm_{q,k}.*``     ``blocks.N.attn1.norm_{q,k}.*``
``blocks.N.cross_attn.*``               ``blocks.N.attn2.*`` (same sub-names as above)
``blocks.N.norm3.*`` (cross-attn LN)    ``blocks.N.norm2.*``
``blocks.N.ffn.{0,2}.*``                ``blocks.N.ffn.net.{0.proj,2}.*``
``blocks.N.modulation`` [1,6,dim]       ``blocks.N.scale_shift_table`` [1,6,dim]
``head.head.*``                         ``proj_out.*``
``head.modulation`` [1,2,dim]           ``scale_shift_table`` [1,2,dim]
======================================  ==============================================

Tensor values and shapes are unchanged: both layouts order the modulation chunks (shift, scale, gate, ...)
and the unpatchify channels (patch first, channel last) the same way.
"""

from __future__ import annotations

import inspect
import logging
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

logger = logging.getLogger(__name__)

__all__ = [
    "WRAPPER_PREFIXES",
    "convert_wan_to_diffusers",
    "detect_wan_key_format",
    "load_self_forcing_generator",
    "original_wan_key_shapes",
    "strip_wrapper_prefixes",
]

#: Leading prefixes removed from every key (repeatedly): training wrappers and the Self-Forcing
#: ``WanDiffusionWrapper.model`` attribute.
WRAPPER_PREFIXES: tuple[str, ...] = (
    "model.",
    "module.",
    "_orig_mod.",
    "_fsdp_wrapped_module.",
    "diffusion_model.",
)
#: Wrapper segments removed wherever they appear (torch.compile, FSDP and activation checkpointing).
_WRAPPER_SEGMENTS = frozenset({"_orig_mod", "_fsdp_wrapped_module", "_checkpoint_wrapped_module"})

_ORIGINAL_PATTERNS = [
    re.compile(p)
    for p in (
        r"patch_embedding\.(weight|bias)",
        r"(text|time)_embedding\.[02]\.(weight|bias)",
        r"time_projection\.1\.(weight|bias)",
        r"blocks\.\d+\.(self|cross)_attn\.[qkvo]\.(weight|bias)",
        r"blocks\.\d+\.(self|cross)_attn\.norm_[qk]\.weight",
        r"blocks\.\d+\.norm3\.(weight|bias)",
        r"blocks\.\d+\.ffn\.[02]\.(weight|bias)",
        r"blocks\.\d+\.modulation",
        r"head\.head\.(weight|bias)",
        r"head\.modulation",
    )
]
_DIFFUSERS_PATTERNS = [
    re.compile(p)
    for p in (
        r"patch_embedding\.(weight|bias)",
        r"condition_embedder\.(text|time)_embedder\.linear_[12]\.(weight|bias)",
        r"condition_embedder\.time_proj\.(weight|bias)",
        r"blocks\.\d+\.attn[12]\.to_(q|k|v|out\.0)\.(weight|bias)",
        r"blocks\.\d+\.attn[12]\.norm_[qk]\.weight",
        r"blocks\.\d+\.norm2\.(weight|bias)",
        r"blocks\.\d+\.ffn\.net\.(0\.proj|2)\.(weight|bias)",
        r"blocks\.\d+\.scale_shift_table",
        r"proj_out\.(weight|bias)",
        r"scale_shift_table",
    )
]
# Markers that only occur in one of the two layouts.
_ORIGINAL_MARKER = re.compile(
    r"^(text_embedding|time_embedding|time_projection|head\.)|\.(self_attn|cross_attn|norm3|modulation)\b|\.ffn\.[02]\."
)
_DIFFUSERS_MARKER = re.compile(
    r"^(condition_embedder|proj_out|scale_shift_table)|\.(attn[12]|scale_shift_table)\b|\.ffn\.net\."
)


def strip_wrapper_prefixes(key: str) -> str:
    """``key`` without training-wrapper prefixes/segments (``model.``, ``_orig_mod.``, ``module.``, FSDP)."""
    parts = [p for p in key.split(".") if p not in _WRAPPER_SEGMENTS]
    stripped = ".".join(parts)
    changed = True
    while changed:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if stripped.startswith(prefix):
                stripped = stripped[len(prefix) :]
                changed = True
    return stripped


def _unknown(keys: list[str], patterns: list[re.Pattern[str]]) -> list[str]:
    return [k for k in keys if not any(p.fullmatch(k) for p in patterns)]


def _raise_unknown(unknown: list[str], layout: str) -> None:
    shown = ", ".join(repr(k) for k in unknown[:10])
    more = f" (and {len(unknown) - 10} more)" if len(unknown) > 10 else ""
    raise ValueError(
        f"{len(unknown)} key(s) are not part of the Wan2.1 text-to-video transformer in the {layout} layout: "
        f"{shown}{more}"
    )


def detect_wan_key_format(keys: list[str]) -> str:
    """``"original"`` (Wan / Self-Forcing names) or ``"diffusers"``, from prefix-stripped keys.

    Raises:
        ValueError: the keys mix both layouts.
    """
    has_original = any(_ORIGINAL_MARKER.search(k) for k in keys)
    has_diffusers = any(_DIFFUSERS_MARKER.search(k) for k in keys)
    if has_original and has_diffusers:
        orig = [k for k in keys if _ORIGINAL_MARKER.search(k)][:3]
        diff = [k for k in keys if _DIFFUSERS_MARKER.search(k)][:3]
        raise ValueError(
            f"the state dict mixes original Wan names (e.g. {orig}) and diffusers names (e.g. {diff})"
        )
    return "diffusers" if has_diffusers else "original"


def convert_wan_to_diffusers(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename a Wan2.1 T2V transformer state dict to diffusers ``WanTransformer3DModel`` names.

    Accepts the original Wan / Self-Forcing names (optionally behind ``model.``, ``_orig_mod.``,
    ``module.``, ``_fsdp_wrapped_module.`` wrappers) or names that are already in the diffusers layout
    (passed through, only the wrappers are removed). Tensors are not copied or changed; the input mapping is
    not modified.

    Args:
        state_dict: parameter name → tensor, e.g. ``blocks.0.self_attn.q.weight`` [dim, dim].

    Returns:
        A new dict with diffusers names, e.g. ``blocks.0.attn1.to_q.weight`` [dim, dim].

    Raises:
        ValueError: unknown keys (the first 10 are listed), mixed layouts, or two keys mapping to one name.
    """
    stripped: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        new_key = strip_wrapper_prefixes(key)
        if new_key in stripped:
            raise ValueError(
                f"two keys map to '{new_key}' after removing wrapper prefixes (one of them: '{key}')"
            )
        stripped[new_key] = value
    keys = list(stripped)
    layout = detect_wan_key_format(keys)
    if layout == "diffusers":
        unknown = _unknown(keys, _DIFFUSERS_PATTERNS)
        if unknown:
            _raise_unknown(unknown, "diffusers")
        return stripped

    unknown = _unknown(keys, _ORIGINAL_PATTERNS)
    if unknown:
        _raise_unknown(unknown, "original Wan")

    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    # diffusers pops from the dict it is given: hand it a shallow copy.
    converted: dict[str, Tensor] = dict(convert_wan_transformer_to_diffusers(dict(stripped)))
    if len(converted) != len(stripped):
        raise ValueError(f"conversion changed the number of keys ({len(stripped)} → {len(converted)})")
    bad = _unknown(list(converted), _DIFFUSERS_PATTERNS)
    if bad:  # a diffusers-side change in the renaming rules; never expected
        raise ValueError(f"diffusers' Wan conversion produced unexpected names: {bad[:10]}")
    return converted


def _torch_load(path: Path) -> Any:
    """``torch.load`` on CPU with ``weights_only``; memory-mapped when the file format allows it."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as err:
        # mmap needs the zip format (torch >= 1.6 default); older files load without it.
        logger.info("mmap load of %s failed (%s); loading without mmap", path, str(err).splitlines()[0])
        return torch.load(path, map_location="cpu", weights_only=True)


def load_self_forcing_generator(path: Path, key: str = "generator_ema") -> dict[str, Tensor]:
    """Load a Self-Forcing generator checkpoint and return diffusers-named weights.

    Args:
        path: the ``.pt`` file (a dict with ``generator`` / ``generator_ema`` state dicts, or a bare state
            dict) or a ``.safetensors`` file (a bare state dict).
        key: which state dict to take from the top-level dict (``"generator_ema"`` is the EMA generator
            LIPAR uses; ``"generator"`` the raw one). Ignored for a bare state dict.

    Returns:
        Diffusers ``WanTransformer3DModel`` names → CPU tensors (memory-mapped when possible, dtype as
        stored), ready for ``load_state_dict(strict=True)``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        KeyError: ``key`` is not in the checkpoint (the message lists the available top-level keys).
        ValueError: the content is not a state dict, or has unknown keys.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Self-Forcing generator checkpoint not found: {path}")
    obj: Any
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        obj = load_file(str(path), device="cpu")
    else:
        try:
            obj = _torch_load(path)
        except Exception as err:  # pickle.UnpicklingError and friends: say which file and why
            raise ValueError(
                f"cannot load {path} as a weights-only torch checkpoint: {type(err).__name__}: "
                f"{str(err).splitlines()[0] if str(err) else ''}"
            ) from err
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path} holds a {type(obj).__name__}, not a dict of state dicts or a state dict")

    if obj and all(isinstance(v, Tensor) for v in obj.values()):
        logger.info("%s is a bare state dict (%d tensors); key '%s' not needed", path, len(obj), key)
        state = obj
    elif key in obj:
        state = obj[key]
        if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
            raise ValueError(f"'{key}' in {path} is a {type(state).__name__}, not a state dict of tensors")
    else:
        available = ", ".join(repr(k) for k in list(obj)[:20])
        raise KeyError(f"checkpoint {path} has no '{key}' entry; its top-level keys are: {available}")
    converted = convert_wan_to_diffusers(state)
    logger.info("loaded %d tensors ('%s') from %s", len(converted), key, path)
    return converted


def _wan_defaults() -> dict[str, Any]:
    from diffusers import WanTransformer3DModel

    sig = inspect.signature(WanTransformer3DModel.__init__)
    return {
        name: p.default
        for name, p in sig.parameters.items()
        if name != "self" and p.default is not inspect.Parameter.empty
    }


def original_wan_key_shapes(config: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """Original Wan / Self-Forcing parameter names and shapes for a ``WanTransformer3DModel`` config.

    Args:
        config: ``WanTransformer3DModel`` keyword arguments (missing ones take diffusers' defaults), e.g.
            the published 1.3B config: patch (1,2,2), 12 heads × 128, 30 layers, ffn 8960, text_dim 4096,
            freq_dim 256, in/out 16, qk_norm ``"rms_norm_across_heads"``, cross_attn_norm True.

    Returns:
        name → shape, without any wrapper prefix (e.g. ``blocks.0.modulation`` → (1, 6, dim)).

    Raises:
        ValueError: image-conditioning options (I2V) or a ``qk_norm`` other than
            ``"rms_norm_across_heads"``, which this project does not support.
    """
    cfg = {**_wan_defaults(), **{k: v for k, v in config.items() if not k.startswith("_")}}
    if cfg.get("image_dim") is not None or cfg.get("added_kv_proj_dim") is not None:
        raise ValueError("image-conditioned (I2V) Wan configs are not supported: image_dim/added_kv_proj_dim")
    if cfg.get("qk_norm") != "rms_norm_across_heads":
        raise ValueError(f"qk_norm must be 'rms_norm_across_heads', got {cfg.get('qk_norm')!r}")
    patch = tuple(int(p) for p in cfg["patch_size"])
    dim = int(cfg["num_attention_heads"]) * int(cfg["attention_head_dim"])
    in_ch = int(cfg["in_channels"])
    out_ch = int(cfg["out_channels"] or in_ch)
    ffn = int(cfg["ffn_dim"])
    text_dim, freq_dim = int(cfg["text_dim"]), int(cfg["freq_dim"])

    shapes: dict[str, tuple[int, ...]] = {
        "patch_embedding.weight": (dim, in_ch, *patch),
        "patch_embedding.bias": (dim,),
        "text_embedding.0.weight": (dim, text_dim),
        "text_embedding.0.bias": (dim,),
        "text_embedding.2.weight": (dim, dim),
        "text_embedding.2.bias": (dim,),
        "time_embedding.0.weight": (dim, freq_dim),
        "time_embedding.0.bias": (dim,),
        "time_embedding.2.weight": (dim, dim),
        "time_embedding.2.bias": (dim,),
        "time_projection.1.weight": (6 * dim, dim),
        "time_projection.1.bias": (6 * dim,),
    }
    for i in range(int(cfg["num_layers"])):
        b = f"blocks.{i}"
        for attn in ("self_attn", "cross_attn"):
            for proj in ("q", "k", "v", "o"):
                shapes[f"{b}.{attn}.{proj}.weight"] = (dim, dim)
                shapes[f"{b}.{attn}.{proj}.bias"] = (dim,)
            shapes[f"{b}.{attn}.norm_q.weight"] = (dim,)
            shapes[f"{b}.{attn}.norm_k.weight"] = (dim,)
        if cfg["cross_attn_norm"]:
            shapes[f"{b}.norm3.weight"] = (dim,)
            shapes[f"{b}.norm3.bias"] = (dim,)
        shapes[f"{b}.ffn.0.weight"] = (ffn, dim)
        shapes[f"{b}.ffn.0.bias"] = (ffn,)
        shapes[f"{b}.ffn.2.weight"] = (dim, ffn)
        shapes[f"{b}.ffn.2.bias"] = (dim,)
        shapes[f"{b}.modulation"] = (1, 6, dim)
    shapes["head.head.weight"] = (out_ch * math.prod(patch), dim)
    shapes["head.head.bias"] = (out_ch * math.prod(patch),)
    shapes["head.modulation"] = (1, 2, dim)
    return shapes
