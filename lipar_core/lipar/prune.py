"""Token pruning: the kept-token index set of one block, padded to a bucket so that shapes repeat."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


def padded_count(n_keep: int, n_total: int, bucket: int) -> int:
    """Tokens a pass computes for ``n_keep`` kept of ``n_total``: the count rounded up to a multiple of
    ``bucket``, capped at ``n_total`` (0 when nothing is kept)."""
    return min(n_total, math.ceil(n_keep / bucket) * bucket) if n_keep else 0


def kept_order(flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The kept tokens' indices of a block, on the device with no host synchronisation (a few kernels: a
    cumulative sum and one scatter, no sort; capturable in a CUDA graph).

    Args:
        flat: [N] bool, N >= 1 (True = keep).
    Returns:
        (count, padded): the kept count, int64 []; [N] int64, the kept indices in ascending order, then the
        last kept index repeated (index 0 when nothing is kept). The same as a stable argsort of ``~flat``
        with its tail replaced by the last kept index.
    """
    n = flat.shape[0]
    pos = torch.arange(n, device=flat.device)
    kept_upto = flat.long().cumsum(0)  # kept tokens at or before each position
    count = kept_upto[-1]
    # kept tokens go to their rank among the kept, the others after all of them in their own order: a permutation
    dest = torch.where(flat, kept_upto - 1, count + pos - kept_upto)
    order = torch.empty_like(pos).scatter_(0, dest, pos)
    last = order.gather(0, (count - 1).clamp(min=0).reshape(1))
    return count, torch.where(pos < count, order, last)


@dataclass(frozen=True)
class KeepSet:
    """Which tokens of a block are recomputed.

    Attributes:
        mask: [N] bool over the block's tokens in (t, h, w) order (True = keep).
        idx: [n_pad] int64 indices of kept tokens in ascending order, padded up to a multiple of the bucket
            by repeating the last kept index. A repeated token computes exactly what its original computes
            (queries are per token) and writes identical values to the same places, so padding never changes
            results.
        n_keep: number of kept tokens (host int).
        n_total: tokens in the block (host int).
    """

    mask: torch.Tensor
    idx: torch.Tensor
    n_keep: int
    n_total: int

    @property
    def n_pad(self) -> int:
        """Tokens actually computed (the bucketed count)."""
        return int(self.idx.shape[0])

    @property
    def prune_ratio(self) -> float:
        """Fraction of the block's tokens that are pruned."""
        return 1.0 - self.n_keep / self.n_total

    @property
    def full(self) -> bool:
        """True when nothing is pruned."""
        return self.n_keep == self.n_total

    @classmethod
    def from_mask(cls, keep: torch.Tensor, bucket: int = 128) -> KeepSet:
        """Build the index set from a block mask [1, F, gh, gw] (or [F, gh, gw]) bool.

        Reads the kept count on the host: the one synchronisation per block, since the count sets the shapes
        of every layer's tensors (padding to buckets keeps the number of distinct shapes small). To overlap
        that wait with other host work, use :meth:`begin` and :meth:`PendingKeepSet.result`.
        """
        return cls.begin(keep, bucket).result()

    @classmethod
    def begin(
        cls,
        keep: torch.Tensor,
        bucket: int = 128,
        order: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> PendingKeepSet:
        """Start building the index set: everything on the device, the kept count on its way to the host.

        The kept indices, already padded for any count (positions past the count repeat the last kept index),
        are computed on the device; the count is copied to pinned host memory without blocking. The host
        waits only in :meth:`PendingKeepSet.result`, so work queued in between overlaps the device's mask
        computation. ``order``: :func:`kept_order` of the mask when the caller already has it (the prune mask
        computes it inside its CUDA graph).
        """
        flat = keep.reshape(-1)
        n_total = int(flat.shape[0])
        count, padded = kept_order(flat) if order is None else order
        if flat.is_cuda:
            host = torch.empty((), dtype=count.dtype, pin_memory=True)
            host.copy_(count, non_blocking=True)
            ready: torch.cuda.Event | None = torch.cuda.Event()
            assert ready is not None
            ready.record()
        else:
            host, ready = count, None
        return PendingKeepSet(flat, padded, host, ready, n_total, bucket)


@dataclass(frozen=True)
class PendingKeepSet:
    """A :class:`KeepSet` whose kept count is still on its way to the host (:meth:`KeepSet.begin`).

    Attributes:
        mask: [N] bool token mask.
        padded: [N] int64 kept indices first (ascending), the rest repeating the last kept index.
        count: the kept count, int64 [] in pinned host memory once ``ready`` has completed.
        ready: CUDA event after the count's copy (None on the CPU: the count is already there).
        n_total: tokens in the block.
        bucket: padding multiple.
    """

    mask: torch.Tensor
    padded: torch.Tensor
    count: torch.Tensor
    ready: torch.cuda.Event | None
    n_total: int
    bucket: int

    def result(self) -> KeepSet:
        """Wait for the count (the block's host synchronisation) and return the index set."""
        if self.ready is not None:
            self.ready.synchronize()
        n_keep = int(self.count)
        n_pad = padded_count(n_keep, self.n_total, self.bucket)
        return KeepSet(mask=self.mask, idx=self.padded[:n_pad], n_keep=n_keep, n_total=self.n_total)
