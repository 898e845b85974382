"""Named model bundles: load the DiT, the autoencoder and the text encoder a preset describes.

Presets are YAML files in ``lipar_core/configs/`` (``configs/`` at the repository root points there), each
validated by :class:`~lipar_core.config.PresetConfig`:

- ``tiny``: small random-initialised models of the same classes, created locally from seeds (no downloads),
  for tests and the embedded default on a CPU.
- ``self-forcing-1.3b``: Wan2.1-T2V-1.3B (diffusers format) with the Self-Forcing DMD generator and the tiny
  autoencoder ``taew2_1``; ``self-forcing-1.3b-wanvae`` uses the full Wan VAE instead.

Downloads go through ``huggingface_hub`` into ``runtime.cache_dir`` (default: the HF cache, ``HF_HOME``);
``HF_HUB_OFFLINE=1`` and local directories work. A missing file raises
:class:`~lipar_core.checkpoints.CheckpointNotFoundError` naming the file, where it looked and how to get it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from diffusers import WanTransformer3DModel

from lipar_core.autoencoders.base import VideoAutoencoder
from lipar_core.autoencoders.taehv import TAEHV
from lipar_core.bundle import bundle_vocabulary, load_bundle
from lipar_core.checkpoints import CheckpointNotFoundError, resolve_file, resolve_repo_dir
from lipar_core.config import (
    AutoencoderSource,
    PresetConfig,
    TextSource,
    TransformerSource,
    preset_path,
)
from lipar_core.geometry import StreamGeometry
from lipar_core.models.fp8 import quantize_fp8
from lipar_core.models.graphs import GraphedDiT
from lipar_core.models.kv_cache import CacheStage, KVCache
from lipar_core.models.transformer import CausalWanDiT
from lipar_core.scheduler import FlowMatchScheduler
from lipar_core.text.encoder import PromptEncoder

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class TextEncoder(Protocol):
    """What the editor needs from a prompt encoder (:class:`~lipar_core.text.encoder.PromptEncoder`)."""

    def encode(self, prompt: str) -> torch.Tensor:
        """[1, L, text_dim] prompt embedding (padding zeroed)."""
        ...


@dataclass
class EditorModels:
    """Everything a worker loads once and shares between its streams (no per-stream state).

    ``graph_runners`` holds the worker's CUDA-graph runners, one per cache shape (sink and window frames),
    shared by every stream of that shape (:meth:`graph_runner`).
    """

    config: PresetConfig
    geometry: StreamGeometry
    dit: CausalWanDiT
    autoencoder: VideoAutoencoder
    text: TextEncoder
    scheduler: FlowMatchScheduler
    device: torch.device
    dtype: torch.dtype
    autoencoder_dtype: torch.dtype
    graph_runners: dict[tuple[int, int, int], GraphedDiT] = field(default_factory=dict)

    def graph_runner(self, cache: KVCache) -> GraphedDiT:
        """The shared CUDA-graph runner (and cache stage) for streams with caches shaped like ``cache``."""
        key = (cache.sink_frames, cache.window_frames, cache.train_frames)
        runner = self.graph_runners.get(key)
        if runner is None:
            runner = self.graph_runners[key] = GraphedDiT(self.dit, CacheStage(cache))
        return runner


def get_preset_config(name_or_path: str | Path) -> PresetConfig:
    """A built-in preset by name, or a YAML file by path.

    Raises:
        ValueError: unknown name / unreadable or invalid file (the message says which and why).
    """
    return PresetConfig.from_yaml(preset_path(name_or_path))


def _seeded(seed: int, build: Any) -> Any:
    """Build a module with a seeded RNG without disturbing the global RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def _load_transformer(src: TransformerSource, cache_dir: str | None) -> WanTransformer3DModel:
    if src.source == "random":
        return _seeded(src.seed, lambda: WanTransformer3DModel(**src.config))
    assert src.repo is not None
    how = (
        f"download it with `hf download {src.repo} --include '{src.subfolder}/*'` or point "
        "model.transformer.repo at a local diffusers-format directory"
    )
    if src.generator is None or src.load_base_weights:
        repo_dir = resolve_repo_dir(src.repo, src.subfolder, cache_dir, "Wan2.1 transformer", how)
        wan = WanTransformer3DModel.from_pretrained(repo_dir, subfolder=src.subfolder)
    else:
        repo_dir = resolve_repo_dir(
            src.repo,
            src.subfolder,
            cache_dir,
            "Wan2.1 transformer config",
            how,
            allow_patterns=[f"{src.subfolder}/config.json"],
        )
        config = json.loads((repo_dir / src.subfolder / "config.json").read_text())
        from accelerate import init_empty_weights

        with init_empty_weights():  # parameters on the meta device (no memory); buffers stay real
            wan = WanTransformer3DModel.from_config(config)
    if src.generator is not None:
        from lipar_core.models.convert import load_self_forcing_generator

        gen_how = (
            f"download it with `hf download {src.generator.repo} {src.generator.filename}` or set "
            "model.transformer.generator.repo to a local directory holding that file"
        )
        path = resolve_file(src.generator, cache_dir, "Self-Forcing generator", gen_how)
        sd = load_self_forcing_generator(path, key=src.generator_key)
        wan.load_state_dict(sd, strict=True, assign=True)
    return wan


