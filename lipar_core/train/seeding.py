"""Seeded randomness of the training data: every random choice is drawn from a ``torch.Generator`` seeded from
``(seed, name)``, so the same arguments give the same stream bit for bit on any machine (CPU generators only).
"""

from __future__ import annotations

import hashlib

import torch


def source_generator(seed: int, source: str) -> torch.Generator:
    """A CPU generator seeded from (seed, source), so equal seeds on different sources give unrelated clips."""
    mixed = int.from_bytes(hashlib.blake2b(f"{seed}:{source}".encode(), digest_size=8).digest(), "little")
    return torch.Generator().manual_seed(mixed >> 1)


def uniform(g: torch.Generator, lo: float, hi: float) -> float:
    """Uniform float in [lo, hi) (one float64 draw from ``g``)."""
    return lo + (hi - lo) * float(torch.rand((), generator=g, dtype=torch.float64))


def randint(g: torch.Generator, lo: int, hi: int) -> int:
    """Uniform integer in [lo, hi]."""
    return int(torch.randint(lo, hi + 1, (), generator=g))


def bernoulli(g: torch.Generator, p: float) -> bool:
    """True with probability ``p`` (one float64 draw from ``g``)."""
    return float(torch.rand((), generator=g, dtype=torch.float64)) < p
