"""RTC building blocks: the drop-oldest ring, the centre-crop conversion, the paced outbound track, codec
choice and the pinned UDP port range in a real offer/answer on loopback."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator

import av
import numpy as np
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection
from aiortc.mediastreams import MediaStreamError

from server.rtc.ice import configure_ice
from server.rtc.inbound import to_model_rgb
from server.rtc.outbound import EditedVideoTrack, OutFrame
from server.rtc.peer import BadOffer, SessionPeer
from server.rtc.ring import FrameRing, FrameThinner, InFrame
from tests.server.pacing_sim import FakeClock
from tests.server.rtc_client import ClipTrack, load_clip

pytestmark = pytest.mark.timeout(60)


def _in(i: int) -> InFrame:
    return InFrame(np.full((2, 2, 3), i, np.uint8), i * 3000, 1 / 90000, float(i))


def test_ring_drops_oldest() -> None:
    ring = FrameRing(4)
    dropped = sum(ring.push(_in(i)) for i in range(7))
    assert dropped == 3 and ring.dropped == 3 and len(ring) == 4
    assert ring.pop_block(5) is None
    assert [f.pts for f in ring.pop_block(3) or []] == [9000, 12000, 15000]
    assert len(ring) == 1


def test_thinner_keeps_every_frame_while_the_model_keeps_up() -> None:
    th = FrameThinner(4)
    assert all(th.keep(30.0) for _ in range(10)), "before any block: everything"
    th.on_block(0.1)  # 4 frames in 0.1 s: 40 fps sustained, 36 with headroom, above the 30 fps input
    assert all(th.keep(30.0) for _ in range(60)) and th.skipped == 0


def test_thinner_spreads_the_frames_it_keeps_evenly() -> None:
    th = FrameThinner(4, headroom=0.9)
    th.on_block(0.24)  # 16.7 fps sustained: 15 fps aimed at, half of a 30 fps input
    kept = [i for i in range(300) if th.keep(30.0)]
    assert abs(len(kept) - 150) <= 1
    gaps = np.diff(kept)
    assert set(gaps.tolist()) == {2}, "every other frame, never a run of drops"
    th2 = FrameThinner(4, headroom=0.9)
    th2.on_block(0.4)  # 10 fps sustained: 9 of 30 kept, gaps of 3 or 4 input frames
    gaps2 = np.diff([i for i in range(300) if th2.keep(30.0)])
    assert set(gaps2.tolist()) <= {3, 4} and abs(300 / (len(gaps2) + 1) - 30 / 9) < 0.1


def test_thinner_follows_the_block_time() -> None:
    th = FrameThinner(4, alpha=0.5)
    th.on_block(0.4)
    assert th.share(30.0) == pytest.approx(th.headroom * 10 / 30)
    for _ in range(20):
        th.on_block(0.1)  # the model got faster (LIPAR pruning, a session closed): back to every frame
    assert th.share(30.0) == 1.0
    th.on_block(0.0)  # a block without a time changes nothing
    assert th.share(30.0) == 1.0
    with pytest.raises(ValueError):
        FrameThinner(0)


def test_to_model_rgb_crops_to_aspect() -> None:
    img = np.zeros((120, 320, 3), np.uint8)
    img[:, 100:220] = 255  # a white centre band 120 px wide
    frame = av.VideoFrame.from_ndarray(img, format="rgb24")
    frame.pts = 42
    out = to_model_rgb(frame, 64, 64)
    assert out.rgb.shape == (64, 64, 3) and out.pts == 42
    assert out.rgb[:, 8:56].mean() > 200, "the centre of a wide frame is kept"


async def test_outbound_track_paces_at_input_rate_and_keeps_timestamps() -> None:
    sent: list[float] = []
    track = EditedVideoTrack(5, lambda f, now: sent.append(now))
    step = 9000  # 10 fps at 90 kHz
    now = time.monotonic()
    dropped = track.put(
        [OutFrame(np.zeros((16, 16, 3), np.uint8), k * step, 1 / 90000, now) for k in range(7)]
    )
    assert dropped == 2 and track.queued == 5
    frames = [await track.recv() for _ in range(5)]
    assert [f.pts for f in frames] == [k * step for k in range(2, 7)]
    gaps = np.diff(sent)
    assert np.all(gaps > 0.08) and np.all(gaps < 0.2), gaps
    track.end()
    with pytest.raises(MediaStreamError):
        await asyncio.wait_for(track.recv(), 1)


async def test_outbound_track_skips_frames_due_long_ago() -> None:
    """A sender that stalls cannot catch up by sending faster: frames due more than max_backlog frame intervals
    ago when it asks again are skipped (counted); the rest go out from the freshest one kept."""
    clock = FakeClock(10.0)
    drops: list[int] = []
    track = EditedVideoTrack(
        36, lambda f, now: None, max_backlog=6, on_dropped=drops.append, clock=clock.now, sleep=clock.sleep
    )
    # 12 frames at 10 fps captured 8.8 .. 9.9 s, arriving at 10.0 s: due from 10.01 s on, 0.1 s apart
    track.put(
        [OutFrame(np.zeros((16, 16, 3), np.uint8), k * 9000, 1 / 90000, 8.8 + 0.1 * k) for k in range(12)]
    )
    clock.t = 11.0  # the sender stalls for a second
    first = await track.recv()
    # frames 0..3 are more than 6 intervals (0.6 s) overdue at 11.0 s
    assert first.pts == 4 * 9000 and sum(drops) == 4 and track.queued == 7


@pytest.fixture
def loopback_range() -> Iterator[tuple[int, int]]:
    rng = (41000, 41020)
    configure_ice(["127.0.0.1"], rng)
    yield rng
    configure_ice([], None)


@pytest.mark.parametrize("codec", ["vp8", "h264"])
async def test_answer_uses_codec_and_port_range(loopback_range: tuple[int, int], codec: str) -> None:
    client = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    client.addTransceiver(ClipTrack(load_clip(2), 10, 2), direction="sendrecv")
    await client.setLocalDescription(await client.createOffer())
    server = SessionPeer(
        RTCConfiguration(iceServers=[]),
        codec,
        EditedVideoTrack(4, lambda f, n: None),
        lambda t: None,
        lambda s: None,
    )
    try:
        sdp = await server.answer(client.localDescription.sdp)
        rtpmaps = re.findall(r"a=rtpmap:\d+ ([\w-]+)/90000", sdp)
        assert set(rtpmaps) <= {codec.upper(), "rtx"} and codec.upper() in rtpmaps, rtpmaps
        ports = [int(p) for p in re.findall(r"a=candidate:\S+ \d+ udp \d+ 127\.0\.0\.1 (\d+) typ host", sdp)]
        assert ports and all(loopback_range[0] <= p <= loopback_range[1] for p in ports), ports
        assert "stun" not in sdp.lower()
    finally:
        await server.close()
        await client.close()


async def test_offer_without_video_is_refused() -> None:
    client = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    client.addTransceiver("audio", direction="sendrecv")
    await client.setLocalDescription(await client.createOffer())
    server = SessionPeer(
        RTCConfiguration(iceServers=[]),
        "vp8",
        EditedVideoTrack(4, lambda f, n: None),
        lambda t: None,
        lambda s: None,
    )
    try:
        with pytest.raises(BadOffer, match="video"):
            await server.answer(client.localDescription.sdp)
    finally:
        await server.discard()
        await client.close()
