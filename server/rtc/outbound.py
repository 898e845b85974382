"""Outbound video: the session's edited frames as an aiortc track, played out behind an adaptive delay.

Server process, event loop thread (everything here; the track's ``recv`` is awaited by aiortc's RTP sender
task, which then encodes the returned frame in a thread of the loop's default executor).

Each edited frame keeps the RTP timestamp (``pts``, ``time_base``) of the input frame it was made from, so a
client can pair every output frame with its input frame, and the output has the input's frame rate.

Pacing is a jitter buffer (:class:`PlayoutDelay`). A frame's capture time on the server clock is
``c = pts_s + offset``, where ``offset`` is the smallest ``arrived - pts_s`` seen (the earliest-arrival clock
offset: the input frame that came fastest defines "no delay"). The frame is due at ``c + D``. The playout delay
``D`` (seconds) follows what the blocks need: a block whose first frame arrives ``need = now - c_first +
margin`` after its capture

* raises ``D`` to ``need`` at once when ``need > D`` (its frames then go out from now on, evenly spaced, not in
  a burst);
* otherwise ``D`` decays towards a high quantile of the needs seen over the last few seconds: exponentially
  (time constant ``decay_tau_s``; a few ms per block when close) and never faster than ``max_decay_rate``
  seconds per second (the output then plays at most that much faster than real time, evenly).

So latency converges to gather + compute + a small margin. If the sender asks for its first frame only after
the first block came (the connection was still being set up), ``D`` is raised so the playout starts then,
evenly. When the input has a hole (frames dropped upstream) and the output would sit idle although a frame is
waiting, ``D`` drops at once to close the hole (never below what the waiting frame's block needed, nor below the
recent quantile). Frames that are still due more than ``max_backlog`` frame intervals late when the sender asks
for them (a stalled sender or event loop) are skipped and counted as drops, so a stall costs frames, not
permanent latency. The queue holds at most ``capacity`` frames (the oldest is dropped and counted beyond that).

``D`` never rises because the sender pulls late (an encoder slower than the frame rate would otherwise push it
up without bound); only block arrivals raise it.

``on_sent`` is called for every frame returned by :meth:`EditedVideoTrack.recv`, i.e. handed to the encoder:
aiortc 1.16's sender encodes every frame it receives from ``recv`` (it only skips frames while the sender is
disabled, which this server never does, and its VP8 / H.264 encoders return a payload for every frame).
"""

from __future__ import annotations

import asyncio
import collections
import fractions
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import av
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

log = logging.getLogger(__name__)

_DEFAULT_INTERVAL_S = 1 / 30  # frame interval assumed until the input's pts tell it (s)


@dataclass(frozen=True)
class OutFrame:
    """One edited frame: uint8 ``[H, W, 3]`` RGB with its input frame's ``pts``/``time_base`` and arrival time."""

    rgb: np.ndarray
    pts: int
    time_base: float
    arrived: float


@dataclass(frozen=True)
class _Queued:
    """A queued frame with its capture time ``c`` on the server clock and its block's need (both seconds)."""

    frame: OutFrame
    c: float
    need: float


