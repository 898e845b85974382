"""LIPAR settings: one pydantic model with every knob and its documented range.

It is the one source of the knobs' types and bounds: presets validate their ``lipar`` section with it
(:class:`lipar_core.config.PresetConfig`), and the API's per-session overrides are derived from it
(``server/api/schemas.py``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Recovery = Literal["none", "m_degree", "full"]
MaskSource = Literal["latent", "pixel", "external"]


class LiparConfig(BaseModel):
    """Latent inter-frame pruning with Attention Recovery (LIPAR.md §3–§5).

    Attributes:
        enabled: prune unchanged tokens (False = every token is recomputed, the baseline).
        tau: short-term change threshold on the filtered trimmed-L1 latent distance, [0, 10]. 0.1 suits a
            webcam (the reference's ``--webcam``), 0.149 the paper's offline clips. Higher prunes more.
        tau2: long-term drift threshold against a per-token reference latent, [0, 10], or None to disable.
        m: [m0, m1] attention window: m0 sink frames + the last m1 latent frames (incl. the current block);
            None keeps the stream's ``sink_frames`` / ``window_frames``.
        min_keep_ratio: per latent frame with any kept token, grow the kept region (3x3 dilation) until at
            least this fraction is kept, [0, 1], or None.
        mask_source: ``latent`` (the paper's latent-difference criterion), ``pixel`` (mean absolute pixel
            difference per 16x16 patch) or ``external`` (a mask supplied with the frames).
        tau_pixel: threshold of the pixel source on values in [0, 1], [0, 1].
        floor: the hard "changed" floor of the ``latent`` source, in latent units, [0, 100], or None (off):
            a token (with a margin of one token) is always recomputed when any of its latent values (every
            channel of its patch) differs from the previous latent frame, or from the input its output was last
            computed from, by more than this, whatever the paper's filters (median, majority, opening) make of
            its neighbourhood (they erase objects smaller than about 2x2 tokens). The default 0.25 is 2.5x the
            largest change webcam noise (Gaussian, sigma 3/255) or a VP8 round trip caused in the demo
            autoencoder's latents (0.09 and 0.10; the latents' std is 0.8), while even a half-token object of
            low contrast moving 16 pixels per frame changed the latents of the tokens it crossed by 0.17 or more
            (the margin covers the rest). Measured with the demo autoencoder only: check it for another one.
        floor_pixel: the same floor for the ``pixel`` source, on pixel values in [0, 1], [0, 1], or None (off):
            a token (with a margin of one token) is always recomputed when, in some colour channel, the mean
            over some cell of its patch changed by more than this, in any pixel frame of the latent frame's
            group against the previous group's last frame, or in the group's last frame against the drift
            reference. A cell is a quarter of the token's side (4x4 pixels for a 16-pixel token): an object of
            half a token covers at least one whole cell wherever it lies, while the mean over 16 pixels quiets
            noise (it is a mean of the signed difference). The default 0.2 (51/255) is 7x the largest cell
            change of webcam-level noise (Gaussian, sigma 3/255: 0.020) or of camera noise after a VP8 round
            trip (0.027), and a mover of contrast 0.2 still shows (tests/lipar_core/lipar/test_fidelity.py).
            With ``dilation`` 0 (the floor and its margin instead of the paper's 5x5 dilation) real clips
            prune more than with the paper's criterion and recall more of their changed tokens at every level
            (bench/results/cpu-mask-sweep.md); the paper's criterion alone missed 8-17 % of them.
        recovery: ``none`` (naive pruning: pruned tokens are absent from attention), ``m_degree`` (pruned
            positions hold duplicated K/V rotated to their own position, copied from the preceding frame of
            the current pass) or ``full`` (M-degree plus noise-aware duplication: duplicates come from the clean
            t = 0 pass of the previous block's last frame).
        bucket: kept-token counts are padded up to a multiple of this (shapes repeat; padding never changes
            results), [1, 4096].
        dilation: spatial radius of the forward-causal dilation (2 -> 5x5), [0, 8].

    Besides attribute access, the settings read like a mapping (``{**cfg}``, ``dict(cfg)``, ``cfg["tau"]``),
    so that ``LiparConfig.model_validate({**preset.lipar, **overrides})`` merges overrides into a preset's
    settings.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(default=True, description="prune unchanged tokens (false: recompute every token)")
    tau: Annotated[float, Field(ge=0.0, le=10.0)] = Field(
        default=0.1, description="short-term threshold of the latent source (higher prunes more)"
    )
    tau2: Annotated[float, Field(ge=0.0, le=10.0)] | None = Field(
        default=0.3, description="long-term drift threshold (null: no drift check)"
    )
    m: tuple[Annotated[int, Field(ge=0, le=64)], Annotated[int, Field(ge=1, le=256)]] | None = Field(
        default=(1, 8), description="attention window: sink frames, recent latent frames"
    )
    min_keep_ratio: Annotated[float, Field(ge=0.0, le=1.0)] | None = Field(
        default=None, description="grow kept regions to at least this fraction per frame"
    )
    mask_source: MaskSource = Field(default="latent", description="what the mask compares")
    tau_pixel: Annotated[float, Field(ge=0.0, le=1.0)] = Field(
        default=0.02, description="threshold of the pixel source (pixel values in [0, 1])"
    )
    floor: Annotated[float, Field(ge=0.0, le=100.0)] | None = Field(
        default=0.25, description="latent source: a token whose latent changed by more than this is kept"
    )
    floor_pixel: Annotated[float, Field(ge=0.0, le=1.0)] | None = Field(
        default=0.2, description="pixel source: a token whose pixels changed by more than this is kept"
    )
    recovery: Recovery = Field(default="full", description="Attention Recovery: none, m_degree or full")
    bucket: Annotated[int, Field(ge=1, le=4096)] = Field(
        default=128, description="kept-token counts are padded to a multiple of this"
    )
    dilation: Annotated[int, Field(ge=0, le=8)] = Field(
        default=2, description="spatial dilation radius (tokens)"
    )

    @model_validator(mode="after")
    def _check(self) -> LiparConfig:
        if self.m is not None and self.m[1] < 1:
            raise ValueError("m[1] (recent frames) must be at least 1")
        return self

    # Mapping protocol (keys + __getitem__): ``{**cfg}`` and ``dict(cfg)`` give every setting by name.
    def keys(self) -> Iterator[str]:
        """The setting names (every field)."""
        return iter(type(self).model_fields)

    def __getitem__(self, name: str) -> Any:
        if name not in type(self).model_fields:
            raise KeyError(name)
        return getattr(self, name)