def _load_autoencoder(src: AutoencoderSource, cache_dir: str | None) -> VideoAutoencoder:
    if src.kind == "taehv":
        if src.weights is None:
            return _seeded(src.seed, lambda: TAEHV(**src.config))
        how = (
            f"download it with `hf download {src.weights.repo} {src.weights.filename}` (or taew2_1.pth from the "
            "madebyollin/taehv GitHub repository) and point model.autoencoder.weights.repo at its directory"
        )
        path = resolve_file(src.weights, cache_dir, "tiny autoencoder weights", how)
        return TAEHV.from_file(path, **src.config)
    from lipar_core.autoencoders.wan_vae import WanVAEAutoencoder, tiny_wan_vae

    if src.repo is None:
        return tiny_wan_vae(src.seed)
    return WanVAEAutoencoder.from_pretrained(src.repo, subfolder=src.subfolder, cache_dir=cache_dir)


def _load_text(src: TextSource, text_dim: int, cache_dir: str | None, device: torch.device) -> PromptEncoder:
    if src.kind == "tiny":
        return PromptEncoder.tiny(
            text_dim=text_dim,
            seed=src.seed,
            max_length=src.max_length,
            cache_size=src.cache_size,
            device=device,
        )
    if src.repo is None:
        raise ValueError("model.text.repo is required for the umt5 text encoder")
    return PromptEncoder.from_pretrained(
        src.repo,
        encoder_subfolder=src.encoder_subfolder,
        tokenizer_subfolder=src.tokenizer_subfolder,
        device=device,
        dtype=torch.bfloat16 if device.type == "cuda" else torch.float32,
        cache_dir=cache_dir,
        max_length=src.max_length,
        cache_size=src.cache_size,
    )


def _cast_transformer(wan: WanTransformer3DModel, device: torch.device, dtype: torch.dtype) -> None:
    """Move to device/dtype, keeping diffusers' fp32 modules (norms, time embedder, modulation) in fp32."""
    keep = set(getattr(wan, "_keep_in_fp32_modules", None) or ())
    for name, param in wan.named_parameters():
        target = torch.float32 if keep.intersection(name.split(".")) else dtype
        param.data = param.data.to(device=device, dtype=target)
    for _, buf in wan.named_buffers():
        buf.data = buf.data.to(device=device)


def bundle_path(name: str) -> Path:
    """Where ``model.bundle`` points: absolute, or relative to the ``lipar_core`` package.

    Raises:
        CheckpointNotFoundError: no such file (the message says how to make one).
    """
    p = Path(name)
    path = p if p.is_absolute() else Path(__file__).parent / p
    if not path.is_file():
        how = "train one with `python -m lipar_core.train.demo --out DIR` and point model.bundle at it"
        raise CheckpointNotFoundError(
            f"model bundle {path} not found; {how}", what="model bundle", missing=str(path), how_to_get=how
        )
    return path


