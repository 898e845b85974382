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


class FrameThinner:
    """Keeps an evenly spread share of a session's input frames when its model cannot keep up with the input.

    A block of ``frames_per_block`` frames takes the worker ``block_s`` seconds (an exponential average of the
    blocks' model time), so the session sustains ``frames_per_block / block_s`` frames per second. When the
    input comes faster, only the share ``headroom * sustained / input_fps`` of frames is kept, spread evenly (a
    credit accumulator: at a share of 0.5 every other frame), so the frames of a block are evenly spaced in time
    and the edited video plays evenly at the rate the model sustains. Without this the ring drops whole runs of
    frames between blocks: each block plays its frames at the input's spacing and then the output stalls until
    the next one (bursts). At or below the sustained rate every frame is kept. Event loop thread.

    Args:
        frames_per_block: pixel frames per model block.
        headroom: the share of the sustained rate aimed at (below 1: the worker stays a little ahead, so the
            ring does not fill up and latency stays at gather + compute).
        alpha: weight of the newest block in the average of block times.
    """

    def __init__(self, frames_per_block: int, headroom: float = 0.95, alpha: float = 0.25) -> None:
        if frames_per_block < 1 or not 0 < headroom <= 1 or not 0 < alpha <= 1:
            raise ValueError("frames_per_block >= 1, headroom in (0, 1] and alpha in (0, 1] required")
        self.frames_per_block = frames_per_block
        self.headroom, self.alpha = headroom, alpha
        self.block_s: float | None = None
        self._credit = 0.0  # plus a share of 1 before the first block: the first frames are all kept
        self.kept = self.skipped = 0

    def on_block(self, seconds: float) -> None:
        """A block of this session took ``seconds`` of model time."""
        if seconds > 0:
            self.block_s = (
                seconds if self.block_s is None else self.block_s + self.alpha * (seconds - self.block_s)
            )

    def share(self, input_fps: float) -> float:
        """The share of input frames kept at ``input_fps`` (1.0 before the first block or when it keeps up)."""
        if self.block_s is None or input_fps <= 0:
            return 1.0
        return min(1.0, self.headroom * self.frames_per_block / self.block_s / input_fps)

    def keep(self, input_fps: float) -> bool:
        """Whether to keep the next input frame (the input currently arrives at ``input_fps``)."""
        self._credit = min(self._credit + self.share(input_fps), 2.0)
        if self._credit >= 1.0:
            self._credit -= 1.0
            self.kept += 1
            return True
        self.skipped += 1
        return False
