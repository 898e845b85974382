"""Redis session store: shared records, node heartbeats with TTL, control pub/sub. Server process (asyncio).

Keys (prefix ``lipar:``, documented and stable):

| key | type | content |
|---|---|---|
| ``lipar:session:{id}`` | hash | one field per record field, each JSON-encoded; EXPIRE set once finished |
| ``lipar:sessions`` | set | ids of every session record |
| ``lipar:deleted:{id}`` | string | tombstone of a deleted session (``TOMBSTONE_TTL_S``): its record is never restored |
| ``lipar:node:{node_id}`` | string | JSON heartbeat (node_id, public_url, capacity, active, ts); PX = TTL |
| ``lipar:nodes`` | set | node ids that have heartbeated and still own unfinished sessions or are alive |
| ``lipar:node:{node_id}:sessions`` | set | ids of the sessions owned by the node |
| ``lipar:control:{node_id}`` | pub/sub channel | JSON control messages for the sessions the node owns |

A node whose heartbeat key expired is dead: any node's housekeeping (:meth:`RedisStore.orphans`) finds its
unfinished sessions, and the session manager marks them ``failed``.

Outages: every call is bounded by ``timeout_s`` (socket connect and read timeouts; one immediate retry on a
broken connection, none on a timeout), so a paused Redis (SIGSTOP) costs a request ``timeout_s``, never a hang;
a refused, broken or timed-out call raises :class:`~server.sessions.errors.StoreUnavailable`. The control
subscription is re-established by its listener once Redis answers again (a restarted Redis forgets its
subscribers; the listener also checks every :data:`_SUBSCRIPTION_CHECK_S` that Redis still counts it).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Iterator, Mapping
from typing import Any, cast

import redis.asyncio as aioredis
from redis import exceptions as rex
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from server.sessions.errors import StoreUnavailable
from server.sessions.store import (
    TOMBSTONE_TTL_S,
    ControlHandler,
    ControlMessage,
    NodeInfo,
    RestoreOutcome,
    SessionStore,
)
from server.sessions.types import UNFINISHED_STATES, RecordFields, SessionRecord

log = logging.getLogger(__name__)

PREFIX = "lipar:"
SESSIONS = PREFIX + "sessions"
NODES = PREFIX + "nodes"

DEFAULT_TIMEOUT_S = 2.0
_RETRY_AFTER_S = 5  # Retry-After of the 503 answered while the store is unavailable
_CLOSE_S = 3.0  # the longest closing the store waits for its listeners, then for the connections (s)
_SUBSCRIPTION_CHECK_S = 2.0  # how often the control listener checks that Redis still counts its subscription
_RESUBSCRIBE_MIN_S, _RESUBSCRIBE_MAX_S = 0.1, 1.0  # back-off between re-subscription attempts

# errors that mean "the store cannot be reached now" (503), not a bug (500)
_UNAVAILABLE: tuple[type[BaseException], ...] = (
    rex.ConnectionError,  # refused, reset, closed, loading (BusyLoadingError), auth
    rex.TimeoutError,  # no answer within the timeout (paused or overloaded)
    rex.ReadOnlyError,  # a replica after a failover
    rex.ClusterDownError,
    rex.TryAgainError,
    OSError,
    asyncio.TimeoutError,
)

# Create a record unless the id has a tombstone: a creation the node gave up on (timeout) and deleted may still
# reach a paused Redis later, and must not bring it back. KEYS: session hash, tombstone, sessions set, node's
# sessions set. ARGV: session id, then field, value, field, value, ...
_CREATE = """
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
redis.call('SADD', KEYS[3], ARGV[1])
redis.call('SADD', KEYS[4], ARGV[1])
return 1
"""

# Write back a lost record unless it is present or was deleted (tombstone). KEYS: session hash, tombstone,
# sessions set, node's sessions set. ARGV: session id, then field, value, field, value, ...
_RESTORE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 'present' end
if redis.call('EXISTS', KEYS[2]) == 1 then return 'deleted' end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
redis.call('SADD', KEYS[3], ARGV[1])
redis.call('SADD', KEYS[4], ARGV[1])
return 'restored'
"""

# The restore script's answers (its return values above).
_RESTORE_OUTCOMES: dict[str, RestoreOutcome] = {
    "present": "present",
    "deleted": "deleted",
    "restored": "restored",
}

# Set fields of an existing record only (a deleted or expired session must not come back).
_UPDATE = "if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end redis.call('HSET', KEYS[1], unpack(ARGV)) return 1"


def session_key(session_id: str) -> str:
    """``lipar:session:{id}``."""
    return f"{PREFIX}session:{session_id}"


def tombstone_key(session_id: str) -> str:
    """``lipar:deleted:{id}`` (tombstone of a deleted session)."""
    return f"{PREFIX}deleted:{session_id}"


