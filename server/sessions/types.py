"""The session layer's own types: states, the prompt transition, what a session is created and changed with,
and the record the store keeps. Plain data, no HTTP: :mod:`server.api` builds these from its request models
(``SessionCreate.to_spec``, ``SessionPatch.to_change``) and returns records through its response models, so the
API depends on the sessions layer and never the reverse (``tests/server/test_layers.py``).

``SessionState`` and ``Transition`` are ``Literal`` aliases, not enums: a pydantic model that uses them
(``server.api.schemas``) renders the same inline JSON Schema ``enum`` of strings as before, and a record
read back from the store (JSON) holds the same plain strings.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Final, Literal, NotRequired, TypedDict

from lipar_core.protocol import Transition

__all__ = [
    "CLOSED",
    "CONNECTING",
    "CREATED",
    "CUT",
    "FAILED",
    "SMOOTH",
    "STREAMING",
    "TERMINAL_STATES",
    "UNFINISHED_STATES",
    "RecordFields",
    "SessionChange",
    "SessionRecord",
    "SessionSpec",
    "SessionState",
    "Transition",
]

#: ``created`` → ``connecting`` (offer answered) → ``streaming`` (first edited frame sent) → ``closed`` |
#: ``failed`` (with a ``reason``).
SessionState = Literal["created", "connecting", "streaming", "closed", "failed"]

CREATED: Final = "created"
CONNECTING: Final = "connecting"
STREAMING: Final = "streaming"
CLOSED: Final = "closed"
FAILED: Final = "failed"

#: A session in one of these states has ended; it cannot change or connect again.
TERMINAL_STATES: frozenset[SessionState] = frozenset({CLOSED, FAILED})
#: The others: the session still holds (or may still take) a worker slot.
UNFINISHED_STATES: frozenset[SessionState] = frozenset({CREATED, CONNECTING, STREAMING})

# ``Transition`` (how a prompt change is applied) is defined once, by the editor's protocol
# (``lipar_core.protocol``, which the worker's messages carry as is); re-exported here for the session layer and
# the API.
CUT: Final = "cut"
SMOOTH: Final = "smooth"


@dataclass(frozen=True)
class SessionSpec:
    """What a session is created with (the API's ``SessionCreate``, validated). ``None``: the preset's value;
    ``lipar``: the LIPAR overrides that were given (``None``: none); ``record``: write the edited video to an mp4
    on the owner node from the first frame; ``record_keep``: its recordings survive the session's deletion."""

    prompt: str
    seed: int = 0
    strength: float | None = None
    steps: int | None = None
    lipar: dict[str, Any] | None = None
    record: bool = False
    record_keep: bool = False


@dataclass(frozen=True)
class SessionChange:
    """A change of a running session (the API's ``SessionPatch``, validated). ``None`` means "not given": the
    session keeps its value (a prompt change without a ``transition`` is a ``cut``)."""

    prompt: str | None = None
    transition: Transition | None = None
    blend_blocks: int | None = None
    seed: int | None = None
    strength: float | None = None
    steps: int | None = None
    record: bool | None = None
    record_keep: bool | None = None

    def given(self) -> dict[str, Any]:
        """The fields that were given: the record's fields to update and the control message's body."""
        return {k: v for k, v in asdict(self).items() if v is not None}


class SessionRecord(TypedDict):
    """A session as the store keeps it (a flat JSON-able dict; the Redis store keeps one JSON value per field
    of a hash). The API returns it as ``server.api.schemas.Session``."""

    id: str
    state: SessionState
    reason: str | None
    node_id: str
    offer_url: str
    prompt: str
    seed: int
    strength: float | None
    steps: int | None
    lipar: dict[str, Any] | None
    transition: Transition
    blend_blocks: int
    last_error: str | None
    created_at: float
    updated_at: float
    stats: dict[str, Any]
    # recording (absent from records written before it existed: read with ``.get(..., False)``)
    record: NotRequired[bool]  # a recording of the edited video is being written on the owner node
    record_keep: NotRequired[bool]  # the session's recordings survive its deletion


class RecordFields(TypedDict, total=False):
    """Some fields of a :class:`SessionRecord`, for :meth:`~server.sessions.store.SessionStore.update` (the
    named fields only, so the owner's stats updates and another node's PATCH never overwrite each other)."""

    id: str
    state: SessionState
    reason: str | None
    node_id: str
    offer_url: str
    prompt: str
    seed: int
    strength: float | None
    steps: int | None
    lipar: dict[str, Any] | None
    transition: Transition
    blend_blocks: int
    last_error: str | None
    created_at: float
    updated_at: float
    stats: dict[str, Any]
    record: bool
    record_keep: bool
