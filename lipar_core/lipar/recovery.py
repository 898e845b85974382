"""Attention Recovery helpers (LIPAR.md §4): K/V for pruned positions.

Pruned tokens emit no queries, but they stay present as keys and values at their own positions:

- M-degree approximation: a pruned position holds the un-rotated K and the V of the token it duplicates,
  rotated with RoPE to the pruned token's own (t, h, w) position.
- Noise-aware duplication: during the noisy denoising passes the duplicates come from the clean t = 0 pass
  of the previous block's last frame (stored un-rotated per layer), not from noisy neighbours.

These functions work on un-rotated tensors of one block, [B, F * tokens_per_frame, heads, head_dim].
"""

from __future__ import annotations

import torch


def scatter_kept(values: torch.Tensor, idx: torch.Tensor, n_total: int) -> torch.Tensor:
    """Kept-token rows [B, n, ...] into a zero block [B, n_total, ...] at ``idx`` (duplicates identical)."""
    out = values.new_zeros((values.shape[0], n_total, *values.shape[2:]))
    return out.index_copy_(1, idx, values)


def cascade_fill(
    fresh: torch.Tensor, keep: torch.Tensor, prev: torch.Tensor | None, frames: int
) -> torch.Tensor:
    """Fill pruned positions from the true temporal predecessor.

    Frame 0's pruned positions take ``prev`` (the previous block's last frame); frame j's take frame j-1's
    (already filled) values. So a token pruned for several frames carries the value it was last computed with.

    Args:
        fresh: [B, F * T, ...] with valid values at kept positions.
        keep: [F * T] bool (block token mask).
        prev: [B, T, ...] previous frame, or None (then pruned positions of frame 0 keep ``fresh``).
        frames: F.
    Returns:
        [B, F * T, ...] filled.
    """
    b, n = fresh.shape[:2]
    t = n // frames
    f = fresh.reshape(b, frames, t, *fresh.shape[2:])
    k = keep.reshape(frames, t).view(frames, t, *([1] * (fresh.ndim - 2)))
    rows = []
    last = prev
    for j in range(frames):
        cur = f[:, j] if last is None else torch.where(k[j], f[:, j], last)
        rows.append(cur)
        last = cur
    return torch.stack(rows, dim=1).reshape(fresh.shape)


def repeat_frames(frame: torch.Tensor, frames: int) -> torch.Tensor:
    """[B, T, ...] -> [B, frames * T, ...] (the same frame for every frame of the block)."""
    return (
        frame.unsqueeze(1)
        .expand(frame.shape[0], frames, *frame.shape[1:])
        .reshape(frame.shape[0], frames * frame.shape[1], *frame.shape[2:])
    )
