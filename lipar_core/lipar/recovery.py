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


def fill_index(keep: torch.Tensor, frames: int, cascade: bool) -> torch.Tensor:
    """Where each position of a pruned block takes its K/V from, as rows of ``cat([prev, kept], dim=1)``.

    ``prev`` is the previous block's last frame ([B, T, ...], rows 0..T-1) and ``kept`` the computed rows of
    the kept tokens in ascending token order (rows T.., padded rows past the kept count are never named).
    A kept position takes its own computed row. A pruned position takes:

    - ``cascade=True``: its true temporal predecessor, i.e. the same spatial position in the latest earlier
      frame of the block where it was kept, or ``prev`` if it was pruned in every earlier frame of the block
      (so a token pruned for several frames carries the value it was last computed with: the clean t = 0
      pass and the M-degree passes);
    - ``cascade=False``: ``prev`` (noise-aware duplication: the previous block's clean last frame).

    Computed on the device once per pass (a few small kernels over the block mask, no host synchronisation);
    :func:`gather_rows` then fills a whole block in one gather, which ``torch.compile`` fuses with RoPE.

    Args:
        keep: [F * T] bool block token mask in (t, h, w) order (True = kept).
        frames: F, latent frames (token frames) of the block.
        cascade: predecessor (True) or the previous block's frame (False) for pruned positions.
    Returns:
        [F * T] int64 row indices into ``cat([prev, kept], dim=1)``.
    """
    n = keep.shape[0]
    t = n // frames
    pos = torch.arange(t, device=keep.device)
    rank = torch.cumsum(keep.to(torch.int64), 0) - 1  # row among the kept tokens (valid where kept)
    m = keep.view(frames, t)
    if not cascade:
        return torch.where(m, t + rank.view(frames, t), pos).reshape(n)
    frame = torch.arange(frames, device=keep.device).view(frames, 1).expand(frames, t)
    last = torch.where(m, frame, -1).cummax(dim=0).values  # latest frame <= j where the position was kept
    src_token = (last.clamp(min=0) * t + pos).reshape(n)
    return torch.where(last.reshape(n) >= 0, t + rank.index_select(0, src_token), pos.repeat(frames))


def gather_rows(kept: torch.Tensor, prev: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Rows of ``cat([prev, kept], dim=1)`` at ``index`` (:func:`fill_index`).

    Args:
        kept: [B, n, ...] computed rows of the kept tokens (ascending token order, padding allowed).
        prev: [B, T, ...] previous block's last frame.
        index: [M] int64 rows.
    Returns:
        [B, M, ...].
    """
    return torch.cat([prev, kept], dim=1).index_select(1, index)