class PlayoutDelay:
    """The adaptive playout delay ``D`` of one track (see the module docstring). Event loop thread.

    All times are seconds on the server's monotonic clock.

    Args:
        margin_s: added to every block's need (absorbs the loop's scheduling of ``recv``), s.
        window_s: how far back the needs are remembered for the decay target, s.
        quantile: the decay target is this quantile of the remembered needs.
        decay_tau_s: time constant of the exponential decay of ``D`` towards the target, s.
        max_decay_rate: the fastest decay, seconds of delay per second (0.25: play at most 25 % fast).
    """

    def __init__(
        self,
        margin_s: float = 0.01,
        window_s: float = 2.0,
        quantile: float = 0.9,
        decay_tau_s: float = 1.0,
        max_decay_rate: float = 0.25,
    ) -> None:
        if not (0.0 <= quantile <= 1.0 and decay_tau_s > 0 and max_decay_rate > 0 and window_s > 0):
            raise ValueError("need 0 <= quantile <= 1 and positive window_s, decay_tau_s, max_decay_rate")
        self.margin_s, self.window_s, self.quantile = margin_s, window_s, quantile
        self.decay_tau_s, self.max_decay_rate = decay_tau_s, max_decay_rate
        self.offset: float | None = None  # smallest arrived - pts_s seen (s)
        self._delay: float | None = None  # D at time self._t (s)
        self._t = 0.0
        self._needs: collections.deque[tuple[float, float]] = collections.deque()  # (time, need)

    def capture_times(self, frames: list[OutFrame]) -> list[float]:
        """Capture times of ``frames`` on the server clock (s), after updating the earliest-arrival clock offset
        with all of them (frames that arrived in a burst keep their input spacing)."""
        pts_s = [f.pts * f.time_base for f in frames]
        lag = min(f.arrived - p for f, p in zip(frames, pts_s, strict=True))
        if self.offset is None or lag < self.offset:
            self.offset = lag
        return [p + self.offset for p in pts_s]

    def on_block(self, c_first: float, now: float) -> float:
        """A block whose first frame was captured at ``c_first`` arrived at ``now``; returns its need (s)."""
        need = now - c_first + self.margin_s
        self._needs.append((now, need))
        if self._delay is None or need > self.delay_at(now):
            self._delay, self._t = need, now  # rise at once
        return need

    def target(self, now: float) -> float | None:
        """The decay target: ``quantile`` of the needs of the last ``window_s`` (None before any block)."""
        while self._needs and self._needs[0][0] < now - self.window_s and len(self._needs) > 1:
            self._needs.popleft()
        if not self._needs:
            return None
        needs = sorted(n for _, n in self._needs)
        return needs[int(self.quantile * (len(needs) - 1))]

    def delay_at(self, now: float) -> float:
        """``D`` at ``now`` (s), after decaying towards the target since the last call (0 before any block)."""
        if self._delay is None:
            return 0.0
        target = self.target(now)
        dt = max(0.0, now - self._t)
        self._t = now
        if target is not None and self._delay > target and dt > 0:
            excess = self._delay - target
            linear_until = self.max_decay_rate * self.decay_tau_s  # above this excess the rate is capped
            if excess > linear_until:
                t_lin = (excess - linear_until) / self.max_decay_rate
                if dt <= t_lin:
                    excess -= self.max_decay_rate * dt
                    dt = 0.0
                else:
                    excess, dt = linear_until, dt - t_lin
            excess *= math.exp(-dt / self.decay_tau_s)
            self._delay = target + excess
        return self._delay

    def raise_to(self, delay: float, now: float) -> float:
        """Raise ``D`` to ``delay`` if it is below it (rises are immediate); returns ``D``."""
        if delay > self.delay_at(now):
            self._delay = delay
        return self.delay_at(now)

    def lower(self, delay: float, floor: float, now: float) -> float:
        """Lower ``D`` to ``max(delay, floor, target)`` if that is below it (closing a hole); returns ``D``."""
        current = self.delay_at(now)
        target = self.target(now)
        new = max(delay, floor, target if target is not None else floor)
        if new < current:
            self._delay = new
        return self.delay_at(now)


