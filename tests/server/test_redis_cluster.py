"""Two server processes sharing one real redis-server: any node takes REST calls for a session another node
owns (PATCH through A reaches B's worker through pub/sub), and a dead node's sessions are marked failed when
its heartbeat expires."""

from __future__ import annotations

import asyncio
import os
import time

import httpx
import numpy as np
import pytest

from tests.server.rtc_client import ClientPeer, load_clip

pytestmark = [pytest.mark.usefixtures("loopback_ice"), pytest.mark.timeout(240), pytest.mark.redis]


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return "X"


async def _until(http: httpx.AsyncClient, path: str, cond, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    r: dict = {}
    for _ in range(int(timeout / 0.1) + 1):
        resp = await http.get(path)
        r = resp.json() if resp.status_code == 200 else {}
        if r and cond(r):
            return r
        if time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    raise AssertionError(f"{path} never met the condition: {r}")


async def test_patch_through_other_node_and_dead_node(start_server, redis_url: str) -> None:
    env = {"LIPAR_REDIS_URL": redis_url, "LIPAR_HEARTBEAT_TTL_S": "2"}
    node_a = start_server(wait=False, LIPAR_NODE_ID="node-a", LIPAR_SESSIONS_PER_WORKER="1", **env)
    node_b = start_server(wait=False, LIPAR_NODE_ID="node-b", **env)
    node_a.wait_ready()
    node_b.wait_ready()
    clip: list[np.ndarray] = load_clip(48)
    async with (
        httpx.AsyncClient(base_url=node_a.url, timeout=30) as a,
        httpx.AsyncClient(base_url=node_b.url, timeout=30) as b,
    ):
        r = await b.post("/v1/sessions", json={"prompt": "a watercolor painting"})
        assert r.status_code == 201
        s = r.json()
        assert s["node_id"] == "node-b" and s["offer_url"].startswith(node_b.url)
        # node A sees it, and sends offers for it to its owner
        assert (await a.get(f"/v1/sessions/{s['id']}")).json()["node_id"] == "node-b"
        r = await a.post(f"/v1/sessions/{s['id']}/offer", json={"sdp": "v=0"})
        assert r.status_code == 409 and node_b.url in r.json()["error"]["message"]
        peer = await ClientPeer.connect(b, s, clip, fps=10.0, n_frames=300)
        try:
            await peer.wait_frames(12, 60)
            r = await a.patch(
                f"/v1/sessions/{s['id']}", json={"prompt": "a bronze statue", "transition": "smooth"}
            )
            assert r.status_code == 200 and r.json()["prompt"] == "a bronze statue"
            # B's worker applied it (B's live stats, read through A from Redis)
            info = await _until(
                a, f"/v1/sessions/{s['id']}", lambda r: r["stats"]["active_prompt"] == "a bronze statue", 60
            )
            assert info["stats"]["frames_out"] >= 12
            nodes_seen = {x["node_id"] for x in (await a.get("/v1/sessions")).json()["sessions"]}
            assert "node-b" in nodes_seen
            # A full (1 slot): a creation on A is placed on B, which admits it when the offer arrives there
            first = (await a.post("/v1/sessions", json={"prompt": "fills node a"})).json()
            assert first["node_id"] == "node-a"
            r = await a.post("/v1/sessions", json={"prompt": "placed elsewhere"})
            assert r.status_code == 201, r.text
            placed = r.json()
            assert placed["node_id"] == "node-b" and placed["offer_url"].startswith(node_b.url)
            peer2 = await ClientPeer.connect(b, placed, clip, fps=10.0, n_frames=300)
            try:
                await peer2.wait_frames(6, 60)
            finally:
                await peer2.close()
            assert (await a.delete(f"/v1/sessions/{first['id']}")).status_code == 204
            # node B dies: A marks its session failed once B's heartbeat expires
            b_worker = (await b.get("/readyz")).json()["checks"]["workers"][0]["pid"]
            node_b.kill()
            info = await _until(a, f"/v1/sessions/{s['id']}", lambda r: r["state"] == "failed", 20)
            assert "node-b" in info["reason"] and "heartbeat" in info["reason"]
            assert (await a.get("/readyz")).status_code == 200
            r = await a.post("/v1/sessions", json={"prompt": "still serving"})
            assert r.status_code == 201 and r.json()["node_id"] == "node-a"
            # B's worker process noticed its server is gone and exited (no orphans holding memory)
            deadline = time.monotonic() + 10
            while os.path.exists(f"/proc/{b_worker}") and _state(b_worker) not in ("Z", "X"):
                assert time.monotonic() < deadline, "node B's worker outlived its server"
                await asyncio.sleep(0.1)
        finally:
            await peer.close()
