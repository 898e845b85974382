"""The session store interface: session records, node heartbeats, control messages between nodes.

Runs in the server process (asyncio). A record is a :class:`~server.sessions.types.SessionRecord` (a flat
JSON-able ``dict``); :meth:`SessionStore.update` changes named fields only
(:class:`~server.sessions.types.RecordFields`), so the owner node's stats updates and another node's PATCH never
overwrite each other. Node heartbeats and control messages between nodes are plain JSON-able dicts.

Outages: every method but :meth:`SessionStore.ping` raises :class:`~server.sessions.errors.StoreUnavailable`
when the store cannot be reached within its timeout (the API answers 503 + ``Retry-After``). The node that owns
a live session is the source of truth for it: when the store lost the record (Redis restarted without
persistence, flushed, evicted), the owner writes it back with :meth:`SessionStore.restore`; a record deleted on
purpose leaves a tombstone for a while so that it is never written back.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from typing import Any, Literal

from server.sessions.types import RecordFields, SessionRecord

NodeInfo = dict[str, Any]  # a node's heartbeat: node_id, public_url, capacity, free, active
ControlMessage = dict[str, Any]  # a control message to the owner node of a session: op, session_id, ...
ControlHandler = Callable[[ControlMessage], Awaitable[None]]
RestoreOutcome = Literal["present", "restored", "deleted"]

# how long a deleted session's tombstone is kept: a live session whose record is missing and has a tombstone
# was deleted on purpose (its owner ends it), without one its record was lost (its owner writes it back)
TOMBSTONE_TTL_S = 600.0


class SessionStore(ABC):
    """Where session records live and how nodes reach each other."""

    kind: str = "abstract"

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Connect (called once at server start)."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Disconnect (called once at shutdown)."""

    @abstractmethod
    async def ping(self) -> bool:
        """True when the store answers."""

    @abstractmethod
    async def create(self, record: SessionRecord) -> None:
        """Store a new record (``record["id"]`` is fresh); nothing if the id has a tombstone (a creation that
        failed on this side may reach the store late, after the node deleted it)."""

    @abstractmethod
    async def get(self, session_id: str) -> SessionRecord | None:
        """The record, or None."""

    @abstractmethod
    async def list_all(self) -> list[SessionRecord]:
        """Every live record, oldest first."""

    @abstractmethod
    async def update(self, session_id: str, fields: RecordFields) -> SessionRecord | None:
        """Set these fields (and ``updated_at``); None if the record does not exist (never re-creates it)."""

    @abstractmethod
    async def delete(self, session_id: str) -> bool:
        """Remove the record and leave a tombstone (:data:`TOMBSTONE_TTL_S`); False if it did not exist."""

    @abstractmethod
    async def restore(self, record: SessionRecord) -> RestoreOutcome:
        """Write back the record of a live session if the store lost it, atomically: ``present`` (the record
        exists; nothing written), ``deleted`` (absent with a tombstone: it was deleted on purpose; nothing
        written) or ``restored`` (absent without a tombstone: written, with its index entries)."""

    @abstractmethod
    async def expire(self, session_id: str, ttl_s: float) -> None:
        """Let a finished record disappear after ``ttl_s`` seconds."""

    @abstractmethod
    async def heartbeat(self, node: NodeInfo, ttl_s: float) -> None:
        """Announce this node (``node["node_id"]``, capacity, active, public URL) for ``ttl_s`` seconds."""

    @abstractmethod
    async def nodes(self) -> list[NodeInfo]:
        """Nodes with a live heartbeat."""

    @abstractmethod
    async def publish_control(self, node_id: str, message: ControlMessage) -> int:
        """Deliver a control message to the node that owns a session; the number of subscribers that got it
        (0: the node is not listening now)."""

    @abstractmethod
    async def subscribe_controls(self, node_id: str, handler: ControlHandler) -> None:
        """Call ``handler`` for every control message addressed to ``node_id`` (until :meth:`close`).

        The subscription survives store outages: it is re-established once the store answers again (a
        restarted Redis forgets its subscribers)."""

    @abstractmethod
    async def orphans(self) -> list[tuple[str, str]]:
        """``(node_id, session_id)`` of unfinished sessions whose owner's heartbeat has expired."""