def node_key(node_id: str) -> str:
    """``lipar:node:{node_id}`` (heartbeat)."""
    return f"{PREFIX}node:{node_id}"


def node_sessions_key(node_id: str) -> str:
    """``lipar:node:{node_id}:sessions``."""
    return f"{PREFIX}node:{node_id}:sessions"


def control_channel(node_id: str) -> str:
    """``lipar:control:{node_id}``."""
    return f"{PREFIX}control:{node_id}"


def _text(v: bytes | str) -> str:
    """A Redis key or value as text (the client decodes responses; bytes only from a raw client)."""
    return v.decode() if isinstance(v, bytes) else v


def _decode(h: Mapping[bytes | str, bytes | str]) -> SessionRecord:
    """A session record from its hash (one JSON value per field, as :func:`_flat` wrote it)."""
    fields = {_text(k): json.loads(_text(v)) for k, v in h.items()}
    # Redis holds what _flat wrote from a SessionRecord (and RecordFields updates): the same keys and values.
    return cast(SessionRecord, fields)


def _flat(record: Mapping[str, Any]) -> list[str]:
    """``[field, json value, field, json value, ...]``."""
    out: list[str] = []
    for k, v in record.items():
        out += [k, json.dumps(v)]
    return out


@contextlib.contextmanager
def _available() -> Iterator[None]:
    """Turn "Redis cannot be reached now" into :class:`StoreUnavailable` (the API's 503)."""
    try:
        yield
    except _UNAVAILABLE as e:
        log.debug("session store call failed: %r", e)
        raise StoreUnavailable(
            "the session store is unavailable; retry shortly", retry_after_s=_RETRY_AFTER_S
        ) from e


