"""JSON errors: every error response is ``{"error": {"code": ..., "message": ...}}`` with the right status.

| status | code | when |
|---|---|---|
| 400 | ``bad_request`` | unusable input the schema cannot see (malformed SDP) |
| 401 | ``unauthorized`` | ``LIPAR_API_TOKEN`` is set and the bearer token is missing or wrong |
| 404 | ``not_found`` | unknown session or path |
| 405 | ``method_not_allowed`` | wrong method |
| 409 | ``conflict`` | the session's state does not allow it (offer twice, patch a finished session, wrong node) |
| 413 | ``too_large`` | body over ``LIPAR_MAX_BODY_BYTES`` or SDP over ``LIPAR_MAX_SDP_BYTES`` |
| 422 | ``invalid`` | invalid parameters: schema validation (``details`` lists the fields), prompt over the limit |
| 503 | ``unavailable`` | no capacity or not ready; ``Retry-After`` says when to retry |
| 503 | ``store_unavailable`` | the session store (Redis) is unreachable, paused or loading; ``Retry-After`` |
| 503 | ``node_unavailable`` | the session's node missed the change (re-subscribing after an outage, or gone) |
| 500 | ``internal`` | a bug; the message does not leak internals |
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from server.sessions.errors import (
    BadRequest,
    Invalid,
    NotFound,
    SessionError,
    TooLarge,
    Unavailable,
    WrongState,
)

log = logging.getLogger(__name__)

_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    422: "invalid",
    429: "too_many_requests",
    500: "internal",
    503: "unavailable",
}


def error_response(
    status: int,
    message: str,
    headers: dict[str, str] | None = None,
    details: list[Any] | None = None,
    code: str | None = None,
) -> JSONResponse:
    """The error envelope as a response; ``code`` defaults to the status's code (the table above)."""
    body: dict[str, Any] = {"code": code or _CODES.get(status, "error"), "message": message}
    if details is not None:
        body["details"] = details
    return JSONResponse({"error": body}, status_code=status, headers=headers)


class ApiError(Exception):
    """Raise from routes and dependencies to answer with an error envelope."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers


def _session_error(e: SessionError) -> JSONResponse:
    if isinstance(e, NotFound):
        return error_response(404, str(e))
    if isinstance(e, WrongState):
        return error_response(409, str(e))
    if isinstance(e, TooLarge):
        return error_response(413, str(e))
    if isinstance(e, Invalid):
        return error_response(422, str(e))
    if isinstance(e, Unavailable):
        return error_response(503, str(e), headers={"Retry-After": str(e.retry_after_s)}, code=e.code)
    if isinstance(e, BadRequest):
        return error_response(400, str(e))
    return error_response(400, str(e))


def install(app: FastAPI) -> None:
    """Register the handlers that turn every error into the envelope."""

    @app.exception_handler(ApiError)
    async def _api(_: Request, e: ApiError) -> JSONResponse:
        return error_response(e.status, e.message, e.headers)

    @app.exception_handler(SessionError)
    async def _session(_: Request, e: SessionError) -> JSONResponse:
        return _session_error(e)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, e: RequestValidationError) -> JSONResponse:
        details = [
            {
                "field": ".".join(str(p) for p in err.get("loc", ()) if p != "body"),
                "message": err.get("msg", ""),
            }
            for err in e.errors()
        ]
        summary = "; ".join(f"{d['field'] or 'body'}: {d['message']}" for d in details) or "invalid request"
        return error_response(422, summary, details=details)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, e: StarletteHTTPException) -> JSONResponse:
        return error_response(e.status_code, str(e.detail), headers=getattr(e, "headers", None))

    @app.exception_handler(Exception)
    async def _bug(_: Request, e: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return error_response(500, "internal error; see the server log")
