"""Configuration models shared by the library, the CLI, the server and the YAML presets in ``configs/``.

Every YAML preset is validated by :class:`PresetConfig`; every knob has a documented range. Bad values raise
a pydantic ``ValidationError`` that names the field.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from lipar_core.lipar.config import LiparConfig


def read_yaml_mapping(path: str | Path, what: str) -> dict[str, Any]:
    """A YAML file holding a mapping; ValueError with a one-line reason otherwise."""
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text())
    except OSError as e:
        raise ValueError(f"cannot read {what} {p}: {e.strerror or e}") from None
    except yaml.YAMLError as e:
        raise ValueError(f"{what} {p} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{what} {p} must hold a mapping at the top level")
    return data


def describe_validation_error(e: ValidationError) -> str:
    """A pydantic error on one line: ``field.path: message; ...``."""
    return "; ".join(f"{'.'.join(str(x) for x in err['loc'])}: {err['msg']}" for err in e.errors())


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class HubFile(_Strict):
    """One file from a Hugging Face repo or a local directory.

    ``repo`` is either a Hub id (``owner/name``) or a local directory; ``filename`` is relative to it.
    """

    repo: str
    filename: str
    revision: str | None = None


class TransformerSource(_Strict):
    """Where the causal DiT comes from.

    ``random``: a ``WanTransformer3DModel`` built from ``config`` with seeded random weights (no download).
    ``pretrained``: the diffusers-format Wan2.1 repo (``repo``, ``subfolder``) for the config (and base
    weights unless ``generator`` overrides them), plus optionally the Self-Forcing generator checkpoint.
    """

    source: Literal["random", "pretrained"] = "random"
    config: dict[str, Any] = Field(default_factory=dict)
    seed: int = 0
    repo: str | None = None
    subfolder: str = "transformer"
    load_base_weights: bool = Field(
        default=False,
        description="load the base Wan weights before the generator (not needed when generator is given)",
    )
    generator: HubFile | None = None
    generator_key: Literal["generator_ema", "generator"] = "generator_ema"

    @model_validator(mode="after")
    def _check(self) -> TransformerSource:
        if self.source == "pretrained" and not self.repo:
            raise ValueError("transformer.repo is required when transformer.source is 'pretrained'")
        return self


class AutoencoderSource(_Strict):
    """The video autoencoder: ``taehv`` (tiny, default for speed) or ``wan_vae`` (full quality)."""

    kind: Literal["taehv", "wan_vae"] = "taehv"
    config: dict[str, Any] = Field(default_factory=dict)
    seed: int = 0
    weights: HubFile | None = None
    repo: str | None = None
    subfolder: str = "vae"


class TextSource(_Strict):
    """The prompt encoder: ``umt5`` (transformers, from a diffusers-format repo) or ``tiny`` (random)."""

    kind: Literal["umt5", "tiny"] = "umt5"
    repo: str | None = None
    encoder_subfolder: str = "text_encoder"
    tokenizer_subfolder: str = "tokenizer"
    config: dict[str, Any] = Field(default_factory=dict)
    seed: int = 0
    max_length: Annotated[int, Field(ge=1, le=4096)] = 512
    cache_size: Annotated[int, Field(ge=0, le=10_000)] = 64
    device: str | None = Field(default=None, description="device for the text encoder; None = runtime.device")


class ModelConfig(_Strict):
    """The model bundle: DiT, autoencoder and text encoder.

    ``bundle``: one safetensors file holding all three (:mod:`lipar_core.bundle`; the embedded demo model),
    as a path relative to the ``lipar_core`` package or absolute; it replaces the three sections, which must
    then stay at their defaults.
    """

    transformer: TransformerSource = TransformerSource()
    autoencoder: AutoencoderSource = AutoencoderSource()
    text: TextSource = TextSource()
    bundle: str | None = None

    @model_validator(mode="after")
    def _bundle_alone(self) -> ModelConfig:
        defaults = (TransformerSource(), AutoencoderSource(), TextSource())
        if self.bundle is not None and (self.transformer, self.autoencoder, self.text) != defaults:
            raise ValueError(
                "model.bundle replaces model.transformer/autoencoder/text: give one or the other"
            )
        return self


class StreamConfig(_Strict):
    """Stream geometry and attention window.

    The KV cache holds ``sink_frames`` (m0) latent frames from the start of the stream plus a rolling
    window of the last ``window_frames`` (m1) latent frames, which includes the current block.
    """

    height: Annotated[int, Field(ge=16, le=4096)] = 480
    width: Annotated[int, Field(ge=16, le=4096)] = 832
    latent_frames_per_block: Annotated[int, Field(ge=1, le=16)] = 3
    sink_frames: Annotated[int, Field(ge=0, le=64)] = 1
    window_frames: Annotated[int, Field(ge=1, le=256)] = 8
    train_frames: Annotated[int, Field(ge=1, le=1024)] = Field(
        default=21, description="latent frames the model was trained on; RoPE offsets stay inside it"
    )

    @model_validator(mode="after")
    def _check(self) -> StreamConfig:
        if self.window_frames < self.latent_frames_per_block:
            raise ValueError(
                f"window_frames ({self.window_frames}) must be at least latent_frames_per_block "
                f"({self.latent_frames_per_block}): the window includes the current block"
            )
        if self.train_frames < self.latent_frames_per_block:
            raise ValueError("train_frames must be at least latent_frames_per_block")
        return self


class SchedulerConfig(_Strict):
    """Flow-matching scheduler; ``denoising_steps`` are warped step values (LIPAR.md §2.5)."""

    num_train_timesteps: Annotated[int, Field(ge=2, le=100_000)] = 1000
    shift: Annotated[float, Field(gt=0.0, le=100.0)] = 5.0
    denoising_steps: list[int] = Field(default_factory=lambda: [400, 350, 250])
    recommended_strength: tuple[float, float] | None = Field(
        default=None,
        description="[min, max] edit strength (first step / num_train_timesteps) the model is known to edit "
        "well at, for clients' controls (GET /v1/model ranges); None = any valid strength. Must contain the "
        "preset's own strength (denoising_steps[0] / num_train_timesteps)",
    )

    @field_validator("denoising_steps")
    @classmethod
    def _steps(cls, v: list[int]) -> list[int]:
        if not v:
            raise ValueError("denoising_steps must not be empty")
        if any(not 1 <= s <= 1000 for s in v):
            raise ValueError("every denoising step must be in [1, 1000]")
        if any(a <= b for a, b in itertools.pairwise(v)):
            raise ValueError(
                "denoising_steps must be strictly decreasing (the first one is the edit strength)"
            )
        return v

    @model_validator(mode="after")
    def _recommended(self) -> SchedulerConfig:
        if self.recommended_strength is None:
            return self
        lo, hi = self.recommended_strength
        if not 0.0 < lo <= hi <= 1.0:
            raise ValueError(
                f"recommended_strength must be [min, max] with 0 < min <= max <= 1, got [{lo}, {hi}]"
            )
        default = self.denoising_steps[0] / self.num_train_timesteps
        if not lo <= default <= hi:
            raise ValueError(
                f"recommended_strength [{lo}, {hi}] must contain the preset's strength {default:g} "
                f"(denoising_steps[0] / num_train_timesteps)"
            )
        return self


class RuntimeConfig(_Strict):
    """Where and how the model runs."""

    device: str = "cpu"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    cache_dir: str | None = Field(default=None, description="model download cache; None = HF default")
    autoencoder_dtype: Literal["float32", "bfloat16", "float16"] | None = None
    cuda_graphs: bool = Field(default=True, description="replay DiT passes from CUDA graphs on CUDA devices")
    compile_layers: bool = Field(
        default=True,
        description="on CUDA, fuse each transformer layer's elementwise work with torch.compile "
        "(compiles during the first blocks; servers warm up before taking sessions)",
    )
    compile_autoencoder: bool = Field(
        default=True,
        description="on CUDA, run the tiny autoencoder's blocks through torch.compile (Inductor picks the "
        "convolutions' memory layout and fuses the work between them; compiles during the first blocks)",
    )
    compile_autoencoder_cpu: bool = Field(
        default=False,
        description="on a CPU, run the tiny autoencoder's blocks through torch.compile too (Inductor's C++ "
        "backend, with a C++ compiler; eager if it cannot compile). At 416x240 on 2 cores the channels-last "
        "encoder and decoder take about 30 % less time; compiling takes about 40 s at a worker's warm-up",
    )
    compile_mask: bool = Field(
        default=True,
        description="on CUDA, capture the LIPAR mask's CUDA graph from a torch.compile'd mask (a few fused "
        "kernels instead of about a hundred small ones; compiles at a stream's second block, which servers "
        "reach in their warm-up)",
    )
    fp8: bool = Field(
        default=False,
        description="on CUDA GPUs with FP8 tensor cores, run the transformer blocks' per-token linear layers in "
        "float8 with per-row weight and per-token input scales (torch._scaled_mm); an experiment: on an "
        "H100 it measured slower than bf16 so far, with a small quality cost (bench/NOTES.md)",
    )
    fp8_scales: Literal["row", "tensor"] = Field(
        default="row",
        description="with fp8: one scale per weight row and per input token (row), or one per tensor (tensor)",
    )


class PresetConfig(_Strict):
    """A named, complete configuration: model, stream, scheduler, runtime, LIPAR.

    ``lipar`` is a :class:`~lipar_core.lipar.config.LiparConfig` (unknown knobs and out-of-range values fail
    here, naming the field, e.g. ``lipar.tau``); it also reads like a mapping, so
    ``LiparConfig.model_validate({**cfg.lipar, **overrides})`` merges overrides.
    """

    name: str
    description: str = ""
    model: ModelConfig = ModelConfig()
    stream: StreamConfig = StreamConfig()
    scheduler: SchedulerConfig = SchedulerConfig()
    runtime: RuntimeConfig = RuntimeConfig()
    lipar: LiparConfig = Field(
        default_factory=LiparConfig, description="LIPAR settings (lipar_core.lipar.config)"
    )

    @classmethod
    def from_yaml(cls, path: str | Path) -> PresetConfig:
        """Load and validate a YAML preset file.

        A file may start from another preset with ``extends: NAME_OR_PATH`` (a built-in name, or a path
        relative to the file): its sections are merged over that preset's, key by key (mappings merge,
        anything else replaces), e.g. a low-latency variant that only sets ``stream.latent_frames_per_block``.
        """
        return cls.model_validate(_resolve_extends(Path(path), ()))

    def with_bundle(self, bundle: str | Path, name: str | None = None) -> PresetConfig:
        """A copy whose model is the bundle file ``bundle`` (stream, scheduler, runtime and LIPAR kept)."""
        data = self.model_dump(exclude={"model"})
        data["model"] = {"bundle": str(Path(bundle).resolve())}
        if name is not None:
            data["name"] = name
        return PresetConfig.model_validate(data)

    def with_overrides(self, **updates: Any) -> PresetConfig:
        """A copy with top-level sections replaced (validated again)."""
        data = self.model_dump()
        data.update(updates)
        return PresetConfig.model_validate(data)


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` merged into ``base``: nested mappings key by key, anything else replaced."""
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _resolve_extends(path: Path, chain: tuple[Path, ...]) -> dict[str, Any]:
    """A preset file's mapping with its ``extends`` chain merged in (ValueError on a cycle)."""
    data = read_yaml_mapping(path, "config file")
    parent = data.pop("extends", None)
    if parent is None:
        return data
    if not isinstance(parent, str):
        raise ValueError(f"config file {path}: extends must name a preset or a file")
    local = path.parent / parent
    base_path = local if local.suffix in (".yaml", ".yml") and local.is_file() else preset_path(parent)
    if base_path.resolve() in chain:
        raise ValueError(f"config file {path}: extends forms a cycle through {base_path}")
    return _merge(_resolve_extends(base_path, (*chain, path.resolve())), data)


PRESET_DIR = Path(__file__).parent / "configs"
"""The built-in presets: one YAML file each."""


def preset_names() -> list[str]:
    """Names of the built-in presets."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def preset_path(name_or_path: str | Path) -> Path:
    """The YAML file of a preset: a path as given (a ``.yaml``/``.yml`` name, a name with a ``/``, or an existing
    file), else the built-in preset of that name. Reads nothing: no model code is needed (the server uses it).

    Raises:
        ValueError: an unknown built-in name (the message lists the built-in presets).
    """
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or "/" in str(name_or_path) or p.exists():
        return p
    candidate = PRESET_DIR / f"{name_or_path}.yaml"
    if not candidate.is_file():
        raise ValueError(
            f"unknown preset {str(name_or_path)!r}; built-in presets: {', '.join(preset_names())}"
        )
    return candidate
