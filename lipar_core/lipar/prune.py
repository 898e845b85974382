"""Token pruning: the kept-token index set of one block, padded to a bucket so that shapes repeat."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


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
        of every layer's tensors (padding to buckets keeps the number of distinct shapes small).
        """
        flat = keep.reshape(-1)
        n_total = int(flat.shape[0])
        n_keep = int(flat.sum())  # host sync: the data-dependent shape of this block
        n_pad = min(n_total, math.ceil(n_keep / bucket) * bucket) if n_keep else 0
        order = torch.argsort((~flat).to(torch.int8), stable=True)  # kept indices first, ascending
        idx = order[:n_pad].clone()
        if n_keep and n_pad > n_keep:
            idx[n_keep:] = idx[n_keep - 1]
        return cls(mask=flat, idx=idx, n_keep=n_keep, n_total=n_total)