def known_prompts(preset: str | Path | PresetConfig) -> dict[str, list[str]] | None:
    """The prompts a preset's model was trained on (edit name -> prompts, canonical first), or None for
    open-vocabulary models (umT5). Reads configuration and bundle metadata only: cheap, no model is loaded."""
    cfg = preset if isinstance(preset, PresetConfig) else get_preset_config(preset)
    if cfg.model.bundle is None:
        return None
    return bundle_vocabulary(bundle_path(cfg.model.bundle))


def load_preset(
    preset: str | Path | PresetConfig, device: str | None = None, dtype: str | None = None
) -> EditorModels:
    """Load a preset's models once (per worker process).

    Args:
        preset: a built-in name, a YAML path or a validated config.
        device: overrides ``runtime.device`` (e.g. ``cuda:1``).
        dtype: overrides ``runtime.dtype``.
    Raises:
        CheckpointNotFoundError: a file is missing (message says where it looked and how to get it).
        ValueError: invalid configuration.
    """
    cfg = preset if isinstance(preset, PresetConfig) else get_preset_config(preset)
    rt = cfg.runtime
    dev = torch.device(device or rt.device)
    dt = _DTYPES[dtype or rt.dtype]
    ae_dt = _DTYPES[rt.autoencoder_dtype] if rt.autoencoder_dtype else dt
    if dev.type == "cpu" and dt != torch.float32:
        log.warning("running %s on the CPU in %s; float32 is usually faster there", cfg.name, dt)
    log.info("loading preset %s on %s (%s)", cfg.name, dev, dt)

    text_dev = torch.device(cfg.model.text.device) if cfg.model.text.device else dev
    text: TextEncoder
    ae: VideoAutoencoder
    if cfg.model.bundle is not None:
        bundle = load_bundle(bundle_path(cfg.model.bundle))
        wan, ae = bundle.transformer, bundle.autoencoder
        text = bundle.text.to(text_dev)
    else:
        wan = _load_transformer(cfg.model.transformer, rt.cache_dir)
        ae = _load_autoencoder(cfg.model.autoencoder, rt.cache_dir)
        text = _load_text(cfg.model.text, int(wan.config.text_dim), rt.cache_dir, text_dev)
    _cast_transformer(wan, dev, dt)
    wan.eval().requires_grad_(False)
    if rt.fp8:
        quantize_fp8(wan, per_row=rt.fp8_scales == "row")
    dit = CausalWanDiT(wan)
    if dev.type == "cuda":
        dit.use_compiled_layers(rt.compile_layers)
    if isinstance(ae, TAEHV):
        compile_ae = {"cuda": rt.compile_autoencoder, "cpu": rt.compile_autoencoder_cpu}.get(dev.type, False)
        ae.compile_streams(compile_ae)
    if isinstance(ae, torch.nn.Module):
        ae.to(device=dev, dtype=ae_dt).eval().requires_grad_(False)
    else:
        ae.to(device=dev, dtype=ae_dt)  # type: ignore[attr-defined]
    if isinstance(ae, TAEHV) and dev.type == "cpu":
        ae.use_channels_last()
    patch = tuple(wan.config.patch_size)
    geometry = StreamGeometry(
        height=cfg.stream.height,
        width=cfg.stream.width,
        vae_stride=(ae.temporal_stride, ae.spatial_stride, ae.spatial_stride),
        patch=patch,  # type: ignore[arg-type]
        latent_frames_per_block=cfg.stream.latent_frames_per_block,
        latent_channels=ae.latent_channels,
    )
    if ae.latent_channels != wan.config.in_channels:
        raise ValueError(
            f"autoencoder latent channels ({ae.latent_channels}) != transformer in_channels "
            f"({wan.config.in_channels})"
        )
    sched = FlowMatchScheduler(cfg.scheduler.num_train_timesteps, cfg.scheduler.shift)
    return EditorModels(cfg, geometry, dit, ae, text, sched, dev, dt, ae_dt)
