"""Outbound video: the session's edited frames as an aiortc track, paced at the input rate.

Server process, event loop. Edited frames arrive a block at a time; the track plays them out with the same
spacing they had on input: each edited frame keeps the RTP timestamp (``pts``, ``time_base``) of the input frame
it was made from, and is sent at ``anchor + (pts - anchor_pts)``. A client can therefore pair every output
frame with its input frame (identity and order), and the output has the input's frame rate. The queue is
bounded and drops the oldest frame when full; and since pacing at the input rate can never drain a backlog,
frames beyond ``max_backlog`` waiting at send time are skipped (oldest first) and the clock re-anchored, so a
stall upstream costs dropped frames, not permanent latency.
"""

from __future__ import annotations

import asyncio
import collections
import fractions
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import av
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

log = logging.getLogger(__name__)

#: a frame later than this behind its slot, or this far ahead, re-anchors the pacing clock (seconds)
_LATE_S = 0.25
_EARLY_S = 1.0


@dataclass(frozen=True)
class OutFrame:
    """One edited frame: uint8 ``[H, W, 3]`` RGB with its input frame's ``pts``/``time_base`` and arrival time."""

    rgb: np.ndarray
    pts: int
    time_base: float
    arrived: float


class EditedVideoTrack(MediaStreamTrack):
    """A video track that plays out :class:`OutFrame` s; ``on_sent(frame, now)`` is called for each sent."""

    kind = "video"

    def __init__(
        self,
        capacity: int,
        on_sent: Callable[[OutFrame, float], None],
        max_backlog: int | None = None,
        on_dropped: Callable[[int], None] | None = None,
    ) -> None:
        super().__init__()
        self.capacity = capacity
        self.max_backlog = max_backlog if max_backlog is not None else capacity
        self.on_sent = on_sent
        self.on_dropped = on_dropped
        self._queue: collections.deque[OutFrame] = collections.deque()
        self._wake = asyncio.Event()
        self._ended = False
        self._anchor: tuple[float, float] | None = None  # (monotonic time, pts seconds)
        self.dropped = 0

    @property
    def queued(self) -> int:
        """Edited frames waiting to be sent.

        (Not ``__len__``: aiortc tests tracks for truth, and an empty track must still be a track.)
        """
        return len(self._queue)

    def put(self, frames: list[OutFrame]) -> int:
        """Queue edited frames in order; returns how many old frames were dropped to stay bounded."""
        dropped = 0
        for f in frames:
            if len(self._queue) >= self.capacity:
                self._queue.popleft()
                dropped += 1
            self._queue.append(f)
        self._count_drops(dropped)
        self._wake.set()
        return dropped

    def _count_drops(self, n: int) -> None:
        if n:
            self.dropped += n
            if self.on_dropped is not None:
                self.on_dropped(n)

    def end(self) -> None:
        """No more frames: ``recv`` raises ``MediaStreamError`` once the queue is empty."""
        self._ended = True
        self._wake.set()
        self.stop()

    async def recv(self) -> av.VideoFrame:
        """The next edited frame, at its paced time."""
        while not self._queue:
            if self._ended or self.readyState != "live":
                raise MediaStreamError
            self._wake.clear()
            await self._wake.wait()
        skipped = 0
        while len(self._queue) > self.max_backlog:
            self._queue.popleft()
            skipped += 1
        if skipped:
            self._count_drops(skipped)
            self._anchor = None  # catch up: start pacing again from the freshest frames
        f = self._queue.popleft()
        t_pts = f.pts * f.time_base
        now = time.monotonic()
        if self._anchor is None:
            self._anchor = (now, t_pts)
        due = self._anchor[0] + (t_pts - self._anchor[1])
        if due < now - _LATE_S or due > now + _EARLY_S:
            self._anchor = (now, t_pts)
            due = now
        if due > now:
            await asyncio.sleep(due - now)  # pacing to the input rate, not synchronisation
        frame = av.VideoFrame.from_ndarray(f.rgb, format="rgb24")
        frame.pts = f.pts
        frame.time_base = fractions.Fraction(f.time_base).limit_denominator(1_000_000)
        self.on_sent(f, time.monotonic())
        return frame
