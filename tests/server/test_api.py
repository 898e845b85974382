"""The REST API v1 in process (httpx ASGI transport, real worker process with the tiny preset), against the
in-memory store and against a real redis-server: statuses, messages, auth, limits, admission, idle timeout."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import httpx
import pytest
import pytest_asyncio
from aiortc import RTCConfiguration, RTCPeerConnection
from fastapi import FastAPI

from server.main import create_app
from server.settings import load_settings
from tests.server.rtc_client import ClipTrack, load_clip

pytestmark = [pytest.mark.timeout(180), pytest.mark.asyncio(loop_scope="module")]

TOKEN = "test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def _client(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test", timeout=30)


@pytest_asyncio.fixture(scope="module", loop_scope="module", params=["memory", "redis"])
async def api(request: pytest.FixtureRequest) -> AsyncIterator[httpx.AsyncClient]:
    extra = {"redis_url": request.getfixturevalue("redis_url")} if request.param == "redis" else {}
    settings = load_settings(
        config="tiny-random",
        api_token=TOKEN,
        node_id=f"api-{request.param}",
        sessions_per_worker=2,
        max_body_bytes=8192,
        max_sdp_bytes=2048,
        max_prompt_chars=50,
        rtc_host_addresses="127.0.0.1",
        **extra,
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        assert await app.state.manager.pool.wait_ready(120)
        async with await _client(app) as c:
            c.headers.update(AUTH)
            yield c


async def test_probes_and_metrics(api: httpx.AsyncClient) -> None:
    assert (await api.get("/healthz", headers={"Authorization": ""})).json()["status"] == "ok"
    r = await api.get("/readyz")
    assert r.status_code == 200 and r.json()["checks"]["store"]["ok"] is True
    assert r.json()["checks"]["workers"][0]["ready"] is True
    # each worker reports its load about once a second: busy (0..1) and blocks per second in /readyz
    deadline = time.monotonic() + 30
    while (w := (await api.get("/readyz")).json()["checks"]["workers"][0])["busy"] is None:
        assert time.monotonic() < deadline, w
        await asyncio.sleep(0.1)
    assert 0.0 <= w["busy"] <= 1.0 and w["blocks_per_s"] >= 0.0, w
    text = (await api.get("/metrics")).text
    for name in (
        "lipar_event_loop_lag_seconds_bucket",
        'lipar_worker_busy_ratio{worker="0"}',
        "lipar_time_to_first_frame_seconds",
        "lipar_frame_interval_seconds",
        "lipar_glass_to_glass_latency_seconds",
        "lipar_prune_ratio",
        "lipar_sessions_active",
        "lipar_sessions_queued",
        "lipar_frames_dropped_total",
        "lipar_workers_up 1.0",
    ):
        assert name in text, name
    spec = (await api.get("/openapi.json")).json()
    assert {"/v1/sessions", "/v1/sessions/{session_id}", "/v1/sessions/{session_id}/offer"} <= set(
        spec["paths"]
    )


async def test_auth(api: httpx.AsyncClient) -> None:
    r = await api.get("/v1/sessions", headers={"Authorization": ""})
    assert r.status_code == 401 and r.headers["WWW-Authenticate"].startswith("Bearer")
    assert r.json()["error"]["code"] == "unauthorized" and "token" in r.json()["error"]["message"]
    r = await api.post(
        "/v1/sessions", json={"prompt": "x"}, headers={"Authorization": "Bearer wrong-token-xyz"}
    )
    assert r.status_code == 401 and r.json()["error"]["message"] == "invalid bearer token"


async def test_session_crud(api: httpx.AsyncClient) -> None:
    r = await api.post(
        "/v1/sessions", json={"prompt": "a watercolor painting", "seed": 3, "strength": 0.5, "steps": 2}
    )
    assert r.status_code == 201, r.text
    s = r.json()
    assert s["state"] == "created" and s["offer_url"].endswith(f"/v1/sessions/{s['id']}/offer")
    assert s["stats"]["frames_in"] == 0 and s["stats"]["latency_ms"] == {"p50": None, "p95": None}
    assert (await api.get(f"/v1/sessions/{s['id']}")).json()["seed"] == 3
    assert s["lipar"] is None and s["stats"]["mask"] is None
    r2 = await api.post("/v1/sessions", json={"prompt": "x", "lipar": {"enabled": False, "tau": 0.2}})
    assert r2.status_code == 201 and r2.json()["lipar"] == {"enabled": False, "tau": 0.2}, r2.text
    assert (await api.delete(f"/v1/sessions/{r2.json()['id']}")).status_code == 204
    assert s["id"] in [x["id"] for x in (await api.get("/v1/sessions")).json()["sessions"]]
    r = await api.patch(
        f"/v1/sessions/{s['id']}",
        json={"prompt": "a bronze statue", "transition": "smooth", "blend_blocks": 3},
    )
    assert r.status_code == 200 and r.json()["prompt"] == "a bronze statue" and r.json()["blend_blocks"] == 3
    r = await api.patch(f"/v1/sessions/{s['id']}", json={"strength": 0.3})
    assert r.status_code == 200 and r.json()["strength"] == 0.3 and r.json()["prompt"] == "a bronze statue"
    assert (await api.delete(f"/v1/sessions/{s['id']}")).status_code == 204
    assert (await api.get(f"/v1/sessions/{s['id']}")).status_code == 404
    assert (await api.delete(f"/v1/sessions/{s['id']}")).status_code == 404


@pytest.mark.parametrize(
    "body,field",
    [
        ({"prompt": ""}, "prompt"),
        ({"prompt": "x", "strength": 0}, "strength"),
        ({"prompt": "x", "strength": 1.5}, "strength"),
        ({"prompt": "x", "steps": 9}, "steps"),
        ({"prompt": "x", "seed": -1}, "seed"),
        ({"prompt": "x", "colour": "red"}, "colour"),
        ({}, "prompt"),
        ({"prompt": "y" * 51}, "prompt"),
        ({"prompt": "x", "lipar": {"tau": -1}}, "tau"),
        ({"prompt": "x", "lipar": {"recovery": "magic"}}, "recovery"),
        ({"prompt": "x", "lipar": {"bucket": 7}}, "bucket"),
        ({"prompt": "x", "lipar": {"floor_pixel": 1.5}}, "floor_pixel"),  # LiparConfig's bound, derived
        ({"prompt": "x", "lipar": {"mask_source": "external"}}, "mask_source"),
    ],
)
async def test_invalid_create(api: httpx.AsyncClient, body: dict, field: str) -> None:
    r = await api.post("/v1/sessions", json=body)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "invalid" and field in r.json()["error"]["message"]


async def test_lipar_overrides_are_derived_from_lipar_config() -> None:
    """Every LIPAR knob a session may override has LiparConfig's bounds and description (one source)."""
    from lipar_core.lipar.config import LiparConfig
    from server.api.schemas import SESSION_LIPAR_KNOBS, LiparSettings

    def bounds(prop: dict) -> list[dict]:
        alts = [
            {k: v for k, v in a.items() if k in ("minimum", "maximum")} for a in prop.get("anyOf", [prop])
        ]
        return [a for a in alts if a]

    api = LiparSettings.model_json_schema()["properties"]
    lib = LiparConfig.model_json_schema()["properties"]
    assert set(api) == set(SESSION_LIPAR_KNOBS)
    for name in SESSION_LIPAR_KNOBS:
        assert bounds(api[name]) == bounds(lib[name]), name
        assert api[name]["description"] == lib[name]["description"] and api[name]["default"] is None


