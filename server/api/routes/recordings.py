"""Recordings v1: list, download and delete the server-side recordings of a session. Thin: the files are kept by
:class:`server.rtc.recorder.Recordings` (the manager's ``recordings``), started and stopped by the manager
(``record`` in a create or a PATCH).

A recording lives on the node that serves the session's media. These routes answer on that node; on another node
(several nodes with Redis) they answer 409 with the owner's URL in the message (no redirect: a redirect to another
origin would drop the bearer token in most clients). Recordings kept (``record_keep``) after their session was
deleted stay listed and downloadable under the session's id on that node until deleted.

Only names the server generated are ever resolved (``rec-NNN-<UTC time>.mp4``, looked up among the session's
recordings); anything else, ``..`` included, is a 404.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from fastapi import APIRouter, Depends, Response
from fastapi.responses import FileResponse

from server.api.deps import ManagerDep, require_token
from server.api.routes.sessions import errors
from server.api.schemas import Recording, RecordingList
from server.rtc.recorder import RecordingBusy, RecordingInfo, RecordingNotFound
from server.sessions.errors import NotFound, WrongState
from server.sessions.manager import SessionManager

router = APIRouter(
    prefix="/v1/sessions",
    tags=["recordings"],
    dependencies=[Depends(require_token)],
    responses=errors(401, 429, 503, 404),
)

_MP4: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "the mp4 (Content-Disposition: attachment); Range requests are answered 206",
        "content": {"video/mp4": {"schema": {"type": "string", "format": "binary"}}},
    },
    206: {
        "description": "the requested byte range of the mp4",
        "content": {"video/mp4": {"schema": {"type": "string", "format": "binary"}}},
    },
    416: {"description": "a Range outside the file"},
}


async def _check_local(session_id: str, manager: SessionManager) -> None:
    """404 for an unknown session without recordings here; 409 when another node serves the session."""
    recordings = manager.recordings
    if not recordings.valid_session_id(session_id):
        raise NotFound(f"no session {session_id}")
    try:
        record = await manager.get(session_id)
    except NotFound:
        record = None
    if record is not None and record["node_id"] != manager.node_id:
        owner = record["offer_url"].rsplit("/v1/sessions/", 1)[0]
        raise WrongState(
            f"session {session_id} is served by node {record['node_id']}, which keeps its recordings: ask "
            f"{owner}/v1/sessions/{session_id}/recordings"
        )
    if record is None and recordings.session_recordings(session_id) is None:
        raise NotFound(f"no session {session_id} (and no recordings of it on this node)")


def _recording(session_id: str, info: RecordingInfo) -> Recording:
    return Recording(**asdict(info), url=f"/v1/sessions/{session_id}/recordings/{info.name}")


@router.get(
    "/{session_id}/recordings",
    response_model=RecordingList,
    operation_id="list_recordings",
    responses=errors(409),
)
async def list_recordings(session_id: str, manager: ManagerDep) -> RecordingList:
    """The session's recordings on this node, oldest first (the one being written too, with its progress)."""
    await _check_local(session_id, manager)
    infos = manager.recordings.session_recordings(session_id) or []
    return RecordingList(recordings=[_recording(session_id, i) for i in infos])


@router.get(
    "/{session_id}/recordings/{name}",
    response_class=FileResponse,
    operation_id="get_recording",
    responses={**_MP4, **errors(409)},
)
async def get_recording(session_id: str, name: str, manager: ManagerDep) -> FileResponse:
    """Download a recording (``video/mp4``, as an attachment; byte ranges supported). 409 while it is still
    being written: stop it first (PATCH ``record: false``)."""
    await _check_local(session_id, manager)
    try:
        info, path = manager.recordings.get(session_id, name)
    except RecordingNotFound as e:
        raise NotFound(str(e)) from None
    if info.state == "recording":
        raise WrongState(
            f"recording {name} is still being written; stop it (PATCH record: false) or end the session first"
        )
    if not path.is_file():
        raise NotFound(f"recording {name} has no file ({info.state}: {info.error or 'no frames'})")
    return FileResponse(path, media_type="video/mp4", filename=f"lipar-{session_id[:8]}-{name}")


@router.delete(
    "/{session_id}/recordings/{name}",
    status_code=204,
    response_class=Response,
    operation_id="delete_recording",
    responses=errors(409),
)
async def delete_recording(session_id: str, name: str, manager: ManagerDep) -> Response:
    """Remove a recording (kept or not). 409 while it is being written."""
    await _check_local(session_id, manager)
    try:
        manager.recordings.delete(session_id, name)
    except RecordingNotFound as e:
        raise NotFound(str(e)) from None
    except RecordingBusy as e:
        raise WrongState(str(e)) from None
    return Response(status_code=204)
