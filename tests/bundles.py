"""Model bundles for tests: the tiny-random models and the style vocabulary in the demo model's file format."""

from __future__ import annotations

from pathlib import Path

import torch

from lipar_core.autoencoders.taehv import TAEHV
from lipar_core.bundle import save_bundle
from lipar_core.config import PresetConfig
from lipar_core.models.transformer import CausalWanDiT
from lipar_core.presets import get_preset_config
from lipar_core.text.style_encoder import StyleTextEncoder
from lipar_core.train.demo import DemoConfig, build_models, vocabulary


def write_random_bundle(path: Path, seed: int = 0) -> tuple[CausalWanDiT, TAEHV, torch.Tensor]:
    """Write a bundle of seeded random models shaped like the ``tiny-random`` preset's; return them
    (DiT, autoencoder, style embeddings [edits, L, text_dim]) as saved, before the float16 rounding."""
    base = get_preset_config("tiny-random").model
    cfg = DemoConfig(
        transformer=dict(base.transformer.config), autoencoder=dict(base.autoencoder.config), seed=seed
    )
    dit, ae, emb = build_models(cfg, torch.device("cpu"))
    save_bundle(path, dit.wan, ae, StyleTextEncoder(vocabulary(), emb.detach()), {"seed": seed})
    return dit, ae, emb.detach()


def random_bundle_preset(path: Path, seed: int = 0) -> PresetConfig:
    """The ``tiny-random`` preset with its model replaced by a bundle written to ``path``."""
    write_random_bundle(path, seed)
    return get_preset_config("tiny-random").with_bundle(path, name="random-bundle")
