"""The interface every streaming video autoencoder implements.

A stream owns one :class:`EncoderStream` and one :class:`DecoderStream`. They carry the temporal state the
autoencoder needs between blocks, so that encoding (decoding) a clip block by block gives the same result
as encoding (decoding) it whole. Both are called from the worker process that owns the stream, one block
at a time, never concurrently.

Value ranges: pixel frames are float RGB in [0, 1]; latents are in the Wan 2.1 normalised latent space
(the space the DiT works in), whatever the autoencoder's own convention is.
"""

from __future__ import annotations

from typing import Protocol

import torch


class EncoderStream(Protocol):
    """Encodes consecutive blocks of one stream, carrying state across calls."""

    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        """Encode the next frames of the stream.

        Args:
            frames: [B, T, 3, H, W] float in [0, 1], T a multiple of the temporal stride.
        Returns:
            latents: [B, T // temporal_stride, C, H // spatial_stride, W // spatial_stride].
        """
        ...

    def reset(self) -> None:
        """Forget the stream state (the next call starts a new stream)."""
        ...


class DecoderStream(Protocol):
    """Decodes consecutive latent blocks of one stream, carrying state across calls."""

    def __call__(self, latents: torch.Tensor) -> torch.Tensor:
        """Decode the next latent frames of the stream.

        Args:
            latents: [B, L, C, h, w].
        Returns:
            frames: [B, T, 3, h * spatial_stride, w * spatial_stride] float in [0, 1]; T = L * temporal_stride
            for the tiny autoencoder (a causal VAE may return fewer frames for the very first latent).
        """
        ...

    def reset(self) -> None:
        """Forget the stream state."""
        ...


class VideoAutoencoder(Protocol):
    """A video autoencoder shared by all streams of a worker (weights only, no per-stream state)."""

    latent_channels: int
    temporal_stride: int
    spatial_stride: int

    def encoder_stream(self) -> EncoderStream:
        """A new encoder state for one stream."""
        ...

    def decoder_stream(self) -> DecoderStream:
        """A new decoder state for one stream."""
        ...
