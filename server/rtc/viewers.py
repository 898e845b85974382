"""Read-only viewers of a session's edited video: one receive-only peer connection per viewer, all fed from the frames
the session's own outbound track sends. Server process, event loop thread (everything here).

Fan-out: :class:`SessionViewers` listens on the session's :class:`server.rtc.outbound.EditedVideoTrack`
(``frame_listeners``: called with every frame handed to the publisher's encoder, already paced) and pushes each
frame to one :class:`ViewerTrack` per viewer, which that viewer's RTP sender encodes. So N viewers cost no model work and
no second playout: one frame conversion and one encode per viewer, and a slow viewer drops its own oldest frames
without holding up the publisher or the other viewers. (aiortc's ``MediaRelay`` would need the publisher's own
sender to read through the relay too; the listener gives the same fan-out without touching the publisher's path.)

Lifecycle: a viewer that leaves (its connection closes or fails) is removed and nothing else changes; when the
session's track ends (the session closed or failed) every viewer's connection is closed.
"""

from __future__ import annotations

import asyncio
import collections
import fractions
import logging
from collections.abc import Callable

import av
from aiortc import RTCConfiguration, RTCPeerConnection
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from server.rtc.codecs import Codec
from server.rtc.outbound import EditedVideoTrack, OutFrame
from server.rtc.peer import BadOffer, apply_offer, check_offer

log = logging.getLogger(__name__)

#: frames a viewer's track holds while its encoder is busy; beyond it the oldest is dropped (about 0.25 s at 30 fps)
VIEWER_QUEUE_FRAMES = 8


class TooManyViewers(Exception):
    """The session has as many viewers as allowed (``LIPAR_VIEWERS_PER_SESSION``); ``str(e)`` says so."""


class SessionEnded(Exception):
    """The session's video has ended; no viewer can join any more."""


def check_viewer_offer(sdp: str) -> None:
    """The publisher's checks (:func:`server.rtc.peer.check_offer`) plus: the video m-line only receives
    (``a=recvonly``): a viewer sends nothing (:class:`BadOffer` otherwise)."""
    check_offer(sdp)
    section: list[str] = []
    sections: list[list[str]] = []
    for line in (ln.strip() for ln in sdp.splitlines()):
        if line.startswith("m="):
            section = [line]
            sections.append(section)
        elif section:
            section.append(line)
    video = [s for s in sections if s[0].startswith("m=video")]
    if not any("a=recvonly" in s for s in video):
        raise BadOffer("a viewer's offer must receive video only: one recvonly video transceiver")


class ViewerTrack(MediaStreamTrack):
    """One viewer's copy of the session's sent frames: a small drop-oldest queue that its RTP sender reads.

    Args:
        capacity: frames held while the sender is busy; the oldest is dropped beyond it (counted in ``dropped``).
    """

    kind = "video"

    def __init__(self, capacity: int = VIEWER_QUEUE_FRAMES) -> None:
        super().__init__()
        self._queue: collections.deque[OutFrame] = collections.deque()
        self._capacity = capacity
        self._wake = asyncio.Event()
        self.dropped = 0
        self.sent = 0

    def push(self, frame: OutFrame) -> None:
        """Queue a frame the publisher just sent (called from its track's ``recv``: must be quick, never raises)."""
        if self.readyState != "live":
            return
        if len(self._queue) >= self._capacity:
            self._queue.popleft()
            self.dropped += 1
        self._queue.append(frame)
        self._wake.set()

    async def recv(self) -> av.VideoFrame:
        """The next frame, as soon as the publisher sent it; ``MediaStreamError`` once stopped."""
        while not self._queue:
            if self.readyState != "live":
                raise MediaStreamError
            self._wake.clear()
            await self._wake.wait()
        f = self._queue.popleft()
        frame = av.VideoFrame.from_ndarray(f.rgb, format="rgb24")
        frame.pts = f.pts
        frame.time_base = fractions.Fraction(f.time_base).limit_denominator(1_000_000)
        self.sent += 1
        return frame

    def stop(self) -> None:
        """End the track (wakes a waiting ``recv``)."""
        super().stop()
        self._wake.set()


