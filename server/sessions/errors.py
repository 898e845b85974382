"""Domain errors of the session layer; the API maps each to an HTTP status (``server.api.errors``)."""

from __future__ import annotations


class SessionError(Exception):
    """Base class; ``str(e)`` is the client-facing message."""


class NotFound(SessionError):
    """No such session (404)."""


class WrongState(SessionError):
    """The session's state does not allow this (409)."""


class BadRequest(SessionError):
    """Unusable input that the schema cannot catch, e.g. a malformed SDP offer (400)."""


class Invalid(SessionError):
    """A parameter is out of its allowed range where the schema cannot know the limit (422)."""


class TooLarge(SessionError):
    """Input over a configured size limit (413)."""


class Unavailable(SessionError):
    """The request cannot be served now; retry after ``retry_after_s`` (503 with ``Retry-After``).

    ``code`` is the error code of the response body (``server.api.errors``).
    """

    code = "unavailable"

    def __init__(self, message: str, retry_after_s: int = 5) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class NoCapacity(Unavailable):
    """No worker can take another session now (503 with ``Retry-After``, code ``unavailable``)."""


class StoreUnavailable(Unavailable):
    """The session store (Redis) did not answer within its timeout, refused the connection or is loading
    (503 with ``Retry-After``, code ``store_unavailable``). Nothing was reserved for the failed request."""

    code = "store_unavailable"


class NodeUnavailable(Unavailable):
    """The node that serves the session did not receive a control message (it is re-subscribing to its
    control channel after a store outage, or it is gone) (503 with ``Retry-After``, code ``node_unavailable``)."""

    code = "node_unavailable"