async def test_invalid_patch_and_unknown(api: httpx.AsyncClient) -> None:
    s = (await api.post("/v1/sessions", json={"prompt": "a cat"})).json()
    try:
        for body, needle in (
            ({}, "nothing to change"),
            ({"prompt": "a dog", "blend_blocks": 2}, "smooth"),
            ({"transition": "fade", "prompt": "a dog"}, "transition"),
            ({"steps": 0}, "steps"),
        ):
            r = await api.patch(f"/v1/sessions/{s['id']}", json=body)
            assert r.status_code == 422 and needle in r.json()["error"]["message"], r.text
        r = await api.patch("/v1/sessions/unknown", json={"prompt": "a dog"})
        assert r.status_code == 404 and "unknown" in r.json()["error"]["message"]
        assert (await api.get("/v1/sessions/unknown")).status_code == 404
        assert (await api.get("/v1/nothing-here")).json()["error"]["code"] == "not_found"
        assert (await api.put(f"/v1/sessions/{s['id']}")).status_code == 405
    finally:
        await api.delete(f"/v1/sessions/{s['id']}")


async def test_size_limits_and_bad_sdp(api: httpx.AsyncClient) -> None:
    s = (await api.post("/v1/sessions", json={"prompt": "a cat"})).json()
    try:
        r = await api.post(
            "/v1/sessions",
            content=b'{"prompt": "' + b"x" * 9000 + b'"}',
            headers={"content-type": "application/json"},
        )
        assert r.status_code == 413 and r.json()["error"]["code"] == "too_large"
        r = await api.post(f"/v1/sessions/{s['id']}/offer", json={"sdp": "v=0\r\n" + "a=x\r\n" * 600})
        assert r.status_code == 413 and "SDP" in r.json()["error"]["message"]
        r = await api.post(f"/v1/sessions/{s['id']}/offer", json={"sdp": "this is not SDP"})
        assert r.status_code == 400 and "video" in r.json()["error"]["message"]
        r = await api.post(
            f"/v1/sessions/{s['id']}/offer", json={"sdp": "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n"}
        )
        assert r.status_code == 400 and "offer" in r.json()["error"]["message"]
        assert (await api.get(f"/v1/sessions/{s['id']}")).json()["state"] == "created"
        r = await api.post(f"/v1/sessions/{s['id']}/offer", json={"sdp": "v=0", "type": "answer"})
        assert r.status_code == 422
        assert (await api.get("/healthz")).status_code == 200
        # after the bad offers, a real one still works, and only once
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        try:
            pc.addTransceiver(ClipTrack(load_clip(2), 10, 2), direction="sendrecv")
            await pc.setLocalDescription(await pc.createOffer())
            r = await api.post(f"/v1/sessions/{s['id']}/offer", json={"sdp": pc.localDescription.sdp})
            assert r.status_code == 200 and r.json()["type"] == "answer" and "a=candidate" in r.json()["sdp"]
            assert (await api.get(f"/v1/sessions/{s['id']}")).json()["state"] in ("connecting", "streaming")
            r = await api.post(f"/v1/sessions/{s['id']}/offer", json={"sdp": pc.localDescription.sdp})
            assert r.status_code == 409 and "already" in r.json()["error"]["message"]
        finally:
            await pc.close()
    finally:
        await api.delete(f"/v1/sessions/{s['id']}")


