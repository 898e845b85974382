"""Races and hostile offers (issue 18): concurrent offers and DELETEs of one session on both stores, and SDP
offers that would turn the server into a reflector or carry unauthenticated media, refused before any socket."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator

import httpx
import pytest
import pytest_asyncio
from aiortc import RTCConfiguration, RTCPeerConnection

from server.main import create_app
from server.rtc.ice import configure_ice
from server.rtc.peer import MAX_REMOTE_CANDIDATES, BadOffer, check_offer
from server.settings import load_settings
from tests.faults.conftest import RedisServer
from tests.server.rtc_client import ClipTrack, load_clip

pytestmark = [pytest.mark.timeout(180), pytest.mark.asyncio(loop_scope="module")]


@pytest_asyncio.fixture(scope="module", loop_scope="module", params=["memory", "redis"])
async def api(request: pytest.FixtureRequest) -> AsyncIterator[httpx.AsyncClient]:
    """An in-process server (tiny-random preset, two sessions per worker) on the memory store or a real Redis."""
    extra: dict[str, str] = {}
    if request.param == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        extra["redis_url"] = server.url
    settings = load_settings(
        config="tiny-random",
        node_id=f"races-{request.param}",
        sessions_per_worker=2,
        rtc_host_addresses="127.0.0.1",
        **extra,
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        assert await app.state.manager.pool.wait_ready(120)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=30) as c:
            yield c


async def test_concurrent_offers_and_deletes_of_one_session(api: httpx.AsyncClient) -> None:
    """Of several offers racing for one session exactly one is answered (the others 409, nothing half-made
    left behind); of several DELETEs racing, exactly one answers 204 and the others 404."""
    s = (await api.post("/v1/sessions", json={"prompt": "race"})).json()
    pcs = [RTCPeerConnection(RTCConfiguration(iceServers=[])) for _ in range(3)]
    try:
        for pc in pcs:
            pc.addTransceiver(ClipTrack(load_clip(2), 10, 2), direction="sendrecv")
            await pc.setLocalDescription(await pc.createOffer())
        rs = await asyncio.gather(
            *(api.post(f"/v1/sessions/{s['id']}/offer", json={"sdp": pc.localDescription.sdp}) for pc in pcs)
        )
        codes = sorted(r.status_code for r in rs)
        assert codes == [200, 409, 409], [r.text for r in rs]
        assert all("already" in r.json()["error"]["message"] for r in rs if r.status_code == 409)
    finally:
        for pc in pcs:
            await pc.close()
    rs = await asyncio.gather(*(api.delete(f"/v1/sessions/{s['id']}") for _ in range(4)))
    assert sorted(r.status_code for r in rs) == [204, 404, 404, 404]
    assert (await api.get(f"/v1/sessions/{s['id']}")).status_code == 404


async def test_hostile_offers_are_refused_before_any_socket() -> None:
    """An offer that would make the server send packets where the client says (hundreds of candidates), carry
    unauthenticated media (no fingerprint) or has no usable video line is refused with a reason; a real
    browser-like offer passes."""
    configure_ice(["127.0.0.1"], None)
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        pc.addTransceiver("video", direction="sendrecv")
        await pc.setLocalDescription(await pc.createOffer())
        sdp = pc.localDescription.sdp
    finally:
        await pc.close()
        configure_ice([], None)
    check_offer(sdp)  # a real offer passes
    cand = next(ln for ln in sdp.splitlines() if ln.startswith("a=candidate:"))
    parts = cand.split()
    many = sdp.replace(
        cand,
        "\r\n".join(
            " ".join([f"a=candidate:{i}", *parts[1:4], f"10.{i // 250}.{i % 250}.1", *parts[5:]])
            for i in range(MAX_REMOTE_CANDIDATES + 168)
        ),
    )
    cases = {
        "ICE candidates": many,
        "fingerprint": "\r\n".join(ln for ln in sdp.splitlines() if not ln.startswith("a=fingerprint")),
        "port 0": re.sub(r"^m=video \d+ ", "m=video 0 ", sdp, count=1, flags=re.M),
        "neither an IP": sdp.replace(cand, " ".join([*parts[:4], "example.com", *parts[5:]])),
        "malformed": sdp.replace(cand, " ".join([*parts[:4], parts[4], "0", *parts[6:]])),
    }
    for why, bad in cases.items():
        assert bad != sdp, why
        with pytest.raises(BadOffer, match=why):
            check_offer(bad)
    ok_mdns = sdp.replace(
        cand, " ".join([*parts[:4], "0f6c1d2e-1111-4a4a-9c9c-123456789abc.local", *parts[5:]])
    )
    check_offer(ok_mdns)
