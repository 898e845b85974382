"""The inbound colour conversion in the shared thread pool: frames of each session are delivered in arrival order
even when conversions finish out of order, a session's pending conversions are bounded (oldest dropped), and a
closed session's pending conversions are cancelled and never delivered."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import av
import numpy as np
import pytest
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from server.rtc.inbound import FrameConverter, InboundReader, to_model_rgb
from server.rtc.ring import InFrame

pytestmark = pytest.mark.timeout(60)

H, W = 48, 64


def _frame(k: int, session: int = 0) -> av.VideoFrame:
    img = np.full((60, 80, 3), (k * 10 + session * 100) % 256, np.uint8)
    f = av.VideoFrame.from_ndarray(img, format="rgb24").reformat(format="yuv420p")
    f.pts = k
    return f


class ListTrack(MediaStreamTrack):
    """Returns the given frames, then either ends or waits forever (``hold``), noting that it was asked again."""

    kind = "video"

    def __init__(self, frames: list[av.VideoFrame], hold: bool = False) -> None:
        super().__init__()
        self.frames, self.hold = list(frames), hold
        self.drained = asyncio.Event()

    async def recv(self) -> av.VideoFrame:
        if self.frames:
            return self.frames.pop(0)
        self.drained.set()  # every frame given out has been handed to the converter
        if self.hold:
            await asyncio.Event().wait()
        raise MediaStreamError


class GatedConverter(FrameConverter):
    """Conversions of gated pts wait for their gate before running; records which conversions actually ran."""

    def __init__(self, threads: int = 2) -> None:
        super().__init__(threads)
        self.gates: dict[int, threading.Event] = {}
        self.ran: list[int] = []
        self._cond = threading.Condition()

    def gate(self, pts: int) -> threading.Event:
        return self.gates.setdefault(pts, threading.Event())

    def _convert(self, frame: av.VideoFrame, height: int, width: int, arrived: float) -> InFrame:
        pts = int(frame.pts)
        if pts in self.gates:
            assert self.gates[pts].wait(10), f"gate {pts} never opened"
        out = super()._convert(frame, height, width, arrived)
        with self._cond:
            self.ran.append(pts)
            self._cond.notify_all()
        return out

    async def wait_ran(self, pred: Callable[[list[int]], bool], timeout: float = 10.0) -> None:
        """Wait (in a helper thread) until ``pred(ran)`` holds."""

        def wait() -> bool:
            with self._cond:
                return self._cond.wait_for(lambda: pred(self.ran), timeout)

        assert await asyncio.to_thread(wait), f"conversions ran: {self.ran}"


class Got(list[InFrame]):
    """The frames a reader delivered; :meth:`wait` for a count."""

    def __init__(self) -> None:
        super().__init__()
        self._changed = asyncio.Event()

    def add(self, f: InFrame) -> None:
        self.append(f)
        self._changed.set()

    async def wait(self, n: int, timeout: float = 10.0) -> None:
        async def loop() -> None:
            while len(self) < n:
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(loop(), timeout)


def _reader(track: MediaStreamTrack, conv: FrameConverter, **kw: Any) -> tuple[InboundReader, Got]:
    got = Got()
    return InboundReader(track, H, W, got.add, lambda: None, converter=conv, **kw), got


async def test_order_is_kept_per_session_when_conversions_finish_out_of_order() -> None:
    """Two sessions share the converter; frame 0 of each is held back until its frame 3 has been converted,
    yet every session receives its frames in arrival order, each converted correctly."""
    conv = GatedConverter(threads=3)
    try:
        readers = []
        for s in (0, 1):
            gate = conv.gate(0)  # both sessions' frame 0 wait on the same gate
            track = ListTrack([_frame(k, s) for k in range(8)], hold=True)
            r, got = _reader(track, conv, max_pending=8)
            readers.append((r, got, track))
            r.start()
        for _, _, track in readers:
            await track.drained.wait()
        await conv.wait_ran(lambda ran: ran.count(3) == 2)  # frame 3 of both sessions is converted
        assert all(not got for _, got, _ in readers), "frame 3 was delivered before frame 0"
        gate.set()
        for _, got, _ in readers:
            await got.wait(8)
        for s, (r, got, _) in enumerate(readers):
            assert [f.pts for f in got] == list(range(8))
            for f in got:
                assert f.rgb.shape == (H, W, 3)
                assert abs(int(f.rgb.mean()) - (f.pts * 10 + s * 100) % 256) <= 2  # its own session's pixels
            assert [f.arrived for f in got] == sorted(f.arrived for f in got)
            await r.stop()
    finally:
        conv.shutdown()


async def test_pending_conversions_are_bounded_oldest_dropped() -> None:
    conv = GatedConverter(threads=2)
    try:
        for k in range(6):
            conv.gate(k)
        track = ListTrack([_frame(k) for k in range(6)], hold=True)
        drops: list[int] = []
        r, got = _reader(track, conv, max_pending=2, on_dropped=drops.append)
        r.start()
        await track.drained.wait()
        assert sum(drops) == 4 and r.dropped == 4 and r.pending == 2
        for g in conv.gates.values():
            g.set()
        await got.wait(2)
        assert [f.pts for f in got] == [4, 5]
        await r.stop()
    finally:
        conv.shutdown()


async def test_closed_session_pending_conversions_are_dropped() -> None:
    """Stopping the reader (session closed) cancels its conversions that have not started and never delivers the
    ones that were running; the other session sharing the converter is unaffected."""
    conv = GatedConverter(threads=2)
    try:
        gates = [conv.gate(k) for k in range(4)]
        track = ListTrack([_frame(k) for k in range(4)], hold=True)
        r, got = _reader(track, conv)
        r.start()
        await track.drained.wait()
        assert r.pending == 4  # two running (held at their gates), two waiting for a thread
        await r.stop()
        assert r.pending == 0
        # another session's frame queues behind the cancelled ones (the pool's queue is FIFO)
        other = ListTrack([_frame(9, 1)], hold=True)
        r2, got2 = _reader(other, conv)
        r2.start()
        await other.drained.wait()
        for g in gates:
            g.set()
        await got2.wait(1)
        await conv.wait_ran(lambda ran: sorted(ran) == [0, 1, 9])
        assert got == [], "a closed session received a frame"
        assert sorted(conv.ran) == [0, 1, 9], "conversions not started when the session closed still ran"
        await r2.stop()
    finally:
        conv.shutdown()


async def test_track_end_calls_on_end_once() -> None:
    conv = FrameConverter(threads=1)
    ended = asyncio.Event()
    got = Got()
    try:
        r = InboundReader(ListTrack([_frame(k) for k in range(3)]), H, W, got.add, ended.set, converter=conv)
        r.start()
        await asyncio.wait_for(ended.wait(), 10)
        await got.wait(3)
        assert [f.pts for f in got] == [0, 1, 2]
    finally:
        conv.shutdown()


def test_reused_reformatter_matches_a_fresh_one() -> None:
    from av.video.reformatter import VideoReformatter

    r = VideoReformatter()
    for k in range(3):
        f = _frame(k)
        a = to_model_rgb(f, H, W, 1.0, r)
        b = to_model_rgb(_frame(k), H, W, 1.0)
        assert np.array_equal(a.rgb, b.rgb) and a.arrived == 1.0 and a.pts == k
