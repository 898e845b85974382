"""Model bundles: a transformer, a TAEHV autoencoder and a style text encoder in one safetensors file.

The embedded demo model ships this way (``lipar_core/weights/demo.safetensors``, written by
``python -m lipar_core.train.demo``). Tensors are stored in float16 under ``transformer.*``,
``autoencoder.*`` and ``text.embeddings``; the metadata holds the architectures (JSON), the text encoder's
vocabulary and settings, and the training configuration, so a file describes itself completely.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import WanTransformer3DModel

from lipar_core.autoencoders.taehv import TAEHV
from lipar_core.text.style_encoder import StyleTextEncoder

FORMAT = "lipar-demo-bundle/1"


def save_bundle(
    path: Path,
    transformer: WanTransformer3DModel,
    autoencoder: TAEHV,
    text: StyleTextEncoder,
    train: dict[str, Any],
) -> int:
    """Write a bundle atomically (float16 tensors, configuration in the metadata); returns its size in bytes."""
    from safetensors.torch import save_file

    text_tensors, text_meta = text.state()
    tensors: dict[str, torch.Tensor] = {}
    for k, v in transformer.state_dict().items():
        tensors[f"transformer.{k}"] = v.detach().half().cpu().contiguous()
    for k, v in autoencoder.state_dict().items():
        tensors[f"autoencoder.{k}"] = v.detach().half().cpu().contiguous()
    for k, v in text_tensors.items():
        tensors[k] = v.half().contiguous()
    meta = {
        "format": FORMAT,
        "transformer_config": json.dumps(dict(transformer.config)),
        "autoencoder_config": json.dumps(
            {"encoder_width": autoencoder.encoder_width, "decoder_widths": list(autoencoder.decoder_widths)}
        ),
        "train_config": json.dumps(train),
        **text_meta,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    tmp.replace(path)
    return path.stat().st_size


def _metadata(path: str | Path, needs: str) -> dict[str, str]:
    """A bundle's metadata (no tensors are loaded); ValueError unless it is a bundle with key ``needs``."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata() or {})
    if meta.get("format") != FORMAT or needs not in meta:
        raise ValueError(f"{path} is not a model bundle with {needs!r} metadata")
    return meta


def bundle_vocabulary(path: str | Path) -> dict[str, list[str]]:
    """The prompts a bundle's model knows (edit name -> prompts, canonical first), read from the metadata
    only (no tensors are loaded).

    Raises:
        ValueError: not a bundle.
    """
    meta = _metadata(path, "style_vocabulary")
    return {k: list(v) for k, v in json.loads(meta["style_vocabulary"]).items()}


def bundle_train_config(path: str | Path) -> dict[str, Any]:
    """The training configuration stored in a bundle (``DemoConfig`` as a dict: the denoising steps, shift and
    stream geometry the model was trained for), read from the metadata only.

    Raises:
        ValueError: not a bundle.
    """
    return dict(json.loads(_metadata(path, "train_config")["train_config"]))


@dataclass
class Bundle:
    """The loaded parts of a bundle (float32 modules on the CPU, eval mode; the caller moves them)."""

    transformer: WanTransformer3DModel
    autoencoder: TAEHV
    text: StyleTextEncoder
    metadata: dict[str, str]


def load_bundle(path: str | Path) -> Bundle:
    """Read a bundle written by :func:`save_bundle` (strict: every key must match the architecture).

    Raises:
        ValueError: not a bundle, or its tensors do not fit the architecture in its metadata.
    """
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata() or {})
        if meta.get("format") != FORMAT:
            raise ValueError(
                f"{path} is not a model bundle (format {meta.get('format')!r}, expected {FORMAT})"
            )
        tensors = {k: f.get_tensor(k).float() for k in f.keys()}  # noqa: SIM118 (safe_open is no mapping)
    wan_cfg = {k: v for k, v in json.loads(meta["transformer_config"]).items() if not k.startswith("_")}
    wan = WanTransformer3DModel(**wan_cfg)
    ae = TAEHV(**json.loads(meta["autoencoder_config"]))
    for prefix, module in (("transformer.", wan), ("autoencoder.", ae)):
        sd = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        try:
            module.load_state_dict(sd, strict=True)
        except RuntimeError as e:
            raise ValueError(f"{path}: {prefix.rstrip('.')} weights do not fit its config: {e}") from e
    text = StyleTextEncoder.from_state(tensors, meta)
    return Bundle(wan.eval(), ae.eval(), text, meta)
