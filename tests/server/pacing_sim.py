"""A discrete-event fake clock for the outbound track: blocks are put at scheduled times, the track's pacing
sleeps advance the clock (running the puts that fall inside them first), so a whole session plays out in
simulated time, deterministically, in milliseconds of real time."""

from __future__ import annotations

import asyncio
import heapq
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np

from server.rtc.outbound import EditedVideoTrack, OutFrame, PlayoutDelay

CLOCK = 90_000
_RGB = np.zeros((2, 2, 3), np.uint8)


@dataclass
class FakeClock:
    """Simulated monotonic time (s) with scheduled callbacks."""

    t: float = 0.0
    _events: list[tuple[float, int, Callable[[], object]]] = field(default_factory=list)
    _seq: int = 0

    def now(self) -> float:
        return self.t

    def at(self, t: float, fn: Callable[[], object]) -> None:
        heapq.heappush(self._events, (t, self._seq, fn))
        self._seq += 1

    @property
    def next_event(self) -> float | None:
        return self._events[0][0] if self._events else None

    def run_until(self, t: float) -> None:
        """Run every callback due by ``t`` in time order, then stand at ``t`` (time never goes back)."""
        while self._events and self._events[0][0] <= t:
            te, _, fn = heapq.heappop(self._events)
            self.t = max(self.t, te)
            fn()
        self.t = max(self.t, t)

    async def sleep(self, dt: float) -> None:
        self.run_until(self.t + dt)


@dataclass
class Sent:
    at: float  # when handed to the encoder (s)
    pts: int
    arrived: float  # the input frame's arrival (s)

    @property
    def latency(self) -> float:
        return self.at - self.arrived


def block_frames(b: int, fpb: int, fps: float, net_s: Callable[[int], float] | None = None) -> list[OutFrame]:
    """Block ``b`` of a 90 kHz stream at ``fps``: frame k captured at k / fps, arriving ``net_s(k)`` later."""
    step = round(CLOCK / fps)
    frames = []
    for k in range(b * fpb, (b + 1) * fpb):
        arrived = k / fps + (net_s(k) if net_s is not None else 0.005)
        frames.append(OutFrame(_RGB, k * step, 1 / CLOCK, arrived))
    return frames


async def simulate(
    schedule: Iterable[tuple[int, float]],
    fpb: int = 12,
    fps: float = 30.0,
    encode_s: float = 0.004,
    net_s: Callable[[int], float] | None = None,
    playout: PlayoutDelay | None = None,
) -> tuple[list[Sent], EditedVideoTrack]:
    """Play blocks ``(index, arrival time)`` through a track the way aiortc's sender pulls it (``recv``, then
    ``encode_s`` of encoding, then ``recv`` again); returns every frame sent and the track."""
    clock = FakeClock()
    sent: list[Sent] = []
    track = EditedVideoTrack(
        3 * fpb,
        lambda f, now: sent.append(Sent(now, f.pts, f.arrived)),
        max_backlog=fpb + fpb // 2,
        clock=clock.now,
        sleep=clock.sleep,
        playout=playout,
    )
    for b, t in schedule:
        clock.at(t, lambda fr=block_frames(b, fpb, fps, net_s): track.put(fr))

    while True:
        if track.queued == 0:
            nxt = clock.next_event
            if nxt is None:
                return sent, track
            clock.run_until(nxt)  # the sender waits for the next block
            continue
        await asyncio.wait_for(track.recv(), 5)  # returns at once in real time: the queue is not empty
        clock.run_until(clock.t + encode_s)


def gaps(sent: list[Sent], after: float = 0.0) -> np.ndarray:
    """Intervals between consecutive sends at or after ``after`` (s)."""
    return np.diff([s.at for s in sent if s.at >= after])
