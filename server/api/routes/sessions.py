"""Sessions v1: create, offer, get, list, patch, delete. Thin: validation is in the schemas (and, for the limits
that depend on the preset, :class:`server.api.schemas.ParamLimits`), logic in the manager.

Every error a route can answer is declared in the OpenAPI document with the error envelope
(:class:`server.api.schemas.ErrorResponse`) and, for 429 and 503, the ``Retry-After`` header; the 201 of a
create links to the operations on the new session (OpenAPI links, followed by stateful API testers).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi import APIRouter, Depends, Response

from server.api.deps import LimitsDep, ManagerDep, SettingsDep, require_token
from server.api.routes.model import ModelInfoDep, ModelInfoSource
from server.api.schemas import (
    ErrorResponse,
    SdpAnswer,
    SdpOffer,
    Session,
    SessionCreate,
    SessionList,
    SessionPatch,
)
from server.sessions.errors import TooLarge
from server.sessions.types import TERMINAL_STATES

_RETRY_AFTER = {
    "Retry-After": {
        "description": "seconds to wait before retrying",
        "schema": {"type": "integer", "minimum": 0},
    }
}
_ERRORS: dict[int, dict[str, Any]] = {
    400: {"description": "the body is not JSON, or (offer) an SDP offer the server cannot use"},
    401: {
        "description": "missing or wrong bearer token (when LIPAR_API_TOKEN is set)",
        "headers": {"WWW-Authenticate": {"description": "Bearer", "schema": {"type": "string"}}},
    },
    404: {"description": "no such session"},
    409: {"description": "the session's state does not allow it (finished, already connected, other node)"},
    413: {"description": "request body over LIPAR_MAX_BODY_BYTES, or SDP over LIPAR_MAX_SDP_BYTES"},
    422: {"description": "invalid parameters; `details` names each field"},
    429: {
        "description": "too many wrong tokens from this address; retry after Retry-After",
        "headers": _RETRY_AFTER,
    },
    503: {
        "description": "no capacity, model loading, or the session store unavailable; retry after Retry-After",
        "headers": _RETRY_AFTER,
    },
}


def viewer_page_url(offer_url: str, session_id: str) -> str:
    """The read-only viewer page of a session on its own node (``/view/{id}``), from the session's ``offer_url``."""
    return offer_url.removesuffix(f"/v1/sessions/{session_id}/offer") + f"/view/{session_id}"


async def _session(record: Mapping[str, Any], model: ModelInfoSource) -> Session:
    """The API's view of a session record, with how the served model understands its prompt (``prompt_match``)
    and the session's viewer page (``viewer_url``)."""
    session = Session.model_validate(record)
    session.prompt_match = (await model.matcher()).match(session.prompt)
    session.viewer_url = viewer_page_url(session.offer_url, session.id)
    return session


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for these error statuses: the error envelope, the description, the headers."""
    return {s: {"model": ErrorResponse, **_ERRORS[s]} for s in statuses}


_AUTH = (401, 429)  # every route of the router: the token check and its throttle
_STORE = (503,)  # every route reads the session store, which may be unavailable

_SESSION_ID = {"session_id": "$response.body#/id"}
_LINKS = {
    "links": {
        "GetSession": {
            "operationId": "get_session",
            "parameters": _SESSION_ID,
            "description": "the session just created",
        },
        "PatchSession": {"operationId": "patch_session", "parameters": _SESSION_ID},
        "OfferSession": {"operationId": "offer_session", "parameters": _SESSION_ID},
        "DeleteSession": {"operationId": "delete_session", "parameters": _SESSION_ID},
    }
}

router = APIRouter(
    prefix="/v1/sessions",
    tags=["sessions"],
    dependencies=[Depends(require_token)],
    responses=errors(*_AUTH, *_STORE),
)


@router.post(
    "",
    status_code=201,
    response_model=Session,
    operation_id="create_session",
    responses={201: {"description": "the session, waiting for its offer", **_LINKS}, **errors(400, 413, 422)},
)
async def create_session(
    body: SessionCreate, manager: ManagerDep, limits: LimitsDep, model: ModelInfoDep
) -> Session:
    """Create a session on a worker with room (503 + ``Retry-After`` when full). Next: POST the offer.

    422 also when the values cannot work together on this preset: a strength too low for the number of steps
    (``steps`` distinct denoising steps between ``strength`` x 1000 and 0.625 times that), a prompt over
    ``LIPAR_MAX_PROMPT_CHARS``.
    """
    limits.check_create(body)
    return await _session(await manager.create(body.to_spec()), model)


@router.get("", response_model=SessionList, operation_id="list_sessions")
async def list_sessions(manager: ManagerDep, model: ModelInfoDep) -> SessionList:
    """Every session (all nodes), with live stats."""
    return SessionList(sessions=[await _session(r, model) for r in await manager.list_all()])


@router.get("/{session_id}", response_model=Session, operation_id="get_session", responses=errors(404))
async def get_session(session_id: str, manager: ManagerDep, model: ModelInfoDep) -> Session:
    """One session with its live stats."""
    return await _session(await manager.get(session_id), model)


@router.post(
    "/{session_id}/offer",
    response_model=SdpAnswer,
    operation_id="offer_session",
    responses=errors(400, 404, 409, 413, 422),
)
async def offer(session_id: str, body: SdpOffer, manager: ManagerDep, settings: SettingsDep) -> SdpAnswer:
    """The browser's SDP offer → the server's SDP answer (once per session, on the owner node)."""
    if len(body.sdp.encode()) > settings.max_sdp_bytes:
        raise TooLarge(f"SDP offer over the limit of {settings.max_sdp_bytes} bytes")
    return SdpAnswer(sdp=await manager.offer(session_id, body.sdp))


@router.patch(
    "/{session_id}",
    response_model=Session,
    operation_id="patch_session",
    responses=errors(400, 404, 409, 413, 422),
)
async def patch_session(
    session_id: str, body: SessionPatch, manager: ManagerDep, limits: LimitsDep, model: ModelInfoDep
) -> Session:
    """Change the prompt (``transition`` cut or smooth) or parameters; applied at the next block boundary.

    The change is checked with the session's current values first (a ``steps`` that the session's strength
    cannot give, or the reverse, is a 422), so the record never shows a value the worker did not take.
    """
    current = await manager.get(session_id)  # 404 first
    if current["state"] not in TERMINAL_STATES:  # a finished session: the manager answers 409
        limits.check_patch(body, current)
    return await _session(await manager.patch(session_id, body.to_change()), model)


@router.delete(
    "/{session_id}",
    status_code=204,
    response_class=Response,
    operation_id="delete_session",
    responses=errors(404),
)
async def delete_session(session_id: str, manager: ManagerDep) -> Response:
    """End the session and free its worker state."""
    await manager.delete(session_id)
    return Response(status_code=204)
