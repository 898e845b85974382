"""Streaming wrapper around diffusers' ``AutoencoderKLWan`` (the Wan 2.1 causal video VAE).

The Wan VAE is causal in time: its 3D convolutions only look back, through a per-layer feature cache of the
last frames of the previous chunk. diffusers encodes a clip as a 1-frame chunk (frame 0) followed by 4-frame
chunks, and decodes one latent at a time, the first with ``first_chunk=True``; T pixel frames give
1 + (T - 1) // 4 latents and L latents give 1 + 4 (L - 1) frames. This module keeps that feature cache per
stream, in the stream objects (never in the model's shared ``_feat_map`` / ``_enc_feat_map``), so one model
serves any number of streams and a clip streamed block by block equals the clip encoded (decoded) whole.

Encoder chunking across calls: the first pixel frame of a stream forms a 1-frame chunk; after it, frames are
grouped in 4-frame chunks and frames that do not yet fill a chunk are kept in the stream state for the next
call. With 12 new frames per call every call yields exactly 3 latents: the first call consumes frames 0..8
and keeps 9..11, the second consumes 9..20 and keeps 21..23, and so on (the stream lags 3 frames behind).

Decoder: the stream's first latent yields 1 frame, every later latent 4 frames.

All complete chunks of one call go through the network in one pass (the causal cache makes this equal to
chunk-by-chunk processing: the temporal convolutions see the same inputs); ``chunks_per_pass`` bounds the
number per pass to limit activation memory.

Latents are the posterior mean (no sampling), normalised per channel with the VAE config's ``latents_mean``
and ``latents_std``: ``(z - mean) / std``, i.e. Wan's normalised latent space that the DiT works in; decoding
undoes it. Pixel frames are RGB in [0, 1] at the interface and [-1, 1] inside the VAE.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

import torch
from diffusers.models.autoencoders.autoencoder_kl_wan import AutoencoderKLWan, WanCausalConv3d

if TYPE_CHECKING:
    from lipar_core.autoencoders.base import VideoAutoencoder

logger = logging.getLogger(__name__)

__all__ = ["WanVAEAutoencoder", "WanVAEDecoderStream", "WanVAEEncoderStream", "tiny_wan_vae"]


def _count_causal_convs(module: torch.nn.Module) -> int:
    """Number of cached causal convolutions (the length of a feature-cache list) in ``module``."""
    return sum(isinstance(m, WanCausalConv3d) for m in module.modules())


def _check_continues(
    state: tuple[int, int, int] | None, new: tuple[int, int, int], what: str, shape: torch.Size
) -> None:
    """Raise if a call's (batch, height, width) differs from the stream's (the causal cache would not fit)."""
    if state is not None and state != new:
        raise ValueError(
            f"{what} {tuple(shape)} do not continue the stream (batch, height, width = {state}): "
            "batch size or resolution changed mid-stream (call reset() first)"
        )


def _passes(x: torch.Tensor, frames_per_pass: int | None) -> list[torch.Tensor]:
    """Split [B, C, T, H, W] along T into pieces of at most ``frames_per_pass`` (one piece if None)."""
    if frames_per_pass is None or x.shape[2] <= frames_per_pass:
        return [x]
    return list(x.split(frames_per_pass, dim=2))


class WanVAEEncoderStream:
    """Encoder state of one stream: the causal feature cache and the frames not yet forming a 4-frame chunk."""

    def __init__(self, ae: WanVAEAutoencoder) -> None:
        self._ae = ae
        self._feat_map: list[Any] = []
        self._pending: torch.Tensor | None = None
        self._shape: tuple[int, int, int] | None = None  # (B, H, W) of the stream once started
        self._started = False
        self.reset()

    @property
    def pending_frames(self) -> int:
        """Pixel frames received but not yet encoded (waiting for a full chunk)."""
        return 0 if self._pending is None else int(self._pending.shape[2])

    def reset(self) -> None:
        """Forget the stream state (the next call starts a new stream)."""
        self._feat_map = [None] * self._ae.encoder_cache_size
        self._pending = None
        self._shape = None
        self._started = False

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        """Encode one or more chunks [B, 3, t, H, W] in [-1, 1] -> posterior mean [B, z, t', H/8, W/8]."""
        vae = self._ae.vae
        out = vae.encoder(x, feat_cache=self._feat_map, feat_idx=[0])
        moments = vae.quant_conv(out)  # 1x1x1 conv: no temporal context
        return moments[:, : self._ae.latent_channels]

    @torch.no_grad()
    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        """Encode the next frames of the stream.

        Args:
            frames: [B, T, 3, H, W] float RGB in [0, 1]; H and W multiples of 8. Any T >= 0 is accepted (frames
                that do not complete a chunk wait in the stream state); with T a multiple of 4 every call
                returns T // 4 latents (the first frame's 1-frame chunk compensates for the 3 kept frames).
        Returns:
            latents: [B, L, 16, H // 8, W // 8] in Wan's normalised latent space, model dtype and device;
            L = number of chunks completed by this call.
        """
        ae = self._ae
        if frames.ndim != 5 or frames.shape[2] != 3:
            raise ValueError(f"expected frames [B, T, 3, H, W], got {tuple(frames.shape)}")
        b, _, _, h, w = frames.shape
        if h % ae.spatial_stride or w % ae.spatial_stride:
            raise ValueError(f"resolution {w}x{h} must be a multiple of {ae.spatial_stride}")
        _check_continues(self._shape, (b, h, w), "frames", frames.shape)
        self._shape = (b, h, w)
        x = frames.to(device=ae.device, dtype=ae.dtype).permute(0, 2, 1, 3, 4) * 2.0 - 1.0  # [B, 3, T, H, W]
        if self._pending is not None:
            x = torch.cat([self._pending, x], dim=2)

        outs: list[torch.Tensor] = []
        if not self._started and x.shape[2] > 0:
            outs.append(self._run(x[:, :, :1]))
            x = x[:, :, 1:]
            self._started = True
        stride = ae.temporal_stride
        n_full = x.shape[2] // stride * stride
        if n_full:
            per_pass = None if ae.chunks_per_pass is None else ae.chunks_per_pass * stride
            outs.extend(self._run(piece) for piece in _passes(x[:, :, :n_full], per_pass))
        self._pending = x[:, :, n_full:].clone() if x.shape[2] > n_full else None

        if outs:
            mu = torch.cat(outs, dim=2)
        else:
            mu = x.new_zeros((b, ae.latent_channels, 0, h // ae.spatial_stride, w // ae.spatial_stride))
        return ae.normalize(mu.permute(0, 2, 1, 3, 4))


class WanVAEDecoderStream:
    """Decoder state of one stream: the causal feature cache and whether the first latent was decoded."""

    def __init__(self, ae: WanVAEAutoencoder) -> None:
        self._ae = ae
        self._feat_map: list[Any] = []
        self._shape: tuple[int, int, int] | None = None  # (B, h, w) of the stream once started
        self._started = False
        self.reset()

    def reset(self) -> None:
        """Forget the stream state."""
        self._feat_map = [None] * self._ae.decoder_cache_size
        self._shape = None
        self._started = False

    def _run(self, x: torch.Tensor, first_chunk: bool) -> torch.Tensor:
        """Decode latents [B, z, l, h, w] (after post_quant_conv) -> frames [B, 3, t, 8 h, 8 w] in [-1, 1]."""
        return self._ae.vae.decoder(x, feat_cache=self._feat_map, feat_idx=[0], first_chunk=first_chunk)

    @torch.no_grad()
    def __call__(self, latents: torch.Tensor) -> torch.Tensor:
        """Decode the next latents of the stream.

        Args:
            latents: [B, L, 16, h, w] in Wan's normalised latent space.
        Returns:
            frames: [B, T, 3, 8 h, 8 w] float RGB in [0, 1], model dtype and device; T = 4 L, except on the
            stream's first call where the first latent gives a single frame (T = 4 L - 3).
        """
        ae = self._ae
        if latents.ndim != 5 or latents.shape[2] != ae.latent_channels:
            raise ValueError(
                f"expected latents [B, L, {ae.latent_channels}, h, w], got {tuple(latents.shape)}"
            )
        b, n, _, h, w = latents.shape
        if n == 0:
            return latents.new_zeros((b, 0, 3, h * ae.spatial_stride, w * ae.spatial_stride), dtype=ae.dtype)
        _check_continues(self._shape, (b, h, w), "latents", latents.shape)
        self._shape = (b, h, w)
        z = ae.denormalize(latents.to(device=ae.device, dtype=ae.dtype)).permute(0, 2, 1, 3, 4)
        x = ae.vae.post_quant_conv(z)  # 1x1x1 conv: no temporal context

        outs: list[torch.Tensor] = []
        if not self._started:
            outs.append(self._run(x[:, :, :1], first_chunk=True))
            x = x[:, :, 1:]
            self._started = True
        if x.shape[2]:
            outs.extend(self._run(piece, first_chunk=False) for piece in _passes(x, ae.chunks_per_pass))
        y = torch.cat(outs, dim=2).clamp_(-1.0, 1.0).add_(1.0).mul_(0.5)
        return y.permute(0, 2, 1, 3, 4)


class WanVAEAutoencoder:
    """The Wan 2.1 VAE as a streaming :class:`~lipar_core.autoencoders.base.VideoAutoencoder`.

    Holds the (shared) model only; each :meth:`encoder_stream` / :meth:`decoder_stream` owns its own causal
    feature cache. See the module docstring for the chunking and the frame counts.

    Attributes:
        vae: the diffusers model (eval mode).
        latent_channels: z_dim (16).
        temporal_stride: 4 (2 ** number of temporal downsamplings).
        spatial_stride: 8 (2 ** number of spatial downsamplings).
        chunks_per_pass: at most this many 4-frame chunks (encoder) / latents (decoder) per network pass;
            None = all of a call at once.
    """

    def __init__(self, vae: AutoencoderKLWan, chunks_per_pass: int | None = None) -> None:
        cfg = vae.config
        if cfg.get("patch_size") is not None or cfg.get("is_residual", False):
            raise ValueError("only the Wan 2.1 VAE layout is supported (no patch_size, is_residual=False)")
        if chunks_per_pass is not None and chunks_per_pass < 1:
            raise ValueError(f"chunks_per_pass must be >= 1 or None, got {chunks_per_pass}")
        self.vae = vae.eval()
        self.chunks_per_pass = chunks_per_pass
        self.latent_channels: int = int(cfg["z_dim"])
        self.temporal_stride: int = 2 ** sum(bool(t) for t in cfg["temperal_downsample"])
        self.spatial_stride: int = 2 ** (len(cfg["dim_mult"]) - 1)
        self.encoder_cache_size = _count_causal_convs(vae.encoder)
        self.decoder_cache_size = _count_causal_convs(vae.decoder)
        mean = torch.tensor(cfg["latents_mean"], dtype=torch.float32)
        std = torch.tensor(cfg["latents_std"], dtype=torch.float32)
        if mean.numel() != self.latent_channels or std.numel() != self.latent_channels:
            raise ValueError(
                f"latents_mean/latents_std have {mean.numel()}/{std.numel()} entries, expected {self.latent_channels}"
            )
        self._mean = mean.view(1, 1, -1, 1, 1)  # [1, 1, C, 1, 1] for [B, L, C, h, w]
        self._std = std.view(1, 1, -1, 1, 1)
        self._stats_cache: dict[tuple[torch.device, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}

    @property
    def device(self) -> torch.device:
        """Device of the weights."""
        return next(self.vae.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """Dtype of the weights (the dtype the streams compute and return in)."""
        return next(self.vae.parameters()).dtype

    def _stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        key = (like.device, like.dtype)
        if key not in self._stats_cache:
            self._stats_cache[key] = (self._mean.to(**_to(like)), self._std.to(**_to(like)))
        return self._stats_cache[key]

    def normalize(self, z: torch.Tensor) -> torch.Tensor:
        """Raw posterior mean [B, L, C, h, w] -> Wan normalised latents ``(z - mean) / std``."""
        mean, std = self._stats(z)
        return (z - mean) / std

    def denormalize(self, latents: torch.Tensor) -> torch.Tensor:
        """Wan normalised latents [B, L, C, h, w] -> raw VAE latents ``latents * std + mean``."""
        mean, std = self._stats(latents)
        return latents * std + mean

    def encoder_stream(self) -> WanVAEEncoderStream:
        """A new encoder state for one stream."""
        return WanVAEEncoderStream(self)

    def decoder_stream(self) -> WanVAEDecoderStream:
        """A new decoder state for one stream."""
        return WanVAEDecoderStream(self)

    @classmethod
    def from_pretrained(
        cls,
        repo_or_dir: str | os.PathLike[str],
        subfolder: str | None = "vae",
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        cache_dir: str | os.PathLike[str] | None = None,
        chunks_per_pass: int | None = None,
    ) -> WanVAEAutoencoder:
        """Load a diffusers-format Wan VAE (e.g. ``Wan-AI/Wan2.1-T2V-1.3B-Diffusers``, subfolder ``vae``).

        Args:
            repo_or_dir: Hugging Face repo id or local directory (honours ``HF_HUB_OFFLINE``).
            subfolder: folder of the VAE inside it (None for a directory holding the VAE itself).
            dtype, device: of the returned model.
            cache_dir: Hugging Face cache directory.
            chunks_per_pass: see the class docstring.
        """
        vae = AutoencoderKLWan.from_pretrained(
            repo_or_dir, subfolder=subfolder, torch_dtype=dtype, cache_dir=cache_dir
        )
        logger.info(
            "loaded Wan VAE from %s (subfolder=%s, %s, %s)", os.fspath(repo_or_dir), subfolder, dtype, device
        )
        return cls(vae.to(device=device), chunks_per_pass=chunks_per_pass)


def _to(like: torch.Tensor) -> dict[str, Any]:
    return {"device": like.device, "dtype": like.dtype}


TINY_WAN_VAE_CONFIG: dict[str, Any] = {
    "base_dim": 8,
    "z_dim": 16,
    "dim_mult": [1, 2, 2, 2],
    "num_res_blocks": 1,
    "temperal_downsample": [False, True, True],
}


def tiny_wan_vae(
    seed: int = 0,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    chunks_per_pass: int | None = None,
) -> WanVAEAutoencoder:
    """A small randomly initialised Wan VAE (same strides: 4x temporal, 8x spatial, z = 16) for tests.

    Deterministic for a given ``seed``; the global RNG state is restored afterwards (diffusers' constructor
    draws its initialisation from it).
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = AutoencoderKLWan(**TINY_WAN_VAE_CONFIG)
    vae = vae.to(device=device) if dtype == torch.float32 else vae.to(device=device, dtype=dtype)
    return WanVAEAutoencoder(vae, chunks_per_pass=chunks_per_pass)


if TYPE_CHECKING:

    def _implements_protocol(ae: WanVAEAutoencoder) -> VideoAutoencoder:
        return ae
