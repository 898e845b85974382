"""Typed dependencies of the routes (server process)."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from server.api.errors import ApiError
from server.metrics import Metrics
from server.sessions.manager import SessionManager
from server.settings import Settings


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


SettingsDep = Annotated[Settings, Depends(get_settings)]
ManagerDep = Annotated[SessionManager, Depends(get_manager)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]

_bearer = HTTPBearer(auto_error=False, description="LIPAR_API_TOKEN, when the server sets one")


def require_token(
    settings: SettingsDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> None:
    """401 unless ``Authorization: Bearer <LIPAR_API_TOKEN>`` (no check when the token is unset)."""
    token = settings.api_token
    if token is None:
        return
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise ApiError(
            401, "missing bearer token: send 'Authorization: Bearer <token>'", {"WWW-Authenticate": "Bearer"}
        )
    if not secrets.compare_digest(credentials.credentials.encode(), token.encode()):
        raise ApiError(401, "invalid bearer token", {"WWW-Authenticate": 'Bearer error="invalid_token"'})
