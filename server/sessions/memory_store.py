"""In-memory session store: the embedded default for one node. Server process, event loop only."""

from __future__ import annotations

import copy
import time
from typing import Any

from server.sessions.store import (
    TOMBSTONE_TTL_S,
    ControlHandler,
    ControlMessage,
    NodeInfo,
    RestoreOutcome,
    SessionStore,
)
from server.sessions.types import RecordFields, SessionRecord


class MemoryStore(SessionStore):
    """Records in a dict; controls are delivered to this node's own handler."""

    kind = "memory"

    def __init__(self) -> None:
        self._records: dict[str, SessionRecord] = {}
        self._expiry: dict[str, float] = {}
        self._handlers: dict[str, ControlHandler] = {}
        self._nodes: dict[str, tuple[float, NodeInfo]] = {}
        self._tombstones: dict[str, float] = {}  # deleted session id -> monotonic expiry

    def _purge(self) -> None:
        now = time.monotonic()
        for sid in [s for s, t in self._expiry.items() if t <= now]:
            self._records.pop(sid, None)
            self._expiry.pop(sid, None)
        for sid in [s for s, t in self._tombstones.items() if t <= now]:
            del self._tombstones[sid]

    async def ping(self) -> bool:
        return True

    async def create(self, record: SessionRecord) -> None:
        self._purge()
        if record["id"] not in self._tombstones:
            self._records[record["id"]] = copy.deepcopy(record)

    async def get(self, session_id: str) -> SessionRecord | None:
        self._purge()
        r = self._records.get(session_id)
        return copy.deepcopy(r) if r is not None else None

    async def list_all(self) -> list[SessionRecord]:
        self._purge()
        return sorted((copy.deepcopy(r) for r in self._records.values()), key=lambda r: r["created_at"])

    async def update(self, session_id: str, fields: RecordFields) -> SessionRecord | None:
        self._purge()
        r = self._records.get(session_id)
        if r is None:
            return None
        r.update(copy.deepcopy(fields))
        r["updated_at"] = time.time()
        return copy.deepcopy(r)

    async def delete(self, session_id: str) -> bool:
        self._purge()
        self._expiry.pop(session_id, None)
        self._tombstones[session_id] = time.monotonic() + TOMBSTONE_TTL_S
        return self._records.pop(session_id, None) is not None

    async def restore(self, record: SessionRecord) -> RestoreOutcome:
        self._purge()
        sid = record["id"]
        if sid in self._records:
            return "present"
        if sid in self._tombstones:
            return "deleted"
        self._records[sid] = copy.deepcopy(record)
        return "restored"

    async def expire(self, session_id: str, ttl_s: float) -> None:
        if session_id in self._records:
            self._expiry[session_id] = time.monotonic() + ttl_s

    async def heartbeat(self, node: NodeInfo, ttl_s: float) -> None:
        self._nodes[node["node_id"]] = (time.monotonic() + ttl_s, dict(node))

    async def nodes(self) -> list[NodeInfo]:
        now = time.monotonic()
        return [dict(n) for t, n in self._nodes.values() if t > now]

    async def publish_control(self, node_id: str, message: ControlMessage) -> int:
        handler = self._handlers.get(node_id)
        if handler is None:
            return 0
        await handler(message)
        return 1

    async def subscribe_controls(self, node_id: str, handler: ControlHandler) -> None:
        self._handlers[node_id] = handler

    async def orphans(self) -> list[tuple[str, str]]:
        return []

    def __repr__(self) -> str:
        return f"MemoryStore({len(self._records)} records)"

    def _debug(self) -> dict[str, Any]:
        return {"records": len(self._records)}
