"""Inbound video: a remote WebRTC track → RGB frames at the model's size → the session's ring.

Server process, event loop. aiortc decodes with PyAV; we convert each frame to RGB, scaled to cover the model
size and centre-cropped (the model's aspect ratio, no distortion), and hand it on with its RTP timestamp and
its arrival time.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import av
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from server.rtc.ring import InFrame

log = logging.getLogger(__name__)


def to_model_rgb(frame: av.VideoFrame, height: int, width: int) -> InFrame:
    """Convert a decoded frame to uint8 ``[height, width, 3]`` RGB (scale to cover, centre crop)."""
    scale = max(width / frame.width, height / frame.height)
    w2 = max(width, round(frame.width * scale))
    h2 = max(height, round(frame.height * scale))
    rgb = frame.to_ndarray(format="rgb24", width=w2, height=h2)
    y0, x0 = (h2 - height) // 2, (w2 - width) // 2
    rgb = rgb[y0 : y0 + height, x0 : x0 + width]
    tb = float(frame.time_base) if frame.time_base is not None else 1 / 90000
    return InFrame(rgb=rgb, pts=int(frame.pts or 0), time_base=tb, arrived=time.monotonic())


class InboundReader:
    """Pulls frames from ``track`` until it ends; calls ``on_frame`` for each and ``on_end`` once."""

    def __init__(
        self,
        track: MediaStreamTrack,
        height: int,
        width: int,
        on_frame: Callable[[InFrame], None],
        on_end: Callable[[], None],
    ) -> None:
        self.track, self.height, self.width = track, height, width
        self.on_frame, self.on_end = on_frame, on_end
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start reading (idempotent)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="inbound-reader")

    async def _run(self) -> None:
        try:
            while True:
                frame = await self.track.recv()
                if not isinstance(frame, av.VideoFrame):
                    continue
                self.on_frame(to_model_rgb(frame, self.height, self.width))
        except MediaStreamError:
            log.info("inbound track ended")
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("inbound reader failed")
        self.on_end()

    async def stop(self) -> None:
        """Stop reading and wait for the task to finish."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
