"""Stream geometry: every token count, cache size and position is derived here.

Nothing else in the project writes 1560 (tokens per latent frame at 480x832) or 4680 (tokens per block):
they follow from the resolution, the autoencoder stride, the DiT patch size and the block size.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StreamGeometry:
    """Sizes of one stream.

    Attributes:
        height, width: pixel resolution of model frames (pixels).
        vae_stride: (temporal, spatial-h, spatial-w) downsampling of the autoencoder, e.g. (4, 8, 8).
        patch: DiT patch (t, h, w), e.g. (1, 2, 2).
        latent_frames_per_block: latent frames the DiT processes per block (3 for Self-Forcing).
        latent_channels: channels of the latent (16 for Wan 2.1).
    """

    height: int
    width: int
    vae_stride: tuple[int, int, int] = (4, 8, 8)
    patch: tuple[int, int, int] = (1, 2, 2)
    latent_frames_per_block: int = 3
    latent_channels: int = 16

    def __post_init__(self) -> None:
        _st, sh, sw = self.vae_stride
        pt, ph, pw = self.patch
        if self.height <= 0 or self.width <= 0:
            raise ValueError(f"resolution must be positive, got {self.height}x{self.width}")
        if self.height % (sh * ph) or self.width % (sw * pw):
            raise ValueError(
                f"resolution {self.width}x{self.height} must be a multiple of {sw * pw}x{sh * ph} "
                f"(autoencoder stride {sw}x{sh} times patch {pw}x{ph})"
            )
        if self.latent_frames_per_block <= 0 or self.latent_frames_per_block % pt:
            raise ValueError(
                f"latent_frames_per_block={self.latent_frames_per_block} must be a positive multiple of the "
                f"temporal patch {pt}"
            )

    @property
    def latent_height(self) -> int:
        """Latent rows (pixels / spatial stride)."""
        return self.height // self.vae_stride[1]

    @property
    def latent_width(self) -> int:
        """Latent columns (pixels / spatial stride)."""
        return self.width // self.vae_stride[2]

    @property
    def token_grid(self) -> tuple[int, int]:
        """(rows, cols) of DiT tokens per latent frame, e.g. (30, 52) at 480x832."""
        return self.latent_height // self.patch[1], self.latent_width // self.patch[2]

    @property
    def tokens_per_frame(self) -> int:
        """DiT tokens per latent frame (1560 at 480x832)."""
        gh, gw = self.token_grid
        return gh * gw

    @property
    def token_frames_per_block(self) -> int:
        """Token frames per block (latent frames / temporal patch)."""
        return self.latent_frames_per_block // self.patch[0]

    @property
    def tokens_per_block(self) -> int:
        """DiT tokens per block (4680 at 480x832 with 3-frame blocks)."""
        return self.tokens_per_frame * self.token_frames_per_block

    @property
    def pixel_frames_per_block(self) -> int:
        """Pixel frames consumed and produced per block (12 with a 4x temporal stride)."""
        return self.latent_frames_per_block * self.vae_stride[0]

    @property
    def latent_block_shape(self) -> tuple[int, int, int, int]:
        """Shape of one block's latent without batch: [T, C, H, W]."""
        return (self.latent_frames_per_block, self.latent_channels, self.latent_height, self.latent_width)
