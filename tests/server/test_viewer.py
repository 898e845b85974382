"""Read-only viewers (``POST /v1/sessions/{id}/view``, ``GET /view/{id}``): a real server process (``tiny-random``),
a real aiortc publisher sending a clip, and real aiortc viewers on loopback; plus the fan-out of
:mod:`server.rtc.viewers` in process."""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from server.rtc.outbound import EditedVideoTrack, OutFrame
from server.rtc.peer import BadOffer
from server.rtc.viewers import Viewers, ViewerTrack, check_viewer_offer
from tests.polling import poll
from tests.server.rtc_client import ClientPeer, load_clip
from tests.server.server_proc import ServerProcess

pytestmark = [pytest.mark.timeout(300), pytest.mark.usefixtures("loopback_ice")]

TOKEN = "viewer-test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
FPS = 10.0
LIMIT = 2


@dataclass
class Viewer:
    """A receive-only aiortc peer on a session's viewer endpoint, recording what it gets."""

    pc: RTCPeerConnection
    frames: list[np.ndarray] = field(default_factory=list)
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    _reader: asyncio.Task[None] | None = None

    async def _read(self, remote: MediaStreamTrack) -> None:
        try:
            while True:
                frame = await remote.recv()
                self.frames.append(frame.to_ndarray(format="rgb24"))
        except MediaStreamError:
            self.ended.set()

    async def close(self) -> None:
        await self.pc.close()
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)


