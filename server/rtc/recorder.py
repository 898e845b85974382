"""Server-side recording: a session's EDITED output frames written to an H.264 mp4 with PyAV.

Two parts:

- :class:`Recorder` writes one file. The event loop hands it each edited frame as the outbound track hands that
  frame to the WebRTC encoder (a listener in :attr:`server.rtc.outbound.EditedVideoTrack.frame_listeners`), with
  its timestamp, through a bounded queue (a full queue drops the frame and counts it; it never grows and never
  blocks the loop). One thread
  per recorder converts and encodes (libx264 when the PyAV wheel has it, else mpeg4) and muxes. Stopping (a
  request, the end of the session, the size limit, an error) finalises the file in that thread: the encoder is
  flushed and the mp4 trailer (``moov``) written, so the file plays.
- :class:`Recordings` is this node's folder of recordings: ``<root>/<session_id>/rec-NNN-<UTC time>.mp4``, each
  with a JSON sidecar (``.json``: state, frames, duration, keep) so the list survives a restart. It starts and
  stops recorders, lists, resolves download names and removes files. Only names it generated are ever resolved;
  anything else is "no such recording".

Threads: everything here runs on the event loop except ``Recorder._run`` (its own thread), which writes the file
and, at the end, the sidecar. Timestamps: the recording's clock is 90 kHz (30 kHz with mpeg4); a frame's time is its pts (the input
frame's RTP timestamp, ``pts * time_base`` seconds) minus the first recorded frame's, so the file has the
input's frame timing and starts at 0.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import fractions
import json
import logging
import os
import queue
import re
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import av
import numpy as np

from server.metrics import Metrics

log = logging.getLogger(__name__)

#: ``recording`` (being written; the file has no trailer yet), ``done`` (stopped on request or with the session),
#: ``truncated`` (stopped at the size limit; the file is complete and plays), ``failed`` (an encoder or disk
#: error, or the server stopped while writing: the file may not play).
RecordingState = Literal["recording", "done", "truncated", "failed"]

CLOCK_HZ = 90_000  # the recording's time base (1/90000 s), that of RTP video
_MPEG4_CLOCK_HZ = 30_000  # MPEG-4 Part 2 allows time base denominators up to 65535 only
_DEFAULT_FPS = 30  # the nominal rate given to the encoder (frames keep their own timestamps)
#: bytes the mp4 adds besides the packets: ``ftyp``/``mdat`` headers and a ``moov`` whose tables grow per frame.
#: Measured about 1 kB + 6 B/frame with libx264; the limit check reserves more, so a file never exceeds it.
_CONTAINER_BYTES = 4096
_CONTAINER_BYTES_PER_FRAME = 32
_STOP_TIMEOUT_S = 10.0  # the longest :meth:`Recorder.stop` waits for the file to be finalised

_SESSION_RE = re.compile(r"^[0-9a-f]{32}$")  # session ids are uuid4 hex (server.sessions.manager)
NAME_RE = re.compile(r"^rec-(\d{3,6})-(\d{8}T\d{6}Z)\.mp4$")


def pick_codec() -> str:
    """``libx264`` when this PyAV build has it (H.264), else ``mpeg4`` (MPEG-4 Part 2, in every build)."""
    return "libx264" if "libx264" in av.codecs_available else "mpeg4"


_CODEC_OPTIONS = {
    # zerolatency: no lookahead, no B-frames, one packet out per frame in (the size check is exact and the flush
    # at the end has nothing left to add); veryfast keeps one core's work per session small.
    "libx264": {"preset": "veryfast", "tune": "zerolatency", "crf": "23"},
    "mpeg4": {"qscale": "4"},
}


@dataclass
class RecordingInfo:
    """One recording as listed (also its JSON sidecar).

    Attributes:
        name: the file name (server-generated, :data:`NAME_RE`).
        state: see :data:`RecordingState`.
        bytes: size of the file on disk (while recording: the packets written so far).
        frames: video frames in the file.
        duration_s: the file's duration, s (last frame's time plus one frame interval).
        created_at: when the recording started (Unix time, s).
        keep: the file survives the deletion of its session.
        frames_dropped: frames not recorded because the encoder fell behind (queue full) or had a timestamp
            that did not advance.
        codec: the video codec (``h264`` or ``mpeg4``).
        width, height: frame size, pixels (0 until the first frame).
        error: why a ``failed`` recording failed.
    """

    name: str
    state: RecordingState
    bytes: int = 0
    frames: int = 0
    duration_s: float = 0.0
    created_at: float = 0.0
    keep: bool = False
    frames_dropped: int = 0
    codec: str = ""
    width: int = 0
    height: int = 0
    error: str | None = None


class RecordedFrame(Protocol):
    """What a recorder takes: an edited frame (``server.rtc.outbound.OutFrame`` fits)."""

    @property
    def rgb(self) -> np.ndarray:
        """``[H, W, 3]`` uint8 RGB."""

    @property
    def pts(self) -> int:
        """Timestamp in ``time_base`` units."""

    @property
    def time_base(self) -> float:
        """Seconds per ``pts`` unit."""


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` to ``path`` atomically (a reader never sees half a file)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


class Recorder:
    """Writes edited frames to one mp4 file in a thread of its own.

    Args:
        path: the mp4 to write (its folder must exist); the sidecar is ``path`` with ``.json``.
        max_bytes: size limit of the file, bytes: the recording stops (state ``truncated``) before a frame would
            take the file past it, and the file is finalised and plays.
        keep: the initial ``keep`` flag (see :class:`RecordingInfo`).
        codec: an encoder name; default :func:`pick_codec`.
        queue_frames: frames waiting for the encoder at most; beyond, new frames are dropped (counted).
        metrics: counters to update (optional).

    Lifecycle: :meth:`start` (the thread), :meth:`put` per frame (event loop, never blocks), :meth:`stop` (or
    :meth:`request_stop` and :meth:`wait`). :attr:`finished` resolves with the final :class:`RecordingInfo`
    whatever ended the recording.
    """

    def __init__(
        self,
        path: Path,
        max_bytes: int,
        *,
        keep: bool = False,
        codec: str | None = None,
        queue_frames: int = 32,
        metrics: Metrics | None = None,
    ) -> None:
        if max_bytes <= _CONTAINER_BYTES:
            raise ValueError(f"max_bytes must be above {_CONTAINER_BYTES} (the mp4's own overhead)")
        self.path, self.max_bytes, self.metrics = path, max_bytes, metrics
        self.sidecar = path.with_suffix(".json")
        self.codec = codec or pick_codec()
        self._queue: queue.Queue[RecordedFrame | None] = queue.Queue(maxsize=queue_frames)
        self._lock = threading.Lock()  # the sidecar and ``keep`` (written by the loop and the thread)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"recorder-{path.stem}", daemon=True)
        self.finished: concurrent.futures.Future[RecordingInfo] = concurrent.futures.Future()
        self.info = RecordingInfo(name=path.name, state="recording", created_at=time.time(), keep=keep)
        self._t0: float | None = None  # time of the first recorded frame, s
        self._last_pts = -1  # last muxed pts, 1 / clock_hz s
        self._last_step = 0  # last pts step, 1 / clock_hz s
        self._packet_bytes = 0
        self.clock_hz = _MPEG4_CLOCK_HZ if self.codec == "mpeg4" else CLOCK_HZ  # ticks per s of the file

    # ---- event loop side ---------------------------------------------------------------------------------
    def start(self) -> None:
        """Write the sidecar (state ``recording``) and start the encoding thread."""
        self._write_sidecar()
        self._thread.start()
        if self.metrics is not None:
            self.metrics.recordings_active.inc()

    @property
    def accepting(self) -> bool:
        """True until the recording was asked to stop or ended."""
        return not self._stopping.is_set() and not self.finished.done()

    def put(self, frame: RecordedFrame) -> bool:
        """Queue one frame for the encoder; never blocks. False when it was dropped (queue full, counted) or the
        recording no longer takes frames."""
        if not self.accepting:
            return False
        try:
            self._queue.put_nowait(frame)
        except queue.Full:
            self._dropped(1)
            return False
        return True

    def request_stop(self) -> None:
        """Ask the thread to finalise the file after the frames already queued (non-blocking, idempotent)."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(None)
        # a full queue: the thread sees ``_stopping`` after draining it (it polls)

    async def stop(self, timeout: float = _STOP_TIMEOUT_S) -> RecordingInfo:
        """Finalise the file and return its info (event loop; the work is done in the recorder's thread)."""
        self.request_stop()
        try:
            # shielded: a caller that gives up (its timeout, its task cancelled at shutdown) must not cancel
            # ``finished``, which the thread resolves when it has finalised the file
            return await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(self.finished)), timeout)
        except TimeoutError:
            log.error("recording %s: not finalised within %.0f s", self.path, timeout)
            return self.snapshot()

    def wait(self, timeout: float | None = None) -> RecordingInfo:
        """Block until the recording has ended (tests, or a thread); returns its final info."""
        return self.finished.result(timeout)

    def set_keep(self, keep: bool) -> None:
        """Change the ``keep`` flag (the sidecar follows)."""
        with self._lock:
            self.info.keep = keep
        self._write_sidecar()

    def snapshot(self) -> RecordingInfo:
        """The recording's info now (a copy)."""
        with self._lock:
            return RecordingInfo(**asdict(self.info))

    # ---- the recorder's thread -----------------------------------------------------------------------------
    def _dropped(self, n: int) -> None:
        with self._lock:
            self.info.frames_dropped += n
        if self.metrics is not None:
            self.metrics.recording_frames_dropped.inc(n)

    def _write_sidecar(self) -> None:
        with self._lock:
            data = asdict(self.info)
            try:
                _write_json(self.sidecar, data)
            except OSError as e:
                log.warning("recording %s: cannot write its sidecar: %s", self.path, e)

    def _overhead(self, frames: int) -> int:
        return _CONTAINER_BYTES + _CONTAINER_BYTES_PER_FRAME * frames

    def _run(self) -> None:
        container: Any = None
        stream: Any = None
        state: RecordingState = "done"
        error: str | None = None
        try:
            while True:
                try:
                    item = self._queue.get(timeout=0.2)
                except queue.Empty:
                    if self._stopping.is_set():
                        break
                    continue
                if item is None:
                    break
                if container is None:
                    container, stream = self._open(item.rgb)
                if not self._encode(stream, container, item):
                    state = "truncated"
                    break
            if container is not None and state == "done" and not self._flush(stream, container):
                state = "truncated"
        except Exception as e:  # encoder, muxer or disk error: the session goes on without its recording
            state, error = "failed", f"{type(e).__name__}: {e}"
            log.exception("recording %s failed", self.path)
        finally:
            self._stopping.set()
            if container is not None:
                try:
                    container.close()  # writes the trailer (moov)
                except Exception as e:
                    state, error = "failed", error or f"finalising the file: {type(e).__name__}: {e}"
                    log.exception("recording %s: finalising failed", self.path)
            self._finish(state, error, opened=container is not None)

    def _open(self, rgb: np.ndarray) -> tuple[Any, Any]:
        h, w = int(rgb.shape[0]), int(rgb.shape[1])
        if h % 2 or w % 2:
            raise ValueError(f"frame size {w}x{h} is odd; yuv420p needs even sizes")
        container: Any = av.open(str(self.path), mode="w", format="mp4")
        try:
            stream = container.add_stream(
                self.codec, rate=_DEFAULT_FPS, options=_CODEC_OPTIONS.get(self.codec)
            )
            stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
            tb = fractions.Fraction(1, self.clock_hz)
            stream.codec_context.time_base = tb
            stream.time_base = tb
            stream.codec_context.thread_count = 1  # one core per recording at most
        except Exception:
            container.close()
            raise
        with self._lock:
            self.info.width, self.info.height = w, h
            self.info.codec = "h264" if self.codec == "libx264" else self.codec
        log.info("recording %s: %dx%d %s", self.path, w, h, self.codec)
        return container, stream

    def _encode(self, stream: Any, container: Any, f: RecordedFrame) -> bool:
        """Encode and mux one frame; False when it would take the file over the size limit (not written)."""
        t = float(f.pts) * float(f.time_base)
        if self._t0 is None:
            self._t0 = t
        pts = round((t - self._t0) * self.clock_hz)
        if pts <= self._last_pts:  # a timestamp that did not advance: the muxer would refuse it
            self._dropped(1)
            return True
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(f.rgb), format="rgb24")
        frame.pts, frame.time_base = pts, fractions.Fraction(1, self.clock_hz)
        if not self._mux(container, stream.encode(frame)):
            return False
        if self._last_pts >= 0:
            self._last_step = pts - self._last_pts
        self._last_pts = pts
        self._update_progress()
        return True

    def _mux(self, container: Any, packets: list[Any]) -> bool:
        """Mux ``packets`` unless one would take the file over the limit (then nothing more is muxed)."""
        for p in packets:
            frames = self.info.frames + 1
            if self._packet_bytes + p.size + self._overhead(frames) > self.max_bytes:
                log.info(
                    "recording %s: size limit of %d bytes reached after %d frames; finalising",
                    self.path,
                    self.max_bytes,
                    self.info.frames,
                )
                return False
            container.mux(p)
            self._packet_bytes += p.size
            with self._lock:
                self.info.frames = frames
        return True

    def _flush(self, stream: Any, container: Any) -> bool:
        return self._mux(container, stream.encode(None))

    def _duration_s(self) -> float:
        if self._last_pts < 0:
            return 0.0
        step = self._last_step or round(self.clock_hz / _DEFAULT_FPS)
        return (self._last_pts + step) / self.clock_hz

    def _update_progress(self) -> None:
        with self._lock:
            self.info.bytes = self._packet_bytes
            self.info.duration_s = round(self._duration_s(), 3)

    def _finish(self, state: RecordingState, error: str | None, opened: bool) -> None:
        size = 0
        with contextlib.suppress(OSError):
            size = self.path.stat().st_size
        with self._lock:
            self.info.state, self.info.error = state, error
            self.info.bytes = size if opened else 0
            self.info.duration_s = round(self._duration_s(), 3)
        if self.info.frames == 0 and state != "failed":
            # no frame in the file (none came, or the first alone was over the limit): nothing to watch, so
            # nothing is left behind
            for p in (self.path, self.sidecar):
                with contextlib.suppress(OSError):
                    p.unlink()
            opened = False
        else:
            self._write_sidecar()
        if self.metrics is not None:
            self.metrics.recordings_active.dec()
            if opened or state == "failed":
                self.metrics.recordings.labels(state=state).inc()
                self.metrics.recording_bytes.inc(size)
        log.info(
            "recording %s %s: %d frames, %.2f s, %d bytes, %d dropped",
            self.path,
            state,
            self.info.frames,
            self.info.duration_s,
            size,
            self.info.frames_dropped,
        )
        self.finished.set_result(self.snapshot())


