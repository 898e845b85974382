"""One ``lipar-loadtest`` client session, and the loop of one client worker process.

A session (:class:`ClientSession`) does what a browser does, over real WebRTC (aiortc, no ICE servers, host
candidates restricted by :func:`server.rtc.ice.configure_ice`):

1. ``POST /v1/sessions`` (prompt, seed, LIPAR overrides; bearer token when given);
2. ``POST /v1/sessions/{id}/offer`` with one sendrecv video transceiver, then the SDP answer;
3. sends video at ``fps`` (:class:`PacedTrack`: frame ``k`` has ``pts = k * round(90000 / fps)``, time base
   1/90000) for ``seconds`` from its first frame (the measured period), and keeps sending a tail until the
   last measured frames came back (at most :data:`DRAIN_MAX_S`): the server edits whole blocks, so without a
   tail the window's last partial block would never return and would count as dropped;
4. records the monotonic send time of every input frame and the receive time and pts of every output frame
   (latency pairing and its caveat: :mod:`server.loadtest.report`; if the server's first output came from a
   later input frame than the first, the pairing over-states latency, never under-states it);
5. optionally, ``--prompt-change-at S`` seconds after its first received frame, PATCHes ``{"prompt": P2}``,
   then polls ``GET /v1/sessions/{id}`` every :data:`POLL_S` until ``stats.prompt_applied_pts`` is non-null and
   greater than before the PATCH (absent field: the latency is reported as null, with a note);
6. at the end of the measured period keeps the server's own view (``stats``), then closes the peer connection
   and ``DELETE`` s the session.

HTTP errors are recorded, never raised out of a session: an error on create or offer makes the session
``rejected`` (with the status, the server's message and ``Retry-After``), anything else ``failed``. Every wait is
bounded; a session ends by itself at most :func:`session_budget_s` after it starts, plus teardown.
Traffic goes only to the base URL given (the offer is posted there even if the record names another node).
"""

from __future__ import annotations

import asyncio
import fractions
import logging
import math
import multiprocessing.synchronize
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av
import httpx
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from server.loadtest.report import (
    CLOCK_HZ,
    MS_PER_S,
    STATUS_CONNECTED,
    STATUS_FAILED,
    STATUS_REJECTED,
    Timeline,
    frame_index,
    pts_step,
    session_stats,
)
from server.loadtest.sources import Clip, load_clip, synthetic_clip

log = logging.getLogger("lipar.loadtest")

HTTP_TIMEOUT_S = 10.0  #: one REST call
CONNECT_TIMEOUT_S = 20.0  #: SDP answer → WebRTC connection up
DRAIN_MAX_S = 10.0  #: end of sending → the last measured frame back (the tail keeps sending meanwhile)
CLOSE_TIMEOUT_S = 5.0  #: closing the peer connection
POLL_S = 0.05  #: polling period of GET /v1/sessions/{id} after a prompt change
PROGRESS_S = 1.0  #: how often a worker reports its sessions' counts to the parent
CLIP_BUDGET_BYTES = 512 * 2**20  #: memory for one decoded clip in one worker (30 s of 832x480 at 30 fps)

#: the server's own view kept beside the client's (fields of server.api.schemas.SessionStats)
SERVER_STATS_KEYS = (
    "fps_in",
    "fps_out",
    "latency_ms",
    "frames_in",
    "frames_out",
    "frames_dropped",
    "stage_ms",
    "block_ms",
    "prune_ratio",
    "active_prompt",
    "prompt_applied_pts",
    "state",
)


def session_budget_s(seconds: float) -> float:
    """The longest one session may run before teardown (s): create + offer + connect + ``seconds`` of sending +
    the server-stats read + the drain."""
    return 3 * HTTP_TIMEOUT_S + CONNECT_TIMEOUT_S + seconds + DRAIN_MAX_S


def teardown_budget_s() -> float:
    """The longest a session's teardown may take (s): close the peer, DELETE the session."""
    return CLOSE_TIMEOUT_S + HTTP_TIMEOUT_S


@dataclass(frozen=True)
class SessionPlan:
    """Everything one session needs (picklable: it crosses into a spawned worker process)."""

    index: int
    clip: str  #: a clip file path, or sources.SYNTHETIC
    base_url: str
    token: str | None
    prompt: str
    seed: int
    lipar: dict[str, Any] | None
    fps: float
    seconds: float
    warmup: float
    prompt_change_at: float | None
    prompt_change_to: str | None
    start_offset_s: float  #: when to start, after the run's common start time


