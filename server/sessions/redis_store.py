"""Redis session store: shared records, node heartbeats with TTL, control pub/sub. Server process (asyncio).

Keys (prefix ``lipar:``, documented and stable):

| key | type | content |
|---|---|---|
| ``lipar:session:{id}`` | hash | one field per record field, each JSON-encoded; EXPIRE set once finished |
| ``lipar:sessions`` | set | ids of every session record |
| ``lipar:node:{node_id}`` | string | JSON heartbeat (node_id, public_url, capacity, active, ts); PX = TTL |
| ``lipar:nodes`` | set | node ids that have heartbeated and still own unfinished sessions or are alive |
| ``lipar:node:{node_id}:sessions`` | set | ids of the sessions owned by the node |
| ``lipar:control:{node_id}`` | pub/sub channel | JSON control messages for the sessions the node owns |

A node whose heartbeat key expired is dead: any node's housekeeping (:meth:`RedisStore.orphans`) finds its
unfinished sessions, and the session manager marks them ``failed``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import Any

import redis.asyncio as aioredis

from server.sessions.store import ControlHandler, Record, SessionStore

log = logging.getLogger(__name__)

PREFIX = "lipar:"
SESSIONS = PREFIX + "sessions"
NODES = PREFIX + "nodes"
_UNFINISHED = ("created", "connecting", "streaming")


def session_key(session_id: str) -> str:
    """``lipar:session:{id}``."""
    return f"{PREFIX}session:{session_id}"


def node_key(node_id: str) -> str:
    """``lipar:node:{node_id}`` (heartbeat)."""
    return f"{PREFIX}node:{node_id}"


def node_sessions_key(node_id: str) -> str:
    """``lipar:node:{node_id}:sessions``."""
    return f"{PREFIX}node:{node_id}:sessions"


def control_channel(node_id: str) -> str:
    """``lipar:control:{node_id}``."""
    return f"{PREFIX}control:{node_id}"


def _decode(h: dict[Any, Any]) -> Record:
    return {
        (k.decode() if isinstance(k, bytes) else k): json.loads(v.decode() if isinstance(v, bytes) else v)
        for k, v in h.items()
    }


class RedisStore(SessionStore):
    """The store on a Redis server at ``url``."""

    kind = "redis"

    def __init__(self, url: str) -> None:
        self.url = url
        self.redis: aioredis.Redis = aioredis.from_url(
            url, socket_timeout=5, socket_connect_timeout=5, decode_responses=True
        )
        self._listeners: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        await self.redis.ping()

    async def close(self) -> None:
        for t in self._listeners:
            t.cancel()
        await asyncio.gather(*self._listeners, return_exceptions=True)
        await self.redis.aclose()

    async def ping(self) -> bool:
        try:
            return bool(await self.redis.ping())
        except (aioredis.RedisError, OSError):
            return False

    async def create(self, record: Record) -> None:
        sid = record["id"]
        async with self.redis.pipeline(transaction=True) as p:
            p.hset(session_key(sid), mapping={k: json.dumps(v) for k, v in record.items()})
            p.sadd(SESSIONS, sid)
            p.sadd(node_sessions_key(record["node_id"]), sid)
            await p.execute()

    async def get(self, session_id: str) -> Record | None:
        h = await self.redis.hgetall(session_key(session_id))
        return _decode(h) if h else None

    async def list_all(self) -> list[Record]:
        ids = sorted(str(m) for m in await self.redis.smembers(SESSIONS))
        if not ids:
            return []
        async with self.redis.pipeline(transaction=False) as p:
            for sid in ids:
                p.hgetall(session_key(sid))
            hashes = await p.execute()
        out, gone = [], []
        for sid, h in zip(ids, hashes, strict=True):
            if h:
                out.append(_decode(h))
            else:
                gone.append(sid)
        if gone:
            await self.redis.srem(SESSIONS, *gone)
        return sorted(out, key=lambda r: r["created_at"])

    async def update(self, session_id: str, fields: Record) -> Record | None:
        key = session_key(session_id)
        data = {k: json.dumps(v) for k, v in fields.items()}
        data["updated_at"] = json.dumps(time.time())
        # only update an existing record (a deleted or expired session must not come back)
        script = (
            "if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end "
            "redis.call('HSET', KEYS[1], unpack(ARGV)) return 1"
        )
        argv: list[str] = []
        for k, v in data.items():
            argv += [k, v]
        ok = await self.redis.eval(script, 1, key, *argv)  # type: ignore[misc]
        if not ok:
            return None
        return await self.get(session_id)

    async def delete(self, session_id: str) -> bool:
        r = await self.get(session_id)
        async with self.redis.pipeline(transaction=True) as p:
            p.delete(session_key(session_id))
            p.srem(SESSIONS, session_id)
            if r is not None:
                p.srem(node_sessions_key(r["node_id"]), session_id)
            res = await p.execute()
        return bool(res[0])

    async def expire(self, session_id: str, ttl_s: float) -> None:
        await self.redis.pexpire(session_key(session_id), max(1, int(ttl_s * 1000)))

    async def heartbeat(self, node: Record, ttl_s: float) -> None:
        nid = node["node_id"]
        async with self.redis.pipeline(transaction=True) as p:
            p.set(node_key(nid), json.dumps({**node, "ts": time.time()}), px=max(1, int(ttl_s * 1000)))
            p.sadd(NODES, nid)
            await p.execute()

    async def nodes(self) -> list[Record]:
        ids = sorted(str(m) for m in await self.redis.smembers(NODES))
        if not ids:
            return []
        values = await self.redis.mget([node_key(n) for n in ids])
        return [json.loads(v) for v in values if v is not None]

    async def publish_control(self, node_id: str, message: Record) -> None:
        await self.redis.publish(control_channel(node_id), json.dumps(message))

    async def subscribe_controls(self, node_id: str, handler: ControlHandler) -> None:
        pubsub = self.redis.pubsub()
        await pubsub.subscribe(control_channel(node_id))
        self._listeners.append(asyncio.create_task(self._listen(pubsub, handler), name="redis-controls"))

    async def _listen(self, pubsub: Any, handler: ControlHandler) -> None:
        try:
            while True:
                msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                if msg is None or msg.get("type") != "message":
                    continue
                try:
                    await handler(json.loads(msg["data"]))
                except Exception:
                    log.exception("control message failed: %r", msg.get("data"))
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()

    async def orphans(self) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        for nid in sorted(str(m) for m in await self.redis.smembers(NODES)):
            if await self.redis.exists(node_key(nid)):
                continue
            sids = sorted(str(m) for m in await self.redis.smembers(node_sessions_key(nid)))
            unfinished = False
            for sid in sids:
                r = await self.get(sid)
                if r is None:
                    await self.redis.srem(node_sessions_key(nid), sid)
                elif r.get("state") in _UNFINISHED:
                    out.append((nid, sid))
                    unfinished = True
            if not unfinished:
                await self.redis.srem(NODES, nid)
        return out
