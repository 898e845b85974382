"""One aiortc peer connection per session: the browser's offer in, our answer out. Server process, event loop.

The browser offers one video m-line (sendrecv): its webcam comes in on it and the edited video goes back on
the same transceiver. aiortc gathers every candidate before it answers (no trickle ICE), so the answer is
complete.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Callable

from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpTransceiver, RTCSessionDescription
from aiortc.mediastreams import MediaStreamTrack

from server.rtc.codecs import Codec, prefer_codec

log = logging.getLogger(__name__)


class BadOffer(ValueError):
    """The SDP offer cannot be used; the message says why (HTTP 400)."""


#: remote ICE candidates an offer may list. aiortc checks connectivity to every one of them (UDP packets to each
#: address), so an unbounded list would make the server a reflector towards addresses the client chose; a
#: browser offers a handful (one per interface and protocol).
MAX_REMOTE_CANDIDATES = 32


def check_offer(sdp: str) -> None:
    """Refuse offers the server must not act on, before any socket is touched (:class:`BadOffer`): no video
    m-line, a rejected one (port 0), no DTLS fingerprint (media could not be authenticated), more than
    :data:`MAX_REMOTE_CANDIDATES` candidates, or a candidate whose port is not 1-65535 or whose address is
    neither an IP address nor an mDNS ``.local`` name."""
    lines = [ln.strip() for ln in sdp.splitlines()]
    video = [ln for ln in lines if ln.startswith("m=video")]
    if not video:
        raise BadOffer("the offer has no video m-line; offer a sendrecv video transceiver")
    if all(len(v.split()) < 2 or v.split()[1] == "0" for v in video):
        raise BadOffer("the offer's video m-line is rejected (port 0); offer a sendrecv video transceiver")
    if not any(ln.startswith("a=fingerprint:") for ln in lines):
        raise BadOffer("the offer has no DTLS fingerprint (a=fingerprint); media must be encrypted")
    candidates = [ln for ln in lines if ln.startswith("a=candidate:")]
    if len(candidates) > MAX_REMOTE_CANDIDATES:
        raise BadOffer(f"the offer lists {len(candidates)} ICE candidates; at most {MAX_REMOTE_CANDIDATES}")
    for c in candidates:
        parts = c.split()
        if len(parts) < 6 or not parts[5].isdigit() or not 0 < int(parts[5]) < 65536:
            raise BadOffer(f"malformed ICE candidate in the offer: {c[:80]!r}")
        if not _candidate_address_ok(parts[4]):
            raise BadOffer(
                f"ICE candidate address {parts[4][:64]!r} is neither an IP address nor a .local name"
            )


def _candidate_address_ok(address: str) -> bool:
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return address.endswith(".local") and len(address) <= 253
    return True


async def apply_offer(
    pc: RTCPeerConnection, transceiver: RTCRtpTransceiver, codec: Codec, offer_sdp: str
) -> None:
    """Prefer ``codec`` on ``transceiver`` and apply a client's SDP offer to ``pc``.

    Raises:
        BadOffer: aiortc rejected the offer, or its video m-line did not match the transceiver.
    """
    prefer_codec(transceiver, codec)
    try:
        await pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
    except asyncio.CancelledError:
        raise
    except Exception as e:  # aiortc raises ValueError, OperationError, InvalidStateError, ...
        raise BadOffer(f"cannot apply the SDP offer: {e or type(e).__name__}") from None
    if transceiver.mid is None:
        raise BadOffer("the offer's video m-line could not be matched")


class SessionPeer:
    """The peer connection of one session."""

    def __init__(
        self,
        config: RTCConfiguration,
        codec: Codec,
        out_track: MediaStreamTrack,
        on_remote_video: Callable[[MediaStreamTrack], None],
        on_state: Callable[[str], None],
    ) -> None:
        self.pc = RTCPeerConnection(configuration=config)
        self.codec = codec
        self.out_track = out_track
        self._on_remote_video = on_remote_video
        self._on_state = on_state

        @self.pc.on("track")
        def _track(track: MediaStreamTrack) -> None:
            if track.kind == "video":
                self._on_remote_video(track)

        @self.pc.on("connectionstatechange")
        async def _state() -> None:
            self._on_state(self.pc.connectionState)

    async def answer(self, offer_sdp: str) -> str:
        """Apply the offer and return the SDP answer; :class:`BadOffer` when the offer is unusable."""
        check_offer(offer_sdp)
        transceiver = self.pc.addTransceiver(self.out_track, direction="sendrecv")
        await apply_offer(self.pc, transceiver, self.codec, offer_sdp)
        remote = transceiver.receiver.track
        if remote is None or transceiver.direction not in ("sendrecv", "recvonly"):
            raise BadOffer("the offer does not send video; offer a sendrecv video transceiver")
        self._on_remote_video(remote)  # idempotent with the "track" event
        answer = await self.pc.createAnswer()
        await self.pc.setLocalDescription(answer)
        return self.pc.localDescription.sdp

    async def close(self) -> None:
        """Close the connection (idempotent)."""
        await self.pc.close()

    async def discard(self) -> None:
        """Close a connection whose offer failed, without reporting state changes to the session."""
        self._on_state = lambda state: None
        self._on_remote_video = lambda track: None
        await self.pc.close()
