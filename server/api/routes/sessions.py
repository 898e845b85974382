"""Sessions v1: create, offer, get, list, patch, delete. Thin: validation is in the schemas, logic in the manager."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response

from server.api.deps import ManagerDep, SettingsDep, require_token
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

_errors: dict[int | str, dict[str, object]] = {
    s: {"model": ErrorResponse} for s in (400, 401, 404, 409, 413, 422, 503)
}

router = APIRouter(
    prefix="/v1/sessions", tags=["sessions"], dependencies=[Depends(require_token)], responses=_errors
)


@router.post("", status_code=201, response_model=Session)
async def create_session(body: SessionCreate, manager: ManagerDep) -> Session:
    """Create a session on a worker with room (503 + ``Retry-After`` when full). Next: POST the offer."""
    return Session.model_validate(await manager.create(body))


@router.get("", response_model=SessionList)
async def list_sessions(manager: ManagerDep) -> SessionList:
    """Every session (all nodes), with live stats."""
    return SessionList(sessions=[Session.model_validate(r) for r in await manager.list_all()])


@router.get("/{session_id}", response_model=Session)
async def get_session(session_id: str, manager: ManagerDep) -> Session:
    """One session with its live stats."""
    return Session.model_validate(await manager.get(session_id))


@router.post("/{session_id}/offer", response_model=SdpAnswer)
async def offer(session_id: str, body: SdpOffer, manager: ManagerDep, settings: SettingsDep) -> SdpAnswer:
    """The browser's SDP offer → the server's SDP answer (once per session, on the owner node)."""
    if len(body.sdp.encode()) > settings.max_sdp_bytes:
        raise TooLarge(f"SDP offer over the limit of {settings.max_sdp_bytes} bytes")
    return SdpAnswer(sdp=await manager.offer(session_id, body.sdp))


@router.patch("/{session_id}", response_model=Session)
async def patch_session(session_id: str, body: SessionPatch, manager: ManagerDep) -> Session:
    """Change the prompt (``transition`` cut or smooth) or parameters; applied at the next block boundary."""
    return Session.model_validate(await manager.patch(session_id, body))


@router.delete("/{session_id}", status_code=204, response_class=Response)
async def delete_session(session_id: str, manager: ManagerDep) -> Response:
    """End the session and free its worker state."""
    await manager.delete(session_id)
    return Response(status_code=204)