@dataclass(frozen=True)
class WorkerSpec:
    """One client worker process: its sessions and the shared settings."""

    worker: int
    plans: tuple[SessionPlan, ...]
    width: int
    height: int
    fps: float
    seconds: float
    seed: int
    ice_hosts: tuple[str, ...]  #: host-candidate addresses; empty: all interfaces
    log_level: int


class HttpRefused(Exception):
    """The server answered a REST call with an error status."""

    def __init__(self, what: str, response: httpx.Response) -> None:
        self.status = response.status_code
        self.retry_after = response.headers.get("Retry-After")
        self.message = error_message(response)
        retry = f" (Retry-After: {self.retry_after} s)" if self.retry_after else ""
        super().__init__(f"{what}: HTTP {self.status}: {self.message}{retry}")


def error_message(response: httpx.Response) -> str:
    """The server's error message (the ``{"error": {"message"}}`` envelope), else the start of the body."""
    try:
        body = response.json()
        return str(body["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return response.text[:200] or response.reason_phrase


class PacedTrack(MediaStreamTrack):
    """Sends a looped :class:`~server.loadtest.sources.Clip` at ``fps`` like a camera, recording send times.

    The schedule is fixed from the first frame (frame ``k`` is due at ``t0 + k / fps``); a late event loop sends
    late frames at once (``max_late_s`` records how late; more than a frame interval means the client is a
    bottleneck). After :meth:`stop_sending` it holds without frames until stopped.
    """

    kind = "video"

    def __init__(self, clip: Clip, timeline: Timeline) -> None:
        super().__init__()
        self.clip, self.tl = clip, timeline
        self.step = pts_step(timeline.fps)
        self.t0: float | None = None
        self.max_late_s = 0.0
        self.measured_done = asyncio.Event()
        self._sending = True
        self._hold = asyncio.Event()

    def stop_sending(self) -> None:
        """Send no more frames (the track stays open until :meth:`stop`)."""
        self._sending = False

    def stop(self) -> None:
        super().stop()
        self._hold.set()

    async def recv(self) -> av.VideoFrame:
        if not self._sending:
            await self._hold.wait()
            raise MediaStreamError
        k = len(self.tl.sent)
        now = time.monotonic()
        if self.t0 is None:
            self.t0 = now
        due = self.t0 + k / self.tl.fps
        if due > now:
            await asyncio.sleep(due - now)  # pacing at the camera rate
        else:
            self.max_late_s = max(self.max_late_s, now - due)
        frame = self.clip.video_frame(k)
        frame.pts = k * self.step
        frame.time_base = fractions.Fraction(1, CLOCK_HZ)
        self.tl.sent.append(time.monotonic())
        if len(self.tl.sent) >= self.tl.measured_frames:
            self.measured_done.set()
        return frame


@dataclass
class ClientSession:
    """One load-test session; :meth:`run` returns its result (a plain dict, see :mod:`server.loadtest.cli`)."""

    plan: SessionPlan
    clip: Clip
    worker: int
    timeline: Timeline = field(init=False)
    stage: str = "starting"
    session_id: str | None = None
    pc: RTCPeerConnection | None = None
    track: PacedTrack | None = None
    connected: bool = False
    notes: list[str] = field(default_factory=list)
    server_view: dict[str, Any] | None = None
    prompt_field: bool | None = None  #: whether the server reports stats.prompt_applied_pts (None: not asked)
    _reader: asyncio.Task[None] | None = None
    _prompt_task: asyncio.Task[None] | None = None
    _first_frame: asyncio.Event = field(default_factory=asyncio.Event)
    _drained: asyncio.Event = field(default_factory=asyncio.Event)
    _prompt_applied: asyncio.Event = field(default_factory=asyncio.Event)
    _conn_changed: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.timeline = Timeline(
            fps=self.plan.fps, measured_frames=max(1, round(self.plan.seconds * self.plan.fps))
        )
        if self.plan.prompt_change_at is None:
            self._prompt_applied.set()

    @property
    def name(self) -> str:
        return f"s{self.plan.index}"

    # ---- the run ---------------------------------------------------------------------------------------
    async def run(self) -> dict[str, Any]:
        """Run the session to its end; never raises (errors are recorded in the result)."""
        headers = {"Authorization": f"Bearer {self.plan.token}"} if self.plan.token else {}
        status, error, http_status, retry_after = STATUS_CONNECTED, None, None, None
        async with httpx.AsyncClient(
            base_url=self.plan.base_url, headers=headers, timeout=HTTP_TIMEOUT_S
        ) as http:
            try:
                await asyncio.wait_for(self._run(http), session_budget_s(self.plan.seconds))
            except HttpRefused as e:
                status = STATUS_REJECTED if not self.connected else STATUS_CONNECTED
                error, http_status, retry_after = str(e), e.status, e.retry_after
            except TimeoutError:
                error = f"timed out while {self.stage}"
            except ConnectionError as e:  # the WebRTC connection failed or closed
                error = f"{e} while {self.stage}"
            except httpx.HTTPError as e:
                error = f"HTTP error while {self.stage}: {type(e).__name__}: {e}"
            except Exception as e:  # a client bug or an aiortc failure: record it, keep the run going
                log.exception("%s: unexpected error while %s", self.name, self.stage)
                error = f"{type(e).__name__} while {self.stage}: {e}"
            if error:
                log.warning("%s: %s", self.name, error)
            if not self.connected and status == STATUS_CONNECTED:
                status = STATUS_FAILED
            await self._teardown(http)
        stats, latencies = session_stats(self.timeline, self.plan.warmup)
        return {
            "index": self.plan.index,
            "process": self.worker,
            "clip": self.clip.name,
            "status": status,
            "error": error,
            "http_status": http_status,
            "retry_after_s": retry_after,
            "session_id": self.session_id,
            "client": stats if self.connected else None,
            "send_late_max_ms": None if self.track is None else self.track.max_late_s * MS_PER_S,
            "server": self.server_view,
            "prompt_change": self._prompt_change_info(),
            "notes": self.notes,
            "_latencies_ms": latencies,
        }

    def _prompt_change_info(self) -> dict[str, Any] | None:
        """What happened to the prompt change: when it was sent (s after the first received frame), the new
        prompt, the server's ``prompt_applied_pts`` and whether the server reports that field at all."""
        if self.plan.prompt_change_at is None:
            return None
        tl = self.timeline
        first = tl.first_received_at
        return {
            "to": self.plan.prompt_change_to,
            "patched_after_first_frame_s": None
            if tl.patch_at is None or first is None
            else tl.patch_at - first,
            "applied_pts": tl.applied_pts,
            "server_reports_applied_pts": self.prompt_field,
        }

    async def _run(self, http: httpx.AsyncClient) -> None:
        tl, plan = self.timeline, self.plan
        self.stage = "creating the session"
        body: dict[str, Any] = {"prompt": plan.prompt, "seed": plan.seed}
        if plan.lipar is not None:
            body["lipar"] = plan.lipar
        tl.created_at = time.monotonic()
        r = await http.post("/v1/sessions", json=body)
        if r.status_code != 201:
            raise HttpRefused("POST /v1/sessions", r)
        self.session_id = str(r.json()["id"])
        log.info("%s: session %s created", self.name, self.session_id)

        self.stage = "making the offer"
        self.pc = pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.track = PacedTrack(self.clip, tl)
        pc.addTransceiver(self.track, direction="sendrecv")
        pc.on("track", self._on_track)
        pc.on("connectionstatechange", self._conn_changed.set)
        await pc.setLocalDescription(await pc.createOffer())
        self.stage = "posting the offer"
        r = await http.post(f"/v1/sessions/{self.session_id}/offer", json={"sdp": pc.localDescription.sdp})
        if r.status_code != 200:
            raise HttpRefused(f"POST /v1/sessions/{self.session_id}/offer", r)
        tl.answered_at = time.monotonic()
        await pc.setRemoteDescription(RTCSessionDescription(sdp=r.json()["sdp"], type="answer"))

        self.stage = "connecting (ICE, DTLS)"
        await asyncio.wait_for(self._wait_connected(), CONNECT_TIMEOUT_S)
        self.connected = True
        tl.connected_at = time.monotonic()
        log.info("%s: connected", self.name)
        if plan.prompt_change_at is not None:
            self._prompt_task = asyncio.create_task(self._prompt_change(http), name=f"{self.name}-prompt")

        self.stage = "sending"
        await self.track.measured_done.wait()
        self.stage = "reading the server's stats"
        self.server_view = await self._server_stats(http)
        self.stage = "draining"
        try:
            await asyncio.wait_for(
                asyncio.gather(self._drained.wait(), self._prompt_applied.wait()), DRAIN_MAX_S
            )
        except TimeoutError:
            if not self._drained.is_set():
                self.notes.append(f"the last measured frame did not come back within {DRAIN_MAX_S:g} s")
        self.track.stop_sending()
        self.stage = "finished"

    async def _wait_connected(self) -> None:
        assert self.pc is not None
        while self.pc.connectionState != "connected":
            if self.pc.connectionState in ("failed", "closed"):
                raise ConnectionError(f"the WebRTC connection {self.pc.connectionState}")
            self._conn_changed.clear()
            await self._conn_changed.wait()

    def _on_track(self, remote: MediaStreamTrack) -> None:
        if remote.kind == "video" and self._reader is None:
            self._reader = asyncio.create_task(self._read(remote), name=f"{self.name}-reader")

    async def _read(self, remote: MediaStreamTrack) -> None:
        """Record ``(pts, receive time)`` of every edited frame (no pixel conversion: the client stays cheap)."""
        last_measured, step = self.timeline.measured_frames - 1, self.timeline.step
        try:
            while True:
                frame = await remote.recv()
                at = time.monotonic()
                pts = int(frame.pts or 0)
                self.timeline.received.append((pts, at))
                if not self._first_frame.is_set():
                    self._first_frame.set()
                    log.info("%s: first edited frame", self.name)
                if frame_index(pts, step) >= last_measured:
                    self._drained.set()
        except MediaStreamError:
            return

    async def _server_stats(self, http: httpx.AsyncClient) -> dict[str, Any] | None:
        """The server's stats of this session (the fields in :data:`SERVER_STATS_KEYS`), or None on an error."""
        try:
            r = await http.get(f"/v1/sessions/{self.session_id}")
        except httpx.HTTPError as e:
            self.notes.append(f"GET the session record failed: {type(e).__name__}")
            return None
        if r.status_code != 200:
            self.notes.append(f"GET the session record: HTTP {r.status_code}: {error_message(r)}")
            return None
        rec = r.json()
        stats = rec.get("stats") or {}
        view = {k: stats[k] for k in SERVER_STATS_KEYS if k in stats}
        view["record_state"] = rec.get("state")
        view["reason"] = rec.get("reason")
        if view["record_state"] in ("failed", "closed"):
            self.notes.append(f"the server's session is {view['record_state']}: {view['reason']}")
        return view

    async def _prompt_change(self, http: httpx.AsyncClient) -> None:
        """PATCH the prompt ``prompt_change_at`` s after the first frame; poll until the server applied it."""
        plan, tl = self.plan, self.timeline
        assert plan.prompt_change_at is not None and plan.prompt_change_to is not None
        try:
            await self._first_frame.wait()
            first = tl.first_received_at
            assert first is not None
            await asyncio.sleep(max(0.0, first + plan.prompt_change_at - time.monotonic()))
            r = await http.get(f"/v1/sessions/{self.session_id}")
            stats = (r.json().get("stats") or {}) if r.status_code == 200 else {}
            present = "prompt_applied_pts" in stats
            before = stats.get("prompt_applied_pts")
            tl.patch_at = time.monotonic()
            r = await http.patch(f"/v1/sessions/{self.session_id}", json={"prompt": plan.prompt_change_to})
            if r.status_code != 200:
                self.notes.append(f"PATCH the prompt: HTTP {r.status_code}: {error_message(r)}")
                return
            log.info("%s: prompt changed to %r", self.name, plan.prompt_change_to)
            self.prompt_field = present
            if not present:
                self.notes.append(
                    "the server does not report stats.prompt_applied_pts: prompt-change latency not measured"
                )
                return
            while True:
                await asyncio.sleep(POLL_S)
                r = await http.get(f"/v1/sessions/{self.session_id}")
                if r.status_code != 200:
                    continue
                value = (r.json().get("stats") or {}).get("prompt_applied_pts")
                if value is not None and (before is None or value > before):
                    tl.applied_pts = int(value)
                    log.info("%s: new prompt applied from pts %d", self.name, tl.applied_pts)
                    return
        except httpx.HTTPError as e:
            self.notes.append(f"prompt change: {type(e).__name__}: {e}")
        finally:
            self._prompt_applied.set()

    async def _teardown(self, http: httpx.AsyncClient) -> None:
        """Stop the tasks, close the peer connection, DELETE the session: each bounded, errors logged."""
        for task in (self._prompt_task, self._reader):
            if task is not None and not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        if self.prompt_field and self.timeline.applied_pts is None:
            self.notes.append("the new prompt was not seen applied before the end of the session")
        if self.track is not None:
            self.track.stop_sending()
        if self.pc is not None:
            try:
                await asyncio.wait_for(self.pc.close(), CLOSE_TIMEOUT_S)
            except TimeoutError:
                log.warning("%s: closing the peer connection timed out", self.name)
        if self.session_id is not None:
            try:
                r = await http.delete(f"/v1/sessions/{self.session_id}")
                if r.status_code not in (204, 404):
                    log.warning("%s: DELETE: HTTP %d: %s", self.name, r.status_code, error_message(r))
            except httpx.HTTPError as e:
                log.warning("%s: DELETE failed: %s", self.name, type(e).__name__)


# ---- the worker process ----------------------------------------------------------------------------------
def max_frames(seconds: float, fps: float, width: int, height: int) -> int:
    """Frames to decode from a clip: what one session can send (the measured period plus the longest tail), at
    most :data:`CLIP_BUDGET_BYTES` of yuv420p frames (a longer clip loops sooner)."""
    frame_bytes = width * height * 3 // 2
    return max(1, min(math.ceil((seconds + DRAIN_MAX_S) * fps), CLIP_BUDGET_BYTES // frame_bytes))


def load_sources(spec: WorkerSpec) -> dict[str, Clip]:
    """The clips this worker's sessions send, each decoded once."""
    from server.loadtest.sources import SYNTHETIC

    clips: dict[str, Clip] = {}
    for plan in spec.plans:
        if plan.clip in clips:
            continue
        if plan.clip == SYNTHETIC:
            clips[plan.clip] = synthetic_clip(spec.width, spec.height, spec.fps, spec.seed)
        else:
            clips[plan.clip] = load_clip(
                Path(plan.clip),
                spec.width,
                spec.height,
                max_frames(spec.seconds, spec.fps, spec.width, spec.height),
            )
    return clips


async def _worker_loop(spec: WorkerSpec, clips: dict[str, Clip], queue: Any, start_at: float) -> None:
    sessions = [ClientSession(plan, clips[plan.clip], spec.worker) for plan in spec.plans]

    async def one(s: ClientSession) -> None:
        await asyncio.sleep(max(0.0, start_at + s.plan.start_offset_s - time.monotonic()))  # the stagger
        queue.put(("result", await s.run()))

    async def progress() -> None:
        while True:
            await asyncio.sleep(PROGRESS_S)
            for s in sessions:
                counts = (len(s.timeline.sent), len(s.timeline.received))
                queue.put(("progress", s.plan.index, s.stage, *counts, s.session_id))

    reporter = asyncio.create_task(progress())
    try:
        await asyncio.gather(*(one(s) for s in sessions))
    finally:
        reporter.cancel()
        await asyncio.gather(reporter, return_exceptions=True)


def worker_main(
    spec: WorkerSpec,
    queue: Any,
    go: multiprocessing.synchronize.Event,
    start_at: Any,
    ready_timeout_s: float,
) -> None:
    """Entry point of a client worker process (spawned): load the clips, say ``ready``, wait for ``go``, run
    the sessions in one event loop from the monotonic time ``start_at.value``, send each result to ``queue``.
    Messages: ``("ready", worker)``, ``("progress", index, stage, sent, received, session id)``,
    ``("result", dict)``,
    ``("error", worker, message)``, ``("done", worker)``."""
    logging.basicConfig(
        level=spec.log_level,
        format=f"%(asctime)s client{spec.worker} %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("aiortc", "aioice", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, spec.log_level))
    try:
        from server.rtc.ice import configure_ice

        configure_ice(list(spec.ice_hosts), None)
        clips = load_sources(spec)
    except Exception as e:
        queue.put(("error", spec.worker, f"{type(e).__name__}: {e}"))
        return
    queue.put(("ready", spec.worker))
    if not go.wait(ready_timeout_s):
        queue.put(("error", spec.worker, "never told to start"))
        return
    try:
        asyncio.run(_worker_loop(spec, clips, queue, float(start_at.value)))
    except Exception as e:
        log.exception("client worker %d failed", spec.worker)
        queue.put(("error", spec.worker, f"{type(e).__name__}: {e}"))
        return
    queue.put(("done", spec.worker))
