"""Bounded drop-oldest frame ring. Server process, event loop thread only (no locking).

A live stream must never queue up seconds of video: when the ring is full the OLDEST frame is dropped and
counted, so what the model sees next is as recent as possible.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class InFrame:
    """One decoded input frame.

    Attributes:
        rgb: uint8 ``[H, W, 3]`` at the model's resolution (may be a view with strides, e.g. a crop).
        pts: presentation timestamp of the input frame, in ``time_base`` units (from RTP).
        time_base: seconds per ``pts`` unit.
        arrived: ``time.monotonic()`` when the decoded frame reached the event loop, before its colour
            conversion (the latency origin), seconds.
    """

    rgb: np.ndarray
    pts: int
    time_base: float
    arrived: float


class FrameRing:
    """Holds at most ``capacity`` frames; :meth:`push` drops the oldest when full."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self._frames: collections.deque[InFrame] = collections.deque()
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._frames)

    def push(self, frame: InFrame) -> int:
        """Append ``frame``; return how many old frames were dropped to make room (0 or 1)."""
        dropped = 0
        if len(self._frames) >= self.capacity:
            self._frames.popleft()
            dropped = 1
            self.dropped += 1
        self._frames.append(frame)
        return dropped

    def pop_block(self, n: int) -> list[InFrame] | None:
        """Remove and return the oldest ``n`` frames in order, or None if fewer are held."""
        if len(self._frames) < n:
            return None
        return [self._frames.popleft() for _ in range(n)]

    def clear(self) -> None:
        """Drop everything held (not counted as dropped)."""
        self._frames.clear()