async def offer_viewer(
    http: httpx.AsyncClient, session_id: str, direction: str = "recvonly"
) -> tuple[httpx.Response, Viewer | None]:
    """Send a viewer's offer: the response and, when it was answered, the connected viewer."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    viewer = Viewer(pc)
    pc.addTransceiver("video", direction=direction)

    @pc.on("track")
    def _on_track(remote: MediaStreamTrack) -> None:
        viewer._reader = asyncio.create_task(viewer._read(remote))

    @pc.on("connectionstatechange")
    def _state() -> None:
        if pc.connectionState in ("closed", "failed"):
            viewer.ended.set()

    await pc.setLocalDescription(await pc.createOffer())
    r = await http.post(
        f"/v1/sessions/{session_id}/view", json={"sdp": pc.localDescription.sdp, "type": "offer"}
    )
    if r.status_code == 200:
        await pc.setRemoteDescription(RTCSessionDescription(**r.json()))
        return r, viewer
    await pc.close()
    return r, None


async def frames_at_least(viewer: Viewer, n: int, timeout: float) -> None:
    async def enough() -> bool:
        return len(viewer.frames) >= n

    await poll(enough, timeout, f"{n} frames at the viewer (has {len(viewer.frames)})")


def blocks_done(metrics_text: str) -> int:
    """Blocks the worker finished: the count of ``lipar_block_stage_seconds{stage="total"}``."""
    m = re.search(r'^lipar_block_stage_seconds_count\{stage="total"\} (\S+)$', metrics_text, re.M)
    assert m, "no block timing in /metrics"
    return int(float(m.group(1)))


def best_match_mad(frame: np.ndarray, candidates: list[np.ndarray]) -> float:
    """Smallest mean absolute pixel difference between ``frame`` and any of ``candidates`` (0..255)."""
    return min(float(np.abs(frame.astype(np.int16) - c.astype(np.int16)).mean()) for c in candidates)


async def test_two_viewers_share_one_session(start_server) -> None:
    """Two viewers of a streaming session get its edited video (the publisher's frames, at the model's size) with
    no extra model work; a third is refused with a clear 429; one leaving disturbs neither the publisher nor the
    other viewer and frees its place; the session's end closes the viewers. Unknown sessions, sessions not yet
    streaming, missing tokens and offers that would send video are refused with their status and a message."""
    srv: ServerProcess = start_server(LIPAR_API_TOKEN=TOKEN, LIPAR_VIEWERS_PER_SESSION=str(LIMIT))
    clip = load_clip(48)
    async with httpx.AsyncClient(base_url=srv.url, timeout=30, headers=AUTH) as http:
        r = await http.post("/v1/sessions", json={"prompt": "a watercolor painting"})
        assert r.status_code == 201, r.text
        s = r.json()
        sid = s["id"]
        assert s["viewer_url"] == f"{srv.url}/view/{sid}"

        # refused before anything is opened: unknown session, not streaming yet, no token
        r, _ = await offer_viewer(http, "no-such-session")
        assert r.status_code == 404 and "no-such-session" in r.json()["error"]["message"], r.text
        r, _ = await offer_viewer(http, sid)
        assert r.status_code == 409 and "not streaming yet" in r.json()["error"]["message"], r.text
        async with httpx.AsyncClient(base_url=srv.url, timeout=30) as anonymous:
            r, _ = await offer_viewer(anonymous, sid)
            assert r.status_code == 401, r.text

        publisher = await ClientPeer.connect(http, s, clip, fps=FPS, n_frames=100_000, keep_pixels=True)
        viewers: list[Viewer] = []
        try:
            await publisher.wait_frames(12, timeout=90)
            r, _ = await offer_viewer(http, sid, direction="sendrecv")
            assert r.status_code == 400 and "recvonly" in r.json()["error"]["message"], r.text

            for _ in range(LIMIT):
                r, v = await offer_viewer(http, sid)
                assert r.status_code == 200 and v is not None, r.text
                viewers.append(v)
            over, _ = await offer_viewer(http, sid)
            assert over.status_code == 429, over.text
            assert f"LIPAR_VIEWERS_PER_SESSION={LIMIT}" in over.json()["error"]["message"]
            assert int(over.headers["Retry-After"]) > 0

            for v in viewers:
                await frames_at_least(v, 24, timeout=90)
            # the viewers get the session's edited frames: the model's 256x256 output (the clip is 160x128), each
            # viewer frame one the publisher also received (two encodes of one frame differ by coding noise only)
            for v in viewers:
                assert {f.shape for f in v.frames} == {(256, 256, 3)}
            sent = [r.rgb for r in publisher.received if r.rgb is not None]
            noise = [best_match_mad(f, sent) for f in viewers[0].frames[-8:]]
            assert max(noise) < 6.0, noise

            # no model work per viewer: the worker finished exactly the session's blocks, one per 12 input frames
            done = blocks_done((await http.get("/metrics")).text)
            info = (await http.get(f"/v1/sessions/{sid}")).json()["stats"]
            assert done <= info["blocks_out"] + 1, (
                done,
                info,
            )  # +1: a block may finish between the two reads
            assert info["blocks_out"] <= info["frames_in"] // 12, info

            # one viewer leaves: the publisher and the other viewer stream on, and the place is free again
            gone, staying = viewers
            await gone.close()
            pub_before, stay_before = len(publisher.received), len(staying.frames)
            await publisher.wait_frames(pub_before + 24, timeout=60)
            await frames_at_least(staying, stay_before + 24, timeout=60)
            assert (await http.get(f"/v1/sessions/{sid}")).json()["state"] == "streaming"

            async def joined() -> Viewer | None:
                r, v = await offer_viewer(http, sid)
                assert r.status_code in (200, 429), r.text
                return v

            again = await poll(joined, 30, "the leaving viewer's place to be free")
            viewers = [staying, again]
            await frames_at_least(again, 12, timeout=60)

            # the session ends: its viewers are closed
            assert (await http.delete(f"/v1/sessions/{sid}")).status_code == 204
            for v in viewers:
                await asyncio.wait_for(v.ended.wait(), 30)
            r, _ = await offer_viewer(http, sid)
            assert r.status_code in (404, 409), r.text
        finally:
            await publisher.close()
            for v in viewers:
                await v.close()
    assert "Traceback" not in srv.log()


async def test_viewer_page_is_served(start_server) -> None:
    """``GET /view/{id}`` is the static viewer page (no token: the page reads it from the URL fragment), with the
    page's Content-Security-Policy, and its script and style load from the server."""
    srv: ServerProcess = start_server(LIPAR_API_TOKEN=TOKEN)
    async with httpx.AsyncClient(base_url=srv.url, timeout=30) as http:
        r = await http.get("/view/any-session-id")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        assert '<script type="module" src="/viewer.js">' in r.text and 'id="video"' in r.text
        csp = r.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "media-src 'self' blob: mediastream:" in csp
        for asset, kind in (("/viewer.js", "javascript"), ("/viewer.css", "css"), ("/api.js", "javascript")):
            a = await http.get(asset)
            assert a.status_code == 200 and kind in a.headers["content-type"], asset