class RecordingNotFound(LookupError):
    """No such session folder or recording on this node (HTTP 404)."""


class RecordingBusy(RuntimeError):
    """The recording is still being written (HTTP 409)."""


class Recordings:
    """This node's recordings, one folder per session (event loop).

    Args:
        root: the folder of all recordings (``LIPAR_RECORDINGS_DIR``); created by :meth:`prepare`.
        max_bytes: size limit per recording, bytes (``LIPAR_RECORDING_MAX_MB``).
        metrics: counters to update (optional).
        codec: the encoder; default :func:`pick_codec`.
    """

    def __init__(
        self, root: Path, max_bytes: int, metrics: Metrics | None = None, codec: str | None = None
    ) -> None:
        self.root, self.max_bytes, self.metrics = root, max_bytes, metrics
        self.codec = codec or pick_codec()
        self.active: dict[str, Recorder] = {}  # session id -> its recorder (at most one per session)

    def prepare(self) -> None:
        """Create the root folder (raises OSError when it cannot be created or written)."""
        self.root.mkdir(parents=True, exist_ok=True)
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise PermissionError(f"recordings folder {self.root} is not writable")

    @staticmethod
    def valid_session_id(session_id: str) -> bool:
        """True for a string shaped like a session id (the only folder names ever built from a request)."""
        return bool(_SESSION_RE.match(session_id))

    def folder(self, session_id: str) -> Path:
        """The folder of a session's recordings; :class:`RecordingNotFound` for anything not a session id."""
        if not self.valid_session_id(session_id):
            raise RecordingNotFound(f"no session {session_id}")
        return self.root / session_id

    def recording(self, session_id: str) -> Recorder | None:
        """The session's recorder if it is recording now."""
        rec = self.active.get(session_id)
        return rec if rec is not None and not rec.finished.done() else None

    def start(self, session_id: str, keep: bool) -> Recorder:
        """Start recording a session (its current recorder if it has one); raises OSError on a disk error."""
        current = self.recording(session_id)
        if current is not None and current.accepting:
            return current
        folder = self.folder(session_id)
        folder.mkdir(parents=True, exist_ok=True)
        used = [int(m.group(1)) for p in folder.iterdir() if (m := NAME_RE.match(p.name))]
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        path = folder / f"rec-{max(used, default=0) + 1:03d}-{stamp}.mp4"
        rec = Recorder(path, self.max_bytes, keep=keep, codec=self.codec, metrics=self.metrics)
        rec.start()
        self.active[session_id] = rec
        return rec

    def put(self, session_id: str, frame: RecordedFrame) -> None:
        """An edited frame of a session handed to the WebRTC encoder (a listener of the outbound track; never
        raises)."""
        rec = self.active.get(session_id)
        if rec is not None:
            try:
                rec.put(frame)
            except Exception:  # a recording must never break the stream
                log.exception("recording of session %s: frame not queued", session_id)

    async def stop(self, session_id: str) -> RecordingInfo | None:
        """Stop and finalise the session's recording, if any; returns its final info."""
        rec = self.active.pop(session_id, None)
        if rec is None:
            return None
        return await rec.stop()

    def forget(self, session_id: str, rec: Recorder) -> None:
        """Drop a recorder that ended by itself (size limit, error) from the active ones."""
        if self.active.get(session_id) is rec:
            del self.active[session_id]

    def set_keep(self, session_id: str, keep: bool) -> None:
        """Set ``keep`` on every recording of the session (the one being written too)."""
        rec = self.active.get(session_id)
        if rec is not None:
            rec.set_keep(keep)
        for info in self.session_recordings(session_id) or []:
            if info.keep != keep and info.state != "recording":
                info.keep = keep
                with contextlib.suppress(OSError):
                    _write_json(self.root / session_id / Path(info.name).with_suffix(".json"), asdict(info))

    def session_recordings(self, session_id: str) -> list[RecordingInfo] | None:
        """The session's recordings, oldest first; None when this node has no folder for it."""
        folder = self.folder(session_id)
        if not folder.is_dir():
            return None
        live = self.recording(session_id)
        out: list[RecordingInfo] = []
        for side in sorted(folder.glob("rec-*.json")):
            name = side.with_suffix(".mp4").name
            if not NAME_RE.match(name):
                continue
            if live is not None and live.path.name == name:
                out.append(live.snapshot())
                continue
            info = self._read_sidecar(side)
            if info is not None:
                out.append(info)
        return out

    def _read_sidecar(self, side: Path) -> RecordingInfo | None:
        try:
            data = json.loads(side.read_text())
            info = RecordingInfo(**{k: v for k, v in data.items() if k in RecordingInfo.__dataclass_fields__})
        except (OSError, ValueError, TypeError) as e:
            log.warning("recording sidecar %s unreadable: %s", side, e)
            return None
        if info.state == "recording":  # no recorder writes it: the server stopped while recording
            info.state, info.error = "failed", info.error or "the server stopped while recording"
        with contextlib.suppress(OSError):
            info.bytes = side.with_suffix(".mp4").stat().st_size
        return info

    def get(self, session_id: str, name: str) -> tuple[RecordingInfo, Path]:
        """A recording's info and file; :class:`RecordingNotFound` for a name this node did not generate or a
        recording it does not have."""
        if not NAME_RE.match(name):
            raise RecordingNotFound(f"no recording {name!r}")
        for info in self.session_recordings(session_id) or []:
            if info.name == name:
                return info, self.folder(session_id) / name
        raise RecordingNotFound(f"no recording {name!r} of session {session_id} on this node")

    def delete(self, session_id: str, name: str) -> None:
        """Remove one finished recording (:class:`RecordingBusy` while it is being written)."""
        info, path = self.get(session_id, name)
        if info.state == "recording":
            raise RecordingBusy(f"recording {name} is being written; stop it first (PATCH record: false)")
        self._remove(path)
        self._prune(session_id)

    def remove_unkept(self, session_id: str) -> int:
        """Remove the session's finished recordings not marked ``keep`` (its folder too once empty); returns
        how many. Call after :meth:`stop`."""
        n = 0
        for info in self.session_recordings(session_id) or []:
            if not info.keep and info.state != "recording":
                self._remove(self.root / session_id / info.name)
                n += 1
        self._prune(session_id)
        if n:
            log.info("session %s: %d recording(s) removed with the session", session_id, n)
        return n

    def sessions_with_unkept(self) -> list[str]:
        """Ids of sessions with finished recordings not marked ``keep`` on this node."""
        if not self.root.is_dir():
            return []
        out = []
        for d in self.root.iterdir():
            if not (d.is_dir() and self.valid_session_id(d.name)) or d.name in self.active:
                continue
            if any(not i.keep and i.state != "recording" for i in self.session_recordings(d.name) or []):
                out.append(d.name)
        return out

    @staticmethod
    def _remove(mp4: Path) -> None:
        for p in (mp4, mp4.with_suffix(".json")):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()

    def _prune(self, session_id: str) -> None:
        folder = self.root / session_id
        with contextlib.suppress(OSError):
            if folder.is_dir() and not any(folder.iterdir()) and session_id not in self.active:
                folder.rmdir()
