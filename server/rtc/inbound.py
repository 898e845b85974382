"""Inbound video: a remote WebRTC track → RGB frames at the model's size → the session's ring.

Server process. Who runs what:

* aiortc's decoder thread (one per receiver) decodes the RTP stream with PyAV;
* the **event loop** (:class:`InboundReader`) awaits each decoded frame, stamps its arrival time (the latency
  origin), hands the conversion to the shared :class:`FrameConverter`, and delivers converted frames to
  ``on_frame`` strictly in arrival order (done-callbacks on the loop; a frame that finished early waits for the
  ones before it);
* the **converter threads** (:class:`FrameConverter`, one small pool shared by every session of the process)
  run :func:`to_model_rgb`: scale to cover the model size and centre-crop (the model's aspect ratio, no
  distortion), as RGB. PyAV's swscale call releases the GIL, so conversions of several sessions run in parallel
  with each other and with the event loop. Each thread keeps one ``VideoReformatter`` (swscale context reused
  from frame to frame) running swscale single-threaded: the pool is the parallelism.

Bounded: a session has at most ``max_pending`` conversions in flight; beyond that its oldest is dropped
(counted through ``on_dropped``, like the ring's drop-oldest). A stopped reader (closed session) cancels its
pending conversions and never delivers a frame again.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import av
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av.video.reformatter import VideoReformatter

from server.rtc.ring import InFrame

log = logging.getLogger(__name__)

#: conversions one session may have in flight before its oldest is dropped
MAX_PENDING_CONVERSIONS = 4


def to_model_rgb(
    frame: av.VideoFrame,
    height: int,
    width: int,
    arrived: float | None = None,
    reformatter: VideoReformatter | None = None,
) -> InFrame:
    """Convert a decoded frame to uint8 ``[height, width, 3]`` RGB (scale to cover, centre crop).

    Any thread (the converter threads in the server). ``arrived`` is the frame's arrival time (s,
    ``time.monotonic``; now when None). ``reformatter`` is reused across calls of one thread to keep its swscale
    context; swscale runs single-threaded here.
    """
    scale = max(width / frame.width, height / frame.height)
    w2 = max(width, round(frame.width * scale))
    h2 = max(height, round(frame.height * scale))
    r = reformatter if reformatter is not None else VideoReformatter()
    rgb = r.reformat(frame, width=w2, height=h2, format="rgb24", threads=1).to_ndarray()
    y0, x0 = (h2 - height) // 2, (w2 - width) // 2
    rgb = rgb[y0 : y0 + height, x0 : x0 + width]
    tb = float(frame.time_base) if frame.time_base is not None else 1 / 90000
    return InFrame(
        rgb=rgb,
        pts=int(frame.pts or 0),
        time_base=tb,
        arrived=time.monotonic() if arrived is None else arrived,
    )


def _default_threads() -> int:
    """Converter threads: half the cores, at least 2 and at most 4 (a frame costs 0.2–2 ms)."""
    return max(2, min(4, (os.cpu_count() or 2) // 2))


class FrameConverter:
    """A small thread pool converting decoded frames to model-size RGB, shared by every session.

    :meth:`submit` is called on the event loop; :meth:`_convert` runs in the pool's threads.
    """

    def __init__(self, threads: int | None = None) -> None:
        self.threads = threads if threads is not None else _default_threads()
        self._executor = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="lipar-convert")
        self._local = threading.local()

    def _convert(self, frame: av.VideoFrame, height: int, width: int, arrived: float) -> InFrame:
        """Converter thread: :func:`to_model_rgb` with this thread's reformatter."""
        r = getattr(self._local, "reformatter", None)
        if r is None:
            r = self._local.reformatter = VideoReformatter()
        return to_model_rgb(frame, height, width, arrived, r)

    def submit(
        self, frame: av.VideoFrame, height: int, width: int, arrived: float
    ) -> asyncio.Future[InFrame]:
        """Event loop: start converting ``frame``; the future completes on the loop."""
        loop = asyncio.get_running_loop()
        return loop.run_in_executor(self._executor, self._convert, frame, height, width, arrived)

    def shutdown(self) -> None:
        """Stop the threads; conversions not started are cancelled."""
        self._executor.shutdown(wait=False, cancel_futures=True)


_shared: FrameConverter | None = None
_shared_lock = threading.Lock()


def shared_converter() -> FrameConverter:
    """The process-wide converter (created on first use)."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = FrameConverter()
            log.info("frame converter: %d threads", _shared.threads)
        return _shared


class InboundReader:
    """Pulls frames from ``track`` until it ends; calls ``on_frame`` for each (in order) and ``on_end`` once.

    Event loop thread (conversions in the :class:`FrameConverter`'s threads). ``on_dropped(n)`` is called when
    conversions are dropped to stay within ``max_pending``.
    """

    def __init__(
        self,
        track: MediaStreamTrack,
        height: int,
        width: int,
        on_frame: Callable[[InFrame], None],
        on_end: Callable[[], None],
        *,
        converter: FrameConverter | None = None,
        max_pending: int = MAX_PENDING_CONVERSIONS,
        on_dropped: Callable[[int], None] | None = None,
    ) -> None:
        if max_pending < 1:
            raise ValueError("max_pending must be at least 1")
        self.track, self.height, self.width = track, height, width
        self.on_frame, self.on_end, self.on_dropped = on_frame, on_end, on_dropped
        self.converter = converter
        self.max_pending = max_pending
        self.dropped = 0
        self._pending: collections.deque[asyncio.Future[InFrame]] = collections.deque()
        self._stopped = False
        self._failures = 0
        self._task: asyncio.Task[None] | None = None

    @property
    def pending(self) -> int:
        """Conversions in flight (started, not yet delivered)."""
        return len(self._pending)

    def start(self) -> None:
        """Start reading (idempotent)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="inbound-reader")

    async def _run(self) -> None:
        converter = self.converter if self.converter is not None else shared_converter()
        try:
            while True:
                frame = await self.track.recv()
                if not isinstance(frame, av.VideoFrame) or self._stopped:
                    continue
                self._enqueue(converter.submit(frame, self.height, self.width, time.monotonic()))
        except MediaStreamError:
            log.info("inbound track ended")
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("inbound reader failed")
        self.on_end()

    def _enqueue(self, fut: asyncio.Future[InFrame]) -> None:
        dropped = 0
        while len(self._pending) >= self.max_pending:
            self._pending.popleft().cancel()  # a running conversion finishes; its result is ignored
            dropped += 1
        if dropped:
            self.dropped += dropped
            if self.on_dropped is not None:
                self.on_dropped(dropped)
        self._pending.append(fut)
        fut.add_done_callback(self._deliver)

    def _deliver(self, _: object = None) -> None:
        """Event loop (done-callback): hand on every finished conversion at the head, in order."""
        while self._pending and self._pending[0].done():
            fut = self._pending.popleft()
            if fut.cancelled():
                continue
            exc = fut.exception()
            if exc is not None:
                self._failures += 1
                if self._failures == 1 or self._failures % 100 == 0:
                    log.warning("frame conversion failed (%d so far): %r", self._failures, exc)
                continue
            if not self._stopped:
                self.on_frame(fut.result())

    async def stop(self) -> None:
        """Stop reading, drop pending conversions (never delivered) and wait for the task to finish."""
        self._stopped = True
        while self._pending:
            self._pending.popleft().cancel()
        if self._task is not None and not self._task.done():
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
