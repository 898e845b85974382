"""Typed dependencies of the routes (server process): settings, manager, metrics, parameter limits, and the
bearer-token check with its throttle of failed tokens.

The token is only ever read from the ``Authorization`` header: a token in a URL (``?token=``) reaches access logs
and proxies, so the API never accepts one there (the page takes it from the URL fragment, which browsers do not
send).
"""

from __future__ import annotations

import collections
import logging
import math
import secrets
import time
from collections.abc import Callable
from typing import Annotated, Literal

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from server.api.errors import ApiError
from server.api.schemas import ParamLimits
from server.metrics import Metrics
from server.sessions.manager import SessionManager
from server.settings import Settings

log = logging.getLogger(__name__)


def get_settings(request: Request) -> Settings:
    """The app's settings."""
    settings: Settings = request.app.state.settings
    return settings


def get_manager(request: Request) -> SessionManager:
    """The app's session manager."""
    manager: SessionManager = request.app.state.manager
    return manager


def get_metrics(request: Request) -> Metrics:
    """The app's metrics."""
    metrics: Metrics = request.app.state.metrics
    return metrics


def get_limits(request: Request) -> ParamLimits:
    """The served preset's parameter limits (checked before a request reaches a worker)."""
    limits: ParamLimits = request.app.state.limits
    return limits


SettingsDep = Annotated[Settings, Depends(get_settings)]
ManagerDep = Annotated[SessionManager, Depends(get_manager)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
LimitsDep = Annotated[ParamLimits, Depends(get_limits)]


class AuthThrottle:
    """Counts wrong bearer tokens per client address; an address with ``limit`` of them within ``window_s``
    seconds is refused (429 with ``Retry-After``) for ``block_s`` seconds, whatever token it sends.

    Other addresses are never affected, so a flood of wrong tokens from one place does not lock out good tokens
    from another. A missing token is not counted (it guesses nothing). At most ``max_clients`` addresses are
    remembered (the least recently failing are forgotten first), so the bookkeeping stays bounded.
    """

    def __init__(
        self,
        limit: int,
        window_s: float,
        block_s: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_clients: int = 10_000,
    ) -> None:
        self.limit, self.window_s, self.block_s = limit, window_s, block_s
        self.clock, self.max_clients = clock, max_clients
        self._fails: collections.OrderedDict[str, collections.deque[float]] = collections.OrderedDict()
        self._blocked: collections.OrderedDict[str, float] = collections.OrderedDict()  # address -> until

    def blocked_for(self, client: str) -> float | None:
        """Seconds until ``client`` may try again, or None when it is not blocked."""
        until = self._blocked.get(client)
        if until is None:
            return None
        left = until - self.clock()
        if left <= 0:
            del self._blocked[client]
            return None
        return left

    def failed(self, client: str) -> None:
        """Record a wrong token from ``client``; block it once it reaches the limit within the window."""
        now = self.clock()
        fails = self._fails.pop(client, None) or collections.deque()
        fails.append(now)
        while fails and now - fails[0] > self.window_s:
            fails.popleft()
        if len(fails) >= self.limit:
            self._blocked[client] = now + self.block_s
            self._blocked.move_to_end(client)
            while len(self._blocked) > self.max_clients:
                self._blocked.popitem(last=False)
            log.warning(
                "%d wrong bearer tokens from %s within %g s: answering it 429 for %g s",
                len(fails),
                client,
                self.window_s,
                self.block_s,
            )
            return
        self._fails[client] = fails
        while len(self._fails) > self.max_clients:
            self._fails.popitem(last=False)


def get_auth_throttle(request: Request) -> AuthThrottle:
    """The app's throttle of failed bearer tokens."""
    throttle: AuthThrottle = request.app.state.auth_throttle
    return throttle


_bearer = HTTPBearer(auto_error=False, description="LIPAR_API_TOKEN, when the server sets one")


def client_address(request: Request) -> str:
    """The client's address (what uvicorn reports: the peer, or a trusted proxy's ``X-Forwarded-For``)."""
    return request.client.host if request.client is not None else "unknown"


BearerCheck = Literal["ok", "missing", "wrong", "throttled"]


def check_bearer(
    request: Request, settings: Settings, credentials: HTTPAuthorizationCredentials | None
) -> BearerCheck:
    """How the request's bearer token compares with ``LIPAR_API_TOKEN``: ``ok`` (or no token is set),
    ``missing``, ``wrong`` (counted against the client's address), or ``throttled`` (the address sent too many
    wrong tokens lately: nothing it sends is compared). Every route that looks at the token should ask this, so
    that no route is an unthrottled way to guess it."""
    token = settings.api_token
    if token is None:
        return "ok"
    throttle = get_auth_throttle(request)
    client = client_address(request)
    if throttle.blocked_for(client) is not None:
        return "throttled"
    if credentials is None or credentials.scheme.lower() != "bearer":
        return "missing"
    if not secrets.compare_digest(credentials.credentials.encode(), token.encode()):
        throttle.failed(client)
        return "wrong"
    return "ok"


def require_token(
    request: Request,
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """401 unless ``Authorization: Bearer <LIPAR_API_TOKEN>`` (no check when the token is unset); 429 with
    ``Retry-After`` while the client's address is throttled for sending wrong tokens (:class:`AuthThrottle`)."""
    result = check_bearer(request, settings, credentials)
    if result == "ok":
        return
    if result == "throttled":
        wait = get_auth_throttle(request).blocked_for(client_address(request)) or 1.0
        retry = max(1, math.ceil(wait))
        raise ApiError(
            429,
            f"too many wrong tokens from your address; retry in {retry} s",
            {"Retry-After": str(retry)},
        )
    if result == "missing":
        raise ApiError(
            401, "missing bearer token: send 'Authorization: Bearer <token>'", {"WWW-Authenticate": "Bearer"}
        )
    raise ApiError(401, "invalid bearer token", {"WWW-Authenticate": 'Bearer error="invalid_token"'})
