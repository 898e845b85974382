"""LIPAR settings: one pydantic model with every knob and its documented range."""

from __future__ import annotations

from typing import Annotated, Literal

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
        recovery: ``none`` (naive pruning: pruned tokens are absent from attention), ``m_degree`` (pruned
            positions hold duplicated K/V rotated to their own position, copied from the preceding frame of
            the current pass) or ``full`` (M-degree plus noise-aware duplication: duplicates come from the clean
            t = 0 pass of the previous block's last frame).
        bucket: kept-token counts are padded up to a multiple of this (shapes repeat; padding never changes
            results), [1, 4096].
        dilation: spatial radius of the forward-causal dilation (2 -> 5x5), [0, 8].
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    tau: Annotated[float, Field(ge=0.0, le=10.0)] = 0.1
    tau2: Annotated[float, Field(ge=0.0, le=10.0)] | None = 0.3
    m: tuple[Annotated[int, Field(ge=0, le=64)], Annotated[int, Field(ge=1, le=256)]] | None = (1, 8)
    min_keep_ratio: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    mask_source: MaskSource = "latent"
    tau_pixel: Annotated[float, Field(ge=0.0, le=1.0)] = 0.02
    recovery: Recovery = "full"
    bucket: Annotated[int, Field(ge=1, le=4096)] = 128
    dilation: Annotated[int, Field(ge=0, le=8)] = 2

    @model_validator(mode="after")
    def _check(self) -> LiparConfig:
        if self.m is not None and self.m[1] < 1:
            raise ValueError("m[1] (recent frames) must be at least 1")
        return self