# ---- in process: the fan-out -------------------------------------------------------------------------------------


def _frame(value: int, pts: int) -> OutFrame:
    return OutFrame(np.full((16, 16, 3), value, np.uint8), pts, 1 / 90_000, time.monotonic())


async def test_viewer_track_drops_oldest_and_ends() -> None:
    track = ViewerTrack(capacity=3)
    for k in range(5):
        track.push(_frame(k, k * 3000))
    assert track.dropped == 2
    got = [int((await track.recv()).to_ndarray(format="rgb24")[0, 0, 0]) for _ in range(3)]
    assert got == [2, 3, 4]
    waiting = asyncio.ensure_future(track.recv())
    await asyncio.sleep(0)
    track.stop()
    with pytest.raises(MediaStreamError):
        await waiting


def test_viewer_offer_must_be_recvonly() -> None:
    base = (
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=fingerprint:sha-256 AA:BB\r\n"
        "m=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=rtpmap:96 VP8/90000\r\n"
    )
    check_viewer_offer(base + "a=recvonly\r\n")
    for direction in ("sendrecv", "sendonly"):
        with pytest.raises(BadOffer, match="recvonly"):
            check_viewer_offer(base + f"a={direction}\r\n")
    with pytest.raises(BadOffer, match="fingerprint"):  # the publisher's checks apply too
        check_viewer_offer(base.replace("a=fingerprint:sha-256 AA:BB\r\n", "") + "a=recvonly\r\n")


async def test_fan_out_follows_the_source_and_refuses_when_off() -> None:
    """The registry listens on the session's track only while it has viewers, refuses everyone at limit 0, and
    forgets a session whose only viewer was refused."""
    source = EditedVideoTrack(8, lambda f, now: None)
    off = Viewers(0, RTCConfiguration(iceServers=[]), "vp8")
    with pytest.raises(Exception, match="turned off"):
        await off.add("s", source, "v=0\r\n")
    viewers = Viewers(2, RTCConfiguration(iceServers=[]), "vp8")
    with pytest.raises(BadOffer):
        await viewers.add("s", source, "v=0\r\n")  # no video m-line
    assert viewers.sessions == {} and source.frame_listeners == []
    source.end()
    with pytest.raises(Exception, match="ended"):
        await viewers.add("s", source, "v=0\r\n")
    assert viewers.sessions == {} and source.frame_listeners == []


async def test_only_the_sessions_node_serves_its_viewers(monkeypatch: pytest.MonkeyPatch) -> None:
    """A viewer's offer sent to a node that does not own the session's media is a 409 naming the owner's viewer page
    (as the publisher's offer is), and an oversized SDP is a 413; no worker, no peer connection needed."""
    from server.main import create_app
    from server.settings import load_settings

    app = create_app(load_settings(config="tiny-random", node_id="here", max_sdp_bytes=2048), client_dir=None)
    record = {
        "id": "s1",
        "node_id": "there",
        "state": "streaming",
        "offer_url": "http://there.example:8000/v1/sessions/s1/offer",
    }

    async def get(session_id: str) -> dict[str, Any]:
        return {**record, "id": session_id}

    monkeypatch.setattr(app.state.manager, "get", get)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http:
        r = await http.post("/v1/sessions/s1/view", json={"sdp": "v=0\r\n", "type": "offer"})
        assert r.status_code == 409, r.text
        assert "open its viewer at http://there.example:8000/view/s1" in r.json()["error"]["message"]
        r = await http.post("/v1/sessions/s1/view", json={"sdp": "x" * 2049, "type": "offer"})
        assert r.status_code == 413 and "2048" in r.json()["error"]["message"], r.text