async def test_admission_control(api: httpx.AsyncClient) -> None:
    ids = []
    try:
        for _ in range(2):
            r = await api.post("/v1/sessions", json={"prompt": "a cat"})
            assert r.status_code == 201
            ids.append(r.json()["id"])
        r = await api.post("/v1/sessions", json={"prompt": "one too many"})
        assert r.status_code == 503 and int(r.headers["Retry-After"]) > 0
        assert r.json()["error"]["code"] == "unavailable"
        assert "lipar_sessions_rejected_total 1.0" in (await api.get("/metrics")).text
    finally:
        for sid in ids:
            await api.delete(f"/v1/sessions/{sid}")
    r = await api.post("/v1/sessions", json={"prompt": "room again"})
    assert r.status_code == 201
    await api.delete(f"/v1/sessions/{r.json()['id']}")


@pytest.mark.asyncio(loop_scope="function")
async def test_idle_timeout_frees_the_session() -> None:
    """A session that never sends video is closed after LIPAR_IDLE_TIMEOUT_S with a reason; its worker slot is
    freed; a finished session refuses PATCH and offers with 409."""
    app = create_app(
        load_settings(config="tiny-random", idle_timeout_s=1.0, sessions_per_worker=1, node_id="idle")
    )
    async with app.router.lifespan_context(app):
        assert await app.state.manager.pool.wait_ready(120)
        async with await _client(app) as c:
            s = (await c.post("/v1/sessions", json={"prompt": "a cat"})).json()
            deadline = time.monotonic() + 10
            while (r := (await c.get(f"/v1/sessions/{s['id']}")).json())["state"] != "closed":
                assert time.monotonic() < deadline, r
                await asyncio.sleep(0.1)
            assert "idle timeout" in r["reason"]
            assert (await c.patch(f"/v1/sessions/{s['id']}", json={"prompt": "x"})).status_code == 409
            assert (await c.post(f"/v1/sessions/{s['id']}/offer", json={"sdp": "v=0"})).status_code == 409
            assert (await c.post("/v1/sessions", json={"prompt": "fits again"})).status_code == 201
