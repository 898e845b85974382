"""The Redis store against a real redis-server: the documented keys, field-level updates that never resurrect a
deleted record, heartbeats with TTL, control pub/sub, orphans of a dead node, and the write-back of lost records
with tombstones (also on the in-memory store)."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis.asyncio as aioredis

from server.sessions.memory_store import MemoryStore
from server.sessions.redis_store import RedisStore
from server.sessions.store import TOMBSTONE_TTL_S, SessionStore

pytestmark = [pytest.mark.timeout(60), pytest.mark.redis]


def _record(sid: str, node: str) -> dict:
    now = time.time()
    return {
        "id": sid,
        "state": "created",
        "node_id": node,
        "prompt": "p",
        "created_at": now,
        "updated_at": now,
    }


async def test_documented_keys_and_updates(redis_url: str) -> None:
    store = RedisStore(redis_url)
    await store.start()
    r = aioredis.from_url(redis_url, decode_responses=True)
    try:
        await store.create(_record("s1", "n1"))
        assert await r.type("lipar:session:s1") == "hash"
        assert await r.sismember("lipar:sessions", "s1")
        assert await r.sismember("lipar:node:n1:sessions", "s1")
        got = await store.update("s1", {"state": "streaming", "stats": {"fps_in": 9.5}})
        assert (
            got is not None
            and got["state"] == "streaming"
            and got["stats"]["fps_in"] == 9.5
            and got["prompt"] == "p"
        )
        assert await store.delete("s1")
        assert await store.update("s1", {"state": "failed"}) is None
        assert not await r.exists("lipar:session:s1")
        await store.create(_record("s2", "n1"))
        await store.expire("s2", 0.2)
        assert 0 < await r.pttl("lipar:session:s2") <= 200
        await store.heartbeat({"node_id": "n1", "public_url": "http://x", "free": 1}, ttl_s=0.3)
        assert 0 < await r.pttl("lipar:node:n1") <= 300 and await r.sismember("lipar:nodes", "n1")
        assert [n["node_id"] for n in await store.nodes()] == ["n1"]
    finally:
        await r.flushdb()
        await r.aclose()
        await store.close()


async def test_control_pubsub_and_orphans(redis_url: str) -> None:
    a, b = RedisStore(redis_url), RedisStore(redis_url)
    await a.start()
    await b.start()
    got: list[dict] = []
    arrived = asyncio.Event()

    async def handler(msg: dict) -> None:
        got.append(msg)
        arrived.set()

    try:
        await b.subscribe_controls("node-b", handler)
        # the subscription is live once Redis counts a subscriber on the channel
        for _ in range(50):
            if (await a.redis.pubsub_numsub("lipar:control:node-b"))[0][1] == 1:
                break
            await asyncio.sleep(0.05)
        await a.publish_control("node-b", {"op": "patch", "session_id": "s", "prompt": "new"})
        await asyncio.wait_for(arrived.wait(), 5)
        assert got == [{"op": "patch", "session_id": "s", "prompt": "new"}]
        await b.create(_record("s3", "node-b"))
        await b.heartbeat({"node_id": "node-b"}, ttl_s=0.2)
        assert await a.orphans() == []
        deadline = time.monotonic() + 5
        while not await a.orphans():
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        assert await a.orphans() == [("node-b", "s3")]
        await a.update("s3", {"state": "failed"})
        assert await a.orphans() == []
        assert not await a.redis.sismember("lipar:nodes", "node-b")
    finally:
        await a.redis.flushdb()
        await a.close()
        await b.close()


@pytest.mark.parametrize("kind", ["memory", "redis"])
async def test_restore_and_tombstones(kind: str, request: pytest.FixtureRequest) -> None:
    """A live session's lost record is written back unless it was deleted on purpose (tombstone); a late
    creation of a deleted id does nothing."""
    store: SessionStore = (
        RedisStore(request.getfixturevalue("redis_url")) if kind == "redis" else MemoryStore()
    )
    await store.start()
    r = (
        aioredis.from_url(request.getfixturevalue("redis_url"), decode_responses=True)
        if kind == "redis"
        else None
    )
    try:
        rec = _record("t1", "n1")
        assert await store.restore(rec) == "restored"  # absent, no tombstone: the store lost it
        assert [x["id"] for x in await store.list_all()] == ["t1"]
        if r is not None:
            assert await r.sismember("lipar:sessions", "t1") and await r.sismember(
                "lipar:node:n1:sessions", "t1"
            )
        assert await store.restore({**rec, "state": "streaming"}) == "present"
        assert (await store.get("t1") or {})["state"] == "created"  # present: nothing written
        assert await store.delete("t1")
        if r is not None:
            assert 0 < await r.pttl("lipar:deleted:t1") <= TOMBSTONE_TTL_S * 1000
        assert await store.restore(rec) == "deleted"
        assert await store.get("t1") is None
        await store.create(rec)  # e.g. a creation that timed out on the node and reached Redis late
        assert await store.get("t1") is None and await store.list_all() == []
        if r is not None:
            assert not await r.sismember("lipar:sessions", "t1")
    finally:
        if r is not None:
            await r.flushdb()
            await r.aclose()
        await store.close()
