"""Read-only viewers v1: ``POST /v1/sessions/{id}/view`` (a viewer's SDP offer → answer) and the viewer page
``GET /view/{id}`` (``client_web/viewer.html``; it works as an OBS browser source).

A viewer receives the session's edited video and sends nothing; any number of viewers up to
``LIPAR_VIEWERS_PER_SESSION`` share the session's output (:mod:`server.rtc.viewers`: no model work per viewer).
Only the node that owns the session's media answers (like the offer); the page finds that node from the session's
``offer_url``. The token rules are the session routes'.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse

from server.api.deps import ManagerDep, SettingsDep, require_token
from server.api.errors import ApiError
from server.api.routes.sessions import errors, viewer_page_url
from server.api.schemas import ErrorResponse, SdpAnswer, SdpOffer
from server.rtc.peer import BadOffer
from server.rtc.viewers import SessionEnded, TooManyViewers, Viewers
from server.sessions.errors import BadRequest, TooLarge, WrongState
from server.sessions.types import CREATED, TERMINAL_STATES

#: seconds a viewer refused for the limit is told to wait (a viewer may leave at any time)
VIEWER_LIMIT_RETRY_S = 10


def get_viewers(request: Request) -> Viewers:
    """The app's viewer registry."""
    viewers: Viewers = request.app.state.viewers
    return viewers


ViewersDep = Annotated[Viewers, Depends(get_viewers)]

_LIMIT: dict[int | str, dict[str, Any]] = {
    429: {
        "model": ErrorResponse,
        "description": "the session has LIPAR_VIEWERS_PER_SESSION viewers already (or too many wrong tokens from "
        "this address); retry after Retry-After",
        "headers": {
            "Retry-After": {
                "description": "seconds to wait before retrying",
                "schema": {"type": "integer", "minimum": 0},
            }
        },
    }
}

router = APIRouter(
    prefix="/v1/sessions",
    tags=["viewers"],
    dependencies=[Depends(require_token)],
    responses=errors(401, 503),
)


@router.post(
    "/{session_id}/view",
    response_model=SdpAnswer,
    operation_id="view_session",
    responses={**errors(400, 404, 409, 413, 422), **_LIMIT},
)
async def view_session(
    session_id: str, body: SdpOffer, manager: ManagerDep, settings: SettingsDep, viewers: ViewersDep
) -> SdpAnswer:
    """A read-only viewer's SDP offer (one ``recvonly`` video transceiver) → the answer: the viewer then receives
    the session's edited video. 409 while the session has no connection yet (retry) and once it has ended; 429
    with ``Retry-After`` when it has ``LIPAR_VIEWERS_PER_SESSION`` viewers."""
    if len(body.sdp.encode()) > settings.max_sdp_bytes:
        raise TooLarge(f"SDP offer over the limit of {settings.max_sdp_bytes} bytes")
    r = await manager.get(session_id)  # 404
    if r["node_id"] != manager.node_id:
        raise WrongState(
            f"session {session_id} is served by node {r['node_id']}: open its viewer at "
            f"{viewer_page_url(r['offer_url'], session_id)}"
        )
    if r["state"] in TERMINAL_STATES:
        raise WrongState(f"session {session_id} is {r['state']}: it has ended")
    live = manager.live.get(session_id)
    if live is None or live.closed:
        raise WrongState(f"session {session_id} has ended")
    if live.peer is None or r["state"] == CREATED:
        raise WrongState(f"session {session_id} is not streaming yet (state {r['state']}); retry when it is")
    try:
        return SdpAnswer(sdp=await viewers.add(session_id, live.out, body.sdp))
    except BadOffer as e:
        raise BadRequest(str(e)) from None
    except SessionEnded as e:
        raise WrongState(str(e)) from None
    except TooManyViewers as e:
        raise ApiError(429, str(e), {"Retry-After": str(VIEWER_LIMIT_RETRY_S)}) from None


def page_router(client_dir: Path) -> APIRouter:
    """``GET /view/{session_id}``: the viewer page (static; the session and the token are read by its script, the
    token from the URL fragment ``#token=…``, which browsers never send)."""
    page = client_dir / "viewer.html"
    pages = APIRouter(include_in_schema=False)

    @pages.get("/view/{session_id}")
    async def viewer_page(session_id: str) -> FileResponse:
        if not page.is_file():
            raise ApiError(404, f"no viewer page in {client_dir} (viewer.html is missing)")
        return FileResponse(page, media_type="text/html", headers={"Cache-Control": "no-cache"})

    return pages