class EditedVideoTrack(MediaStreamTrack):
    """A video track that plays out :class:`OutFrame` s; ``on_sent(frame, now)`` is called for each sent.

    Args:
        capacity: most frames queued; beyond it the oldest is dropped (counted).
        on_sent: called with each frame handed to the encoder and the time (s, ``clock``).
        max_backlog: frames due more than this many frame intervals ago when the sender asks for the next
            frame are skipped (counted). Default: ``capacity``.
        on_dropped: called with the number of frames dropped or skipped.
        clock: the monotonic clock, s (injectable for tests).
        sleep: the pacing sleep (injectable for tests; ``asyncio.sleep`` by default).
        playout: the playout delay policy (default :class:`PlayoutDelay` ()).
    """

    kind = "video"

    def __init__(
        self,
        capacity: int,
        on_sent: Callable[[OutFrame, float], None],
        max_backlog: int | None = None,
        on_dropped: Callable[[int], None] | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
        playout: PlayoutDelay | None = None,
    ) -> None:
        super().__init__()
        self.capacity = capacity
        self.max_backlog = max_backlog if max_backlog is not None else capacity
        self.on_sent = on_sent
        self.on_dropped = on_dropped
        self.clock, self.sleep = clock, sleep
        self.playout = playout if playout is not None else PlayoutDelay()
        self._queue: collections.deque[_Queued] = collections.deque()
        self._wake = asyncio.Event()
        self._ended = False
        self._deltas: collections.deque[float] = collections.deque(maxlen=31)  # recent pts steps (s)
        self._interval = _DEFAULT_INTERVAL_S
        self._last_c: float | None = None  # capture time of the last frame put (s)
        self._last_due: float | None = None  # due time of the last frame sent (s)
        self.dropped = 0
        #: also called with every frame handed to the encoder (read-only viewers, :mod:`server.rtc.viewers`); each
        #: must be quick and never raise
        self.frame_listeners: list[Callable[[OutFrame], None]] = []

    @property
    def queued(self) -> int:
        """Edited frames waiting to be sent.

        (Not ``__len__``: aiortc tests tracks for truth, and an empty track must still be a track.)
        """
        return len(self._queue)

    @property
    def delay_s(self) -> float:
        """The current playout delay ``D`` (s; 0 before the first block)."""
        return self.playout.delay_at(self.clock())

    @property
    def interval_s(self) -> float:
        """The input's frame interval estimated from the pts of the frames put (s)."""
        return self._interval

    def put(self, frames: list[OutFrame]) -> int:
        """Queue one block of edited frames, in order; returns how many old frames were dropped (capacity)."""
        if not frames:
            return 0
        now = self.clock()
        cs = self.playout.capture_times(frames)
        need = self.playout.on_block(cs[0], now)
        dropped = 0
        for f, c in zip(frames, cs, strict=True):
            if self._last_c is not None and c > self._last_c:
                self._deltas.append(c - self._last_c)
            self._last_c = c
            if len(self._queue) >= self.capacity:
                self._queue.popleft()
                dropped += 1
            self._queue.append(_Queued(f, c, need))
        if self._deltas:
            self._interval = float(np.median(self._deltas))
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
        """The next edited frame, at its due time (see the module docstring)."""
        while True:
            while not self._queue:
                if self._ended or self.readyState != "live":
                    raise MediaStreamError
                self._wake.clear()
                await self._wake.wait()
            now = self.clock()
            delay = self.playout.delay_at(now)
            late_limit = self.max_backlog * self._interval
            skipped = 0
            while self._queue and now - (self._queue[0].c + delay) > late_limit:
                self._queue.popleft()
                skipped += 1
            self._count_drops(skipped)
            if self._queue:
                break
        head = self._queue.popleft()
        due = head.c + delay
        if self._last_due is None and due < now:
            # the sender started after the first block came (connection still being set up): start the
            # playout from now rather than rushing the overdue frames out back to back
            delay = self.playout.raise_to(now - head.c, now)
            due = head.c + delay
        elif self._last_due is not None:
            earliest = max(now, self._last_due + self._interval)
            if due > earliest + 0.5 * self._interval:  # a hole in the input: do not sit idle through it
                delay = self.playout.lower(earliest - head.c, head.need, now)
                due = head.c + delay
        self._last_due = due
        if due > now:
            await self.sleep(due - now)  # pacing to the due time, not synchronisation
        f = head.frame
        frame = av.VideoFrame.from_ndarray(f.rgb, format="rgb24")
        frame.pts = f.pts
        frame.time_base = fractions.Fraction(f.time_base).limit_denominator(1_000_000)
        self.on_sent(f, self.clock())
        for listener in tuple(self.frame_listeners):
            listener(f)
        return frame