class RedisStore(SessionStore):
    """The store on a Redis server at ``url``; every call is bounded by ``timeout_s`` seconds."""

    kind = "redis"

    def __init__(self, url: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.url = url
        self.timeout_s = timeout_s
        # redis-py's default retries 10 times with back-off, which makes a paused Redis hang requests for
        # ~10 timeouts: retry once, at once, on a broken connection (a Redis that restarted), never on a timeout
        self.redis: aioredis.Redis = aioredis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 1, supported_errors=(rex.ConnectionError,)),
            decode_responses=True,
        )
        self._listeners: list[asyncio.Task[None]] = []
        self.resubscriptions = 0  # times a control subscription was re-established after an outage

    async def start(self) -> None:
        with _available():
            await self.redis.ping()

    async def close(self) -> None:
        for t in self._listeners:
            t.cancel()
        if self._listeners:  # bounded: closing a subscription blocked on a dead connection must not hang
            await asyncio.wait(self._listeners, timeout=_CLOSE_S)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.redis.aclose(), _CLOSE_S)

    async def ping(self) -> bool:
        try:
            return bool(await self.redis.ping())
        except (rex.RedisError, OSError, asyncio.TimeoutError):
            return False

    async def create(self, record: SessionRecord) -> None:
        sid = str(record["id"])
        keys = [session_key(sid), tombstone_key(sid), SESSIONS, node_sessions_key(record["node_id"])]
        with _available():
            await self.redis.eval(_CREATE, len(keys), *keys, sid, *_flat(record))

    async def get(self, session_id: str) -> SessionRecord | None:
        with _available():
            h = await self.redis.hgetall(session_key(session_id))
        return _decode(h) if h else None

    async def list_all(self) -> list[SessionRecord]:
        with _available():
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

    async def update(self, session_id: str, fields: RecordFields) -> SessionRecord | None:
        argv = _flat({**fields, "updated_at": time.time()})
        with _available():
            ok = await self.redis.eval(_UPDATE, 1, session_key(session_id), *argv)
        if not ok:
            return None
        return await self.get(session_id)

    async def delete(self, session_id: str) -> bool:
        r = await self.get(session_id)
        with _available():
            async with self.redis.pipeline(transaction=True) as p:
                p.delete(session_key(session_id))
                p.srem(SESSIONS, session_id)
                if r is not None:
                    p.srem(node_sessions_key(r["node_id"]), session_id)
                p.set(tombstone_key(session_id), "1", px=int(TOMBSTONE_TTL_S * 1000))
                res = await p.execute()
        return bool(res[0])

    async def restore(self, record: SessionRecord) -> RestoreOutcome:
        sid = str(record["id"])
        keys = [session_key(sid), tombstone_key(sid), SESSIONS, node_sessions_key(record["node_id"])]
        with _available():
            out = await self.redis.eval(_RESTORE, len(keys), *keys, sid, *_flat(record))
        outcome = _RESTORE_OUTCOMES.get(out) if isinstance(out, str) else None
        if outcome is None:
            raise RuntimeError(f"unexpected answer of the restore script: {out!r}")
        return outcome

    async def expire(self, session_id: str, ttl_s: float) -> None:
        with _available():
            await self.redis.pexpire(session_key(session_id), max(1, int(ttl_s * 1000)))

    async def heartbeat(self, node: NodeInfo, ttl_s: float) -> None:
        nid = node["node_id"]
        with _available():
            async with self.redis.pipeline(transaction=True) as p:
                p.set(node_key(nid), json.dumps({**node, "ts": time.time()}), px=max(1, int(ttl_s * 1000)))
                p.sadd(NODES, nid)
                await p.execute()

    async def nodes(self) -> list[NodeInfo]:
        with _available():
            ids = sorted(str(m) for m in await self.redis.smembers(NODES))
            if not ids:
                return []
            values = await self.redis.mget([node_key(n) for n in ids])
        return [json.loads(v) for v in values if v is not None]

    async def publish_control(self, node_id: str, message: ControlMessage) -> int:
        with _available():
            return int(await self.redis.publish(control_channel(node_id), json.dumps(message)))

    async def subscribe_controls(self, node_id: str, handler: ControlHandler) -> None:
        channel = control_channel(node_id)
        with _available():
            pubsub = await self._subscribe(channel)
        self._listeners.append(
            asyncio.create_task(self._listen(channel, pubsub, handler), name=f"redis-controls-{node_id}")
        )

    async def subscribed(self, node_id: str) -> bool:
        """True when Redis counts a subscriber on the node's control channel."""
        with _available():
            return await self._counted(control_channel(node_id))

    async def _counted(self, channel: str) -> bool:
        counts = await self.redis.pubsub_numsub(channel)
        return any(str(c) == channel and int(n) > 0 for c, n in counts)

    async def _subscribe(self, channel: str) -> PubSub:
        pubsub = self.redis.pubsub()
        try:
            await pubsub.subscribe(channel)
        except BaseException:
            with contextlib.suppress(Exception):
                await pubsub.aclose()
            raise
        return pubsub

    async def _listen(self, channel: str, pubsub: PubSub | None, handler: ControlHandler) -> None:
        """Deliver the channel's messages to ``handler``; re-subscribe whenever the subscription is lost."""
        delay = _RESUBSCRIBE_MIN_S
        lost_at: float | None = None
        try:
            while True:
                try:
                    if pubsub is None:
                        pubsub = await self._subscribe(channel)
                        self.resubscriptions += 1
                        log.info(
                            "re-subscribed to %s after %.1f s",
                            channel,
                            time.monotonic() - (lost_at or time.monotonic()),
                        )
                        lost_at, delay = None, _RESUBSCRIBE_MIN_S
                    await self._pump(channel, pubsub, handler)
                except Exception as e:
                    if lost_at is None:
                        lost_at = time.monotonic()
                        if isinstance(e, _UNAVAILABLE):
                            log.warning("control channel %s lost (%s); re-subscribing", channel, e)
                        else:
                            log.exception("control channel %s failed; re-subscribing", channel)
                    if pubsub is not None:
                        with contextlib.suppress(Exception):
                            await pubsub.aclose()
                        pubsub = None
                    await asyncio.sleep(delay)  # back-off between attempts while Redis is away
                    delay = min(2 * delay, _RESUBSCRIBE_MAX_S)
        finally:
            if pubsub is not None:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    async def _pump(self, channel: str, pubsub: PubSub, handler: ControlHandler) -> None:
        """Hand messages to ``handler`` until the subscription fails (raises)."""
        loop = asyncio.get_running_loop()
        next_check = loop.time() + _SUBSCRIPTION_CHECK_S
        while True:
            msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            if msg is not None and msg.get("type") == "message":
                try:
                    await handler(json.loads(msg["data"]))
                except Exception:
                    log.exception("control message failed: %r", msg.get("data"))
            if loop.time() >= next_check:
                # a Redis that restarted (or dropped the client) no longer counts this subscriber
                if not await self._counted(channel):
                    raise rex.ConnectionError(f"Redis no longer counts the subscription to {channel}")
                next_check = loop.time() + _SUBSCRIPTION_CHECK_S

    async def orphans(self) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        with _available():
            for nid in sorted(str(m) for m in await self.redis.smembers(NODES)):
                if await self.redis.exists(node_key(nid)):
                    continue
                sids = sorted(str(m) for m in await self.redis.smembers(node_sessions_key(nid)))
                unfinished = False
                for sid in sids:
                    r = await self.get(sid)
                    if r is None:
                        await self.redis.srem(node_sessions_key(nid), sid)
                    elif r.get("state") in UNFINISHED_STATES:
                        out.append((nid, sid))
                        unfinished = True
                if not unfinished:
                    await self.redis.srem(NODES, nid)
        return out
