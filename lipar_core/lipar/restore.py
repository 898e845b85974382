"""Restoration (LIPAR.md §5): full latents for the decoder from a per-position last-output buffer.

Pruned positions take their true temporal predecessor's output: frame 0 of a block from the previous block's
last output frame, frame j from frame j-1 of the same block (already restored). At every denoising step the
copied values are the exact previous outputs (no sigma mismatch, unlike the reference's flow-based fill), and
the buffer is per stream and reset with it (no leak across streams, §8.2 bug 9).
"""

from __future__ import annotations

import torch


class RestorationBuffer:
    """The last output latent frame of one stream, [B, 1, C, h, w]."""

    def __init__(self, patch_hw: tuple[int, int]) -> None:
        self.patch_hw = patch_hw
        self.last: torch.Tensor | None = None

    def reset(self) -> None:
        """Forget the stream."""
        self.last = None

    def fill(self, fresh: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """Restore pruned positions.

        Args:
            fresh: [B, F, C, h, w] x0 (valid at kept positions).
            keep: [F, gh, gw] or [B, F, gh, gw] bool token mask.
        Returns:
            [B, F, C, h, w] with pruned positions copied from the predecessor.
        """
        ph, pw = self.patch_hw
        k = keep.reshape(-1, *keep.shape[-3:])[0]
        k = k.repeat_interleave(ph, dim=1).repeat_interleave(pw, dim=2)[:, None]  # [F, 1, h, w]
        rows = []
        last = self.last[:, 0] if self.last is not None else None
        for j in range(fresh.shape[1]):
            cur = fresh[:, j] if last is None else torch.where(k[j], fresh[:, j], last)
            rows.append(cur)
            last = cur
        return torch.stack(rows, dim=1)

    def commit(self, x0: torch.Tensor) -> None:
        """Remember the block's final output ([B, F, C, h, w]); its last frame feeds the next block."""
        self.last = x0[:, -1:].detach().clone()