class SessionViewers:
    """The viewers of one session. Created when its first viewer joins; :meth:`close` closes every viewer.

    Args:
        session_id: for logs and messages.
        source: the session's outbound track (its ``frame_listeners`` feed the viewers).
        limit: most viewers at once.
        config: ICE configuration (the server's, as for publishers).
        codec: video codec (the server's).
        on_empty: called when the last viewer left or the session ended (the registry forgets this object).
    """

    def __init__(
        self,
        session_id: str,
        source: EditedVideoTrack,
        limit: int,
        config: RTCConfiguration,
        codec: Codec,
        on_empty: Callable[[SessionViewers], None],
    ) -> None:
        self.session_id, self.source, self.limit = session_id, source, limit
        self.config, self.codec = config, codec
        self._on_empty = on_empty
        self.peers: dict[RTCPeerConnection, ViewerTrack] = {}
        self._joining = 0
        self._closing: asyncio.Future[None] | None = None
        self.closed = False
        source.frame_listeners.append(self._fan_out)
        source.on("ended", self._source_ended)

    def __len__(self) -> int:
        return len(self.peers) + self._joining

    def _fan_out(self, frame: OutFrame) -> None:
        for track in self.peers.values():
            track.push(frame)

    def _source_ended(self) -> None:
        log.info("session %s ended: closing its %d viewer(s)", self.session_id, len(self.peers))
        self._closing = asyncio.ensure_future(self.close())  # referenced: the loop keeps only weak references

    async def add(self, offer_sdp: str) -> str:
        """Answer a viewer's offer (sendonly towards it). Raises :class:`BadOffer` (unusable offer),
        :class:`TooManyViewers` or :class:`SessionEnded`; nothing is kept for a refused viewer."""
        if self.closed or self.source.readyState != "live":
            raise SessionEnded(f"session {self.session_id} has ended")
        if len(self) >= self.limit:
            raise TooManyViewers(
                f"session {self.session_id} has {len(self)} viewers, the most allowed (LIPAR_VIEWERS_PER_SESSION="
                f"{self.limit}); retry when one leaves"
            )
        check_viewer_offer(offer_sdp)
        self._joining += 1  # counted against the limit while the answer is made (concurrent offers)
        pc = RTCPeerConnection(configuration=self.config)
        track = ViewerTrack()
        try:
            transceiver = pc.addTransceiver(track, direction="sendonly")
            await apply_offer(pc, transceiver, self.codec, offer_sdp)
            await pc.setLocalDescription(await pc.createAnswer())
            if self.closed:
                raise SessionEnded(f"session {self.session_id} has ended")
        except BaseException:
            track.stop()
            await pc.close()
            raise
        finally:
            self._joining -= 1
        self.peers[pc] = track

        @pc.on("connectionstatechange")
        async def _state() -> None:
            if pc.connectionState in ("failed", "closed"):
                await self._remove(pc)

        log.info("session %s: viewer joined (%d now)", self.session_id, len(self.peers))
        return str(pc.localDescription.sdp)

    async def _remove(self, pc: RTCPeerConnection) -> None:
        """A viewer left: close its connection; the session and the other viewers go on."""
        track = self.peers.pop(pc, None)
        if track is None:
            return
        track.stop()
        await pc.close()
        log.info(
            "session %s: viewer left (%d now; it was sent %d frames, dropped %d)",
            self.session_id,
            len(self.peers),
            track.sent,
            track.dropped,
        )
        if not self.peers and not self._joining:
            self._detach()

    def _detach(self) -> None:
        """Stop listening on the session's track and leave the registry (idempotent)."""
        if self._fan_out in self.source.frame_listeners:
            self.source.frame_listeners.remove(self._fan_out)
            self.source.remove_listener("ended", self._source_ended)
        self._on_empty(self)

    async def close(self) -> None:
        """Close every viewer (the session ended or the server stops); idempotent."""
        if self.closed:
            return
        self.closed = True
        peers = list(self.peers.items())
        self.peers.clear()
        for _, track in peers:
            track.stop()
        await asyncio.gather(*(pc.close() for pc, _ in peers), return_exceptions=True)
        self._detach()


class Viewers:
    """Every session's viewers on this node (the app holds one).

    Args:
        limit: most viewers per session (``LIPAR_VIEWERS_PER_SESSION``; 0: viewers are refused).
        config: ICE configuration.
        codec: video codec.
    """

    def __init__(self, limit: int, config: RTCConfiguration, codec: Codec) -> None:
        self.limit, self.config, self.codec = limit, config, codec
        self.sessions: dict[str, SessionViewers] = {}

    def count(self, session_id: str) -> int:
        """Viewers of a session now (joining ones included)."""
        v = self.sessions.get(session_id)
        return len(v) if v is not None else 0

    async def add(self, session_id: str, source: EditedVideoTrack, offer_sdp: str) -> str:
        """Answer a viewer's offer for the session whose outbound track is ``source`` (see
        :meth:`SessionViewers.add` for what it raises)."""
        if self.limit == 0:
            raise TooManyViewers("viewers are turned off on this server (LIPAR_VIEWERS_PER_SESSION=0)")
        v = self.sessions.get(session_id)
        if v is None or v.source is not source or v.closed:
            v = self.sessions[session_id] = SessionViewers(
                session_id, source, self.limit, self.config, self.codec, self._forget
            )
        try:
            return await v.add(offer_sdp)
        finally:
            if not len(v) and not v.closed:
                v._detach()  # the first viewer was refused: keep nothing

    def _forget(self, v: SessionViewers) -> None:
        if self.sessions.get(v.session_id) is v:
            del self.sessions[v.session_id]

    async def close(self) -> None:
        """Close every viewer of every session (server shutdown)."""
        await asyncio.gather(*(v.close() for v in list(self.sessions.values())), return_exceptions=True)
