"""Named causal-DiT configs (``WanTransformer3DModel`` keyword arguments), each defined once, in a preset YAML.

* :func:`tiny_transformer_config`: the tiny test DiT of the ``tiny-random`` preset (2 layers, width 32), the
  tiny config of every model class (STYLE.md: tiny dummy components make the pipeline testable on the CPU);
* :func:`wan_1_3b_transformer_config`: the real Wan2.1-T2V-1.3B architecture (30 layers, width 1536), as the
  ``self-forcing-1.3b-random`` preset builds it with random weights.

Benchmarks, GPU checks and tests take them from here instead of copying them, so a preset's model and what is
measured or tested next to it stay the same model. The shipped demo model's config lives in its bundle
(``lipar_core/weights/demo.safetensors``) and the one for training new demo models in
:data:`lipar_core.train.demo.DEMO_TRANSFORMER`; neither is here.
"""

from __future__ import annotations

import copy
from functools import cache
from typing import Any, Final

from lipar_core.config import PresetConfig, preset_path

TINY_PRESET: Final = "tiny-random"
"""The preset whose transformer config is the tiny test DiT."""

WAN_1_3B_PRESET: Final = "self-forcing-1.3b-random"
"""The preset whose transformer config is the full Wan2.1-T2V-1.3B architecture."""


@cache
def _preset_transformer(preset: str) -> dict[str, Any]:
    cfg = PresetConfig.from_yaml(preset_path(preset)).model.transformer
    if not cfg.config:
        raise ValueError(
            f"preset {preset!r} has no model.transformer.config (a pretrained model's comes from its repo)"
        )
    return cfg.config


def preset_transformer_config(preset: str) -> dict[str, Any]:
    """A fresh copy (safe to change) of a preset's ``model.transformer.config``.

    Raises:
        ValueError: unknown preset, or one without a written transformer config.
    """
    return copy.deepcopy(_preset_transformer(preset))


def tiny_transformer_config() -> dict[str, Any]:
    """The tiny test DiT (``tiny-random``): 2 heads x 16 = width 32, 2 layers, 16 latent channels, 32-d text."""
    return preset_transformer_config(TINY_PRESET)


def wan_1_3b_transformer_config() -> dict[str, Any]:
    """Wan2.1-T2V-1.3B (``self-forcing-1.3b-random``): 12 heads x 128 = width 1536, 30 layers, 4096-d text."""
    return preset_transformer_config(WAN_1_3B_PRESET)
