"""ASGI middleware of the API (server process): the request body limit, the security headers and the 405s."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping

from starlette.types import ASGIApp, Message, Receive, Scope, Send


async def send_error(
    send: Send, status: int, code: str, message: str, headers: Iterable[tuple[bytes, bytes]] = ()
) -> None:
    """Answer from an ASGI middleware with the API's error envelope ``{"error": {"code", "message"}}`` (JSON)."""
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class BodySizeLimit:
    """Refuse request bodies over ``max_bytes`` with 413, whether or not they declare their length.

    A ``Content-Length`` over the limit is refused before any of the body is read. Otherwise (a chunked body
    has no length) the body is read here first, counting bytes, and refused as soon as it passes the limit; a
    body within it is handed to the app unchanged. (Raising from inside the app's ``receive`` does not work:
    FastAPI turns any error while it reads the body into a 400.)
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    too_big = int(value) > self.max_bytes
                except ValueError:
                    too_big = False
                if too_big:
                    await self._reject(send)
                    return
        chunks: list[bytes] = []
        seen = 0
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return  # the client went away mid-body: nobody to answer
            if msg["type"] != "http.request":
                continue
            body = msg.get("body", b"")
            seen += len(body)
            if seen > self.max_bytes:
                await self._reject(send)
                return
            chunks.append(body)
            if not msg.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()  # after the body: the disconnect, when it comes

        await self.app(scope, replay, send)

    async def _reject(self, send: Send) -> None:
        message = f"request body over the limit of {self.max_bytes} bytes"
        # the rest of the body is not read
        await send_error(send, 413, "too_large", message, [(b"connection", b"close")])


#: The page (``client_web/``): its own scripts (ES modules) and stylesheet only, no inline code; the webcam
#: and the edited video are MediaStreams (``srcObject``); the icon is a ``data:`` URL; it calls its own origin
#: (plus ``LIPAR_CSP_CONNECT_SRC``: other nodes that own sessions); nobody may frame it.
PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "media-src 'self' blob: mediastream:; connect-src 'self'{connect}; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'; object-src 'none'"
)
#: FastAPI's interactive docs (``/docs``, ``/redoc``): Swagger UI and ReDoc load from the jsDelivr CDN and start
#: with an inline script.
DOCS_CSP = (
    "default-src 'none'; script-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net; "
    "style-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net https://fonts.googleapis.com; "
    "font-src https://fonts.gstatic.com; img-src 'self' data: https://fastapi.tiangolo.com https://cdn.redoc.ly; "
    "connect-src 'self'; worker-src blob:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'; "
    "object-src 'none'"
)
DOCS_PATHS = ("/docs", "/redoc")


class SecurityHeaders:
    """Add the browser security headers to every HTTP response (the page, the API, errors, 413s):
    ``Content-Security-Policy`` (:data:`PAGE_CSP`; :data:`DOCS_CSP` on the interactive docs),
    ``X-Frame-Options: DENY``, ``X-Content-Type-Options: nosniff``, ``Referrer-Policy: no-referrer``,
    ``Permissions-Policy`` (the camera for this origin only; microphone, geolocation and the rest for nobody)
    and ``Cross-Origin-Opener-Policy: same-origin``. A header the response already has is kept."""

    def __init__(self, app: ASGIApp, connect_src: Iterable[str] = ()) -> None:
        self.app = app
        extra = "".join(f" {o}" for o in connect_src)
        common = {
            b"x-frame-options": b"DENY",
            b"x-content-type-options": b"nosniff",
            b"referrer-policy": b"no-referrer",
            b"permissions-policy": b"camera=(self), microphone=(), geolocation=(), display-capture=(), "
            b"usb=(), payment=()",
            b"cross-origin-opener-policy": b"same-origin",
        }
        self.page = [*common.items(), (b"content-security-policy", PAGE_CSP.format(connect=extra).encode())]
        self.docs = [*common.items(), (b"content-security-policy", DOCS_CSP.encode())]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope.get("path", "")
        extra = self.docs if path.startswith(DOCS_PATHS) else self.page

        async def with_headers(msg: Message) -> None:
            if msg["type"] == "http.response.start":
                headers = list(msg.get("headers", []))
                have = {name.lower() for name, _ in headers}
                headers += [(k, v) for k, v in extra if k not in have]
                msg = {**msg, "headers": headers}
            await send(msg)

        await self.app(scope, receive, with_headers)


class AllowedMethods:
    """Answer a request for a path of the API whose method the API does not take there with 405, the error
    envelope, and ``Allow`` listing every method the OpenAPI document gives that path.

    Starlette alone gets this wrong here: it lists the methods of the first route of the path only (``GET`` for
    ``/v1/sessions``, which also takes ``POST``), and the page's static files mounted at ``/`` take over every
    path an API route does not fully match (``Allow: GET, HEAD`` for a ``PATCH`` path).

    ``paths`` gives the OpenAPI paths (templates such as ``/v1/sessions/{session_id}``) and their methods; it is
    called once, at the first request.
    """

    def __init__(self, app: ASGIApp, paths: Callable[[], Mapping[str, Iterable[str]]]) -> None:
        self.app, self._paths = app, paths
        self._table: list[tuple[re.Pattern[str], list[str]]] | None = None

    def allowed(self, path: str, method: str) -> list[str] | None:
        """The methods of ``path`` when ``method`` is not one of them; None otherwise (or for other paths)."""
        if self._table is None:
            self._table = [
                (
                    re.compile("^" + re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(t)) + "$"),
                    sorted(m.upper() for m in ms),
                )
                for t, ms in self._paths().items()
            ]
        for pattern, methods in self._table:
            if pattern.match(path):
                return None if method in methods else methods
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        allow = (
            self.allowed(scope.get("path", ""), scope.get("method", "")) if scope["type"] == "http" else None
        )
        if allow is None:
            await self.app(scope, receive, send)
            return
        message = f"{scope['method']} is not allowed here; allowed: {', '.join(allow)}"
        await send_error(send, 405, "method_not_allowed", message, [(b"allow", ", ".join(allow).encode())])
