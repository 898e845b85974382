"""Hostile clients against the REST API (issue 18): strict request bodies, limits checked before a worker sees
anything, chunked oversize bodies, security headers, throttled token guessing, tokens kept out of the logs.

Most tests talk to a real ``lipar-server`` subprocess (uvicorn, the tiny-random preset, the real page in
``client_web/``); the parameter-limit test builds real editors with the production editor factory to show that
the API accepts exactly what the editor accepts.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.server.server_proc import ServerProcess, wait_until

pytestmark = [pytest.mark.timeout(240)]

TOKEN = "hostile-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MAX_BODY = 8192
FAIL_LIMIT = 20
BLOCK_S = 5


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One real server for the module: bearer token, small body limit, 20 wrong tokens in 10 s → 429 for 5 s."""
    s = ServerProcess(
        {
            "LIPAR_API_TOKEN": TOKEN,
            "LIPAR_MAX_BODY_BYTES": str(MAX_BODY),
            "LIPAR_MAX_PROMPT_CHARS": "200",
            "LIPAR_SESSIONS_PER_WORKER": "4",
            "LIPAR_AUTH_FAIL_LIMIT": str(FAIL_LIMIT),
            "LIPAR_AUTH_FAIL_WINDOW_S": "10",
            "LIPAR_AUTH_BLOCK_S": str(BLOCK_S),
            "LIPAR_NODE_ID": "hostile",
        },
        tmp_path_factory.mktemp("hostile") / "server.log",
    )
    try:
        s.wait_ready()
        yield s
    finally:
        s.stop()


@pytest.fixture
def api(server: ServerProcess) -> Iterator[httpx.Client]:
    with server.client(TOKEN) as c:
        yield c


def _field_errors(r: httpx.Response) -> list[str]:
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["code"] == "invalid"
    return [d["field"] for d in err["details"]]


# ---- strict request bodies -------------------------------------------------------------------------------------

STRICT_CREATE = [
    ({"prompt": "x", "seed": "12"}, "seed"),  # a string is not a seed
    ({"prompt": "x", "seed": 12.5}, "seed"),  # nor a fraction
    ({"prompt": "x", "seed": 1e300}, "seed"),  # nor a float beyond exact integers
    ({"prompt": "x", "seed": True}, "seed"),  # nor a boolean
    ({"prompt": "x", "steps": True}, "steps"),
    ({"prompt": "x", "steps": "3"}, "steps"),
    ({"prompt": "x", "strength": True}, "strength"),
    ({"prompt": "x", "strength": "0.5"}, "strength"),
    ({"prompt": 12}, "prompt"),
    ({"prompt": ["a", "b"]}, "prompt"),
    ({"prompt": "   "}, "prompt"),  # blank
    ({"prompt": "\t\n\u3000\x1c"}, "prompt"),  # blank by str.strip's rule (the editor's)
    ({"prompt": "x" * 201}, "prompt"),  # over LIPAR_MAX_PROMPT_CHARS
    ({"prompt": "x", "strength": 0.002, "steps": 3}, "strength"),  # no 3 distinct steps from step 2
    ({"prompt": "x", "strength": 0.01, "steps": 8}, "strength"),
    ({"prompt": "x", "strength": 0.001}, "strength"),  # with the preset's 3 steps
    ({"prompt": "x", "lipar": {"enabled": "true"}}, "lipar.enabled"),
    ({"prompt": "x", "lipar": {"enabled": 1}}, "lipar.enabled"),
    ({"prompt": "x", "lipar": {"tau": "0.1"}}, "lipar.tau"),
    ({"prompt": "x", "lipar": {"m": [1, 8]}}, "lipar.m"),  # not a per-session knob
    ({"prompt": "x", "extra": 1}, "extra"),
]


@pytest.mark.parametrize(
    "body,field", STRICT_CREATE, ids=[f"{f}-{i}" for i, (_, f) in enumerate(STRICT_CREATE)]
)
def test_create_refuses_loose_or_unworkable_values(
    api: httpx.Client, body: dict[str, Any], field: str
) -> None:
    """Each body is refused with 422 naming the field, and no session is made (the worker never sees it)."""
    before = len(api.get("/v1/sessions").json()["sessions"])
    r = api.post("/v1/sessions", json=body)
    assert field in _field_errors(r), r.text
    assert field.split(".")[-1] in r.json()["error"]["message"]
    assert len(api.get("/v1/sessions").json()["sessions"]) == before


def test_strict_bodies_still_take_exact_types(api: httpx.Client) -> None:
    """Integers where numbers are expected are numbers (1 is a strength), integral numbers are integers
    (3.0 steps); the boundary values are accepted."""
    r = api.post(
        "/v1/sessions",
        json={"prompt": "  a cat  ", "seed": 2**63 - 1, "strength": 1, "steps": 8, "lipar": {"tau": 0}},
    )
    assert r.status_code == 201, r.text
    assert r.json()["strength"] == 1.0 and r.json()["steps"] == 8 and r.json()["seed"] == 2**63 - 1
    assert api.delete(f"/v1/sessions/{r.json()['id']}").status_code == 204
    r = api.post("/v1/sessions", json={"prompt": "x", "strength": 0.002, "steps": 1})  # one step: no spacing
    assert r.status_code == 201, r.text
    assert api.delete(f"/v1/sessions/{r.json()['id']}").status_code == 204
    # JSON Schema's integer: 3.0 is the integer 3 (what the OpenAPI document promises)
    r = api.post("/v1/sessions", json={"prompt": "x", "steps": 3.0, "seed": 7.0})
    assert r.status_code == 201 and r.json()["steps"] == 3 and r.json()["seed"] == 7, r.text
    assert isinstance(r.json()["steps"], int)
    assert api.delete(f"/v1/sessions/{r.json()['id']}").status_code == 204


def test_patch_is_checked_against_the_session_values(api: httpx.Client) -> None:
    """A PATCH is validated merged with the session's current values: a change the worker would reject is a
    422 and the record keeps the values the worker runs with (it used to answer 200 and show the new ones)."""
    s = api.post("/v1/sessions", json={"prompt": "a cat", "strength": 0.01, "steps": 1}).json()
    url = f"/v1/sessions/{s['id']}"
    try:
        r = api.patch(url, json={"steps": 8})  # 8 distinct steps between 10 and 6 do not exist
        assert _field_errors(r) == ["steps"] and "strength 0.01 with 8 steps" in r.json()["error"]["message"]
        for body, field in (
            ({"seed": "3"}, "seed"),
            ({"steps": True}, "steps"),
            ({"strength": "0.5"}, "strength"),
            ({"prompt": " \n "}, "prompt"),
            ({"prompt": "ok", "blend_blocks": "2", "transition": "smooth"}, "blend_blocks"),
        ):
            assert field in _field_errors(api.patch(url, json=body)), body
        rec = api.get(url).json()
        assert (rec["strength"], rec["steps"], rec["seed"], rec["prompt"]) == (0.01, 1, 0, "a cat")
        assert rec["last_error"] is None
        # valid combinations pass: a higher strength first, then the steps it leaves room for
        assert api.patch(url, json={"strength": 0.002}).status_code == 200  # one step: [2]
        assert _field_errors(api.patch(url, json={"steps": 3})) == ["steps"]  # [2, 2, 1]: not distinct
        assert api.patch(url, json={"strength": 0.5}).status_code == 200
        r = api.patch(url, json={"steps": 8})
        assert r.status_code == 200 and r.json()["steps"] == 8 and r.json()["strength"] == 0.5
        assert _field_errors(api.patch(url, json={"strength": 0.01})) == ["strength"]  # now with 8 steps
    finally:
        api.delete(url)


def test_api_accepts_exactly_what_the_editor_accepts() -> None:
    """One source of truth: for a grid of strengths, steps and prompts, :class:`ParamLimits` refuses a create or
    a PATCH exactly when the production editor factory (what a worker runs) refuses it."""
    from server.api.schemas import ParamLimits, SessionCreate, SessionPatch
    from server.worker.editors import LiparEditorFactory

    factory = LiparEditorFactory("tiny-random", "cpu")
    limits = ParamLimits.for_preset("tiny-random", max_prompt_chars=1000)

    def editor_takes(strength: float | None, steps: int | None, prompt: str = "x") -> bool:
        try:
            e = factory.new(prompt, 0, None)
            if strength is not None or steps is not None:
                e.set_params(strength=strength, steps=steps)
        except ValueError:
            return False
        return True

    def api_takes(strength: float | None, steps: int | None, prompt: str = "x") -> bool:
        try:
            limits.check_create(SessionCreate(prompt=prompt, strength=strength, steps=steps))
        except Exception:
            return False
        return True

    strengths = [None, 0.0005, 0.001, 0.002, 0.003, 0.004, 0.006, 0.009, 0.01, 0.012, 0.017, 0.018, 0.4, 1.0]
    disagree = [
        (s, k) for s in strengths for k in (None, *range(1, 9)) if editor_takes(s, k) != api_takes(s, k)
    ]
    assert disagree == []
    # both refuse some combinations and take others (the grid tests something)
    assert not api_takes(0.002, 3) and api_takes(0.002, 1) and api_takes(0.018, 8) and not api_takes(0.017, 8)
    # PATCH: the editor keeps the value not given; the API merges the session record the same way
    for s0, k0 in ((0.01, 1), (0.4, None), (None, 8), (0.05, 4)):
        for s, k in ((None, 8), (0.003, None), (0.01, None), (None, 2), (1.0, 8)):
            e = factory.new("x", 0, None)
            if s0 is not None or k0 is not None:
                e.set_params(strength=s0, steps=k0)
            try:
                e.set_params(strength=s, steps=k)
                editor_ok = True
            except ValueError:
                editor_ok = False
            try:
                limits.check_patch(SessionPatch(strength=s, steps=k), {"strength": s0, "steps": k0})
                api_ok = True
            except Exception:
                api_ok = False
            assert editor_ok == api_ok, (s0, k0, s, k)
    # two changes before a block both count (the editor used to compute the second from the applied steps,
    # dropping the first while the record showed it)
    from lipar_core.scheduler import make_step_list

    e = factory.new("x", 0, None)
    e.set_params(strength=0.5)
    e.set_params(steps=8)
    assert e._pending.steps == make_step_list(0.5, 8)
    for prompt in (" ", "\u3000", "\x1c\x1d", " a ", "\u200b"):  # U+200B is not whitespace to str.strip
        assert editor_takes(None, None, prompt) == api_takes(None, None, prompt), repr(prompt)


def test_blank_prompt_pattern_matches_the_validator() -> None:
    """The OpenAPI pattern of a prompt ("some non-whitespace character") accepts exactly what the validator
    accepts, for every single code point (so schema-driven clients and fuzzers agree with the server)."""
    import re

    from server.api.schemas import NOT_BLANK_PATTERN

    pattern = re.compile(NOT_BLANK_PATTERN)
    wrong = [c for c in range(0x110000) if bool(pattern.search(chr(c))) != bool(chr(c).strip())]
    assert wrong == []


# ---- body size ------------------------------------------------------------------------------------------------


def _raw_http(server: ServerProcess, request: bytes) -> bytes:
    """Send raw bytes to the server and read one response (headers and a Content-Length body)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(request)
        data = b""
        with contextlib.suppress(ConnectionResetError):
            while b"\r\n\r\n" not in data and (chunk := sock.recv(65536)):
                data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            length = next(
                int(line.split(b":")[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            while len(body) < length and (chunk := sock.recv(65536)):
                body += chunk
            data = head + b"\r\n\r\n" + body
    return data


def _chunked(path: str, parts: list[bytes]) -> bytes:
    body = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n"
        "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    return head.encode() + body


def test_chunked_oversize_body_is_refused(server: ServerProcess, api: httpx.Client) -> None:
    """A body without Content-Length (chunked) is counted as it arrives: past LIPAR_MAX_BODY_BYTES it is a 413
    (it used to reach the app, which answered 400 or took it); a chunked body within the limit works."""
    big = _chunked("/v1/sessions", [b'{"prompt": "', *[b"x" * 4000] * 3, b'"}'])
    answer = _raw_http(server, big)
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:300]
    assert b'"too_large"' in answer and b"x-content-type-options: nosniff" in answer.lower()
    small = _chunked("/v1/sessions", [b'{"prompt": ', b'"chunked', b' cat"}'])
    answer = _raw_http(server, small)
    assert answer.startswith(b"HTTP/1.1 201 "), answer[:300]
    sid = answer.split(b'"id":"')[1].split(b'"')[0].decode()
    assert api.get(f"/v1/sessions/{sid}").json()["prompt"] == "chunked cat"
    assert api.delete(f"/v1/sessions/{sid}").status_code == 204


async def test_chunked_megabyte_is_not_read_past_the_limit() -> None:
    """In process (the middleware alone in front of the app): a 1 MB streamed body is refused with 413 after
    reading little more than the limit, not after reading it all."""
    from server.main import create_app
    from server.settings import load_settings

    app = create_app(load_settings(config="tiny-random", max_body_bytes=MAX_BODY), client_dir=None)
    sent = 0

    async def megabyte() -> AsyncIterator[bytes]:
        nonlocal sent
        for _ in range(64):
            sent += 16384
            yield b"x" * 16384

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        r = await c.post("/v1/sessions", content=megabyte(), headers={"content-type": "application/json"})
        assert r.status_code == 413 and r.json()["error"]["code"] == "too_large"
        assert sent <= MAX_BODY + 2 * 16384, sent
        # within the limit, a streamed body reaches the route intact (here: its validation)
        r = await c.post(
            "/v1/sessions",
            content=_aiter([b'{"prompt": ', b'"   "}']),
            headers={"content-type": "application/json"},
        )
        assert r.status_code == 422 and r.json()["error"]["details"][0]["field"] == "prompt", r.text


async def _aiter(parts: list[bytes]) -> AsyncIterator[bytes]:
    for p in parts:
        yield p


# ---- security headers -------------------------------------------------------------------------------------------


def test_security_headers_on_the_page_and_the_api(server: ServerProcess) -> None:
    """Every response (the page, its scripts, the API, errors, the docs) carries the security headers; the
    page's CSP allows only its own scripts and styles and forbids framing."""
    with server.client() as anon, server.client(TOKEN) as c:
        responses = {
            "/": anon.get("/"),
            "/app.js": anon.get("/app.js"),
            "/v1/model": anon.get("/v1/model"),
            "/v1/sessions (401)": anon.get("/v1/sessions"),
            "/v1/sessions": c.get("/v1/sessions"),
            "/v1/sessions/x (404)": c.get("/v1/sessions/nope"),
            "/v1/sessions (422)": c.post("/v1/sessions", json={"prompt": " "}),
            "/healthz": anon.get("/healthz"),
            "/openapi.json": anon.get("/openapi.json"),
            "/docs": anon.get("/docs"),
        }
    for what, r in responses.items():
        h = r.headers
        assert h.get("x-frame-options") == "DENY", what
        assert h.get("x-content-type-options") == "nosniff", what
        assert h.get("referrer-policy") == "no-referrer", what
        assert "camera=(self)" in h.get("permissions-policy", ""), what
        assert "microphone=()" in h.get("permissions-policy", ""), what
        csp = h.get("content-security-policy", "")
        assert "frame-ancestors 'none'" in csp and "object-src 'none'" in csp, what
    page_csp = responses["/"].headers["content-security-policy"]
    directives = dict(d.strip().split(" ", 1) for d in page_csp.split(";"))
    assert directives["default-src"] == "'none'"
    assert directives["script-src"] == "'self'" and directives["style-src"] == "'self'"  # nothing inline
    assert directives["connect-src"] == "'self'"
    assert responses["/"].status_code == 200 and "<script" in responses["/"].text
    assert "cdn.jsdelivr.net" in responses["/docs"].headers["content-security-policy"]  # Swagger UI's assets


def test_page_fits_its_csp() -> None:
    """What the CSP forbids the page does not do: no inline scripts, styles or event handlers, nothing loaded
    from another origin (the browser test also records violations in Chromium: none)."""
    import re

    client = Path(__file__).resolve().parents[2] / "client_web"
    html = (client / "index.html").read_text()
    assert re.findall(r"<script(?![^>]*\bsrc=)[^>]*>", html) == []  # every script has a src
    assert re.findall(r"<style\b|\sstyle=|\son[a-z]+=", html) == []
    for url in re.findall(r"""(?:src|href)=["']([^"'#]+)""", html):
        assert not re.match(r"^(https?:)?//", url), url  # same origin only (data: icon is allowed by img-src)
    for js in client.glob("*.js"):
        text = js.read_text()
        assert not re.search(r"\beval\(|new Function\(|setAttribute\(['\"]style|innerHTML\s*=", text), js.name


# ---- throttling of wrong tokens ---------------------------------------------------------------------------------


def _from(server: ServerProcess, address: str, token: str | None) -> httpx.Client:
    """A client whose connections come from ``address`` (a loopback address: the server sees it as the client)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    transport = httpx.HTTPTransport(local_address=address)
    return httpx.Client(base_url=server.url, headers=headers, transport=transport, timeout=10)


def test_wrong_tokens_are_throttled_per_address_then_recover(server: ServerProcess) -> None:
    """300 wrong tokens in a burst from one address: the first 20 are 401, the rest 429 with Retry-After (even a
    right token from that address, while it lasts); other addresses keep working; after Retry-After the address
    works again."""
    with _from(server, "127.0.0.2", "wrong-token-xxxxxxxx") as bad, _from(server, "127.0.0.2", TOKEN) as same:
        t0 = time.monotonic()
        codes = [bad.get("/v1/sessions").status_code for _ in range(300)]
        burst_s = time.monotonic() - t0
        assert codes[:FAIL_LIMIT] == [401] * FAIL_LIMIT and set(codes[FAIL_LIMIT:]) == {429}, codes
        r = same.get("/v1/sessions")
        assert r.status_code == 429 and r.json()["error"]["code"] == "too_many_requests"
        retry = int(r.headers["Retry-After"])
        assert 1 <= retry <= BLOCK_S + 1
        with _from(server, "127.0.0.3", TOKEN) as other:
            assert other.get("/v1/sessions").status_code == 200  # no lockout of other addresses
        with _from(server, "127.0.0.4", None) as anon:
            assert anon.get("/v1/model").status_code == 200  # the public route is not behind the token
        # recovery: the block ends after at most Retry-After seconds, then the right token works again
        blocked_at = time.monotonic()
        wait_until(lambda: same.get("/v1/sessions").status_code == 200, retry + 2, "the block to end")
        assert time.monotonic() - blocked_at <= retry + 2
    assert burst_s < 30
    assert "wrong bearer tokens from 127.0.0.2" in server.log_path.read_text()


def test_auth_throttle_window_and_expiry() -> None:
    """The throttle's arithmetic with a fake clock: failures older than the window do not count; the block
    lasts block_s; other addresses are independent; the bookkeeping is bounded."""
    from server.api.deps import AuthThrottle

    now = [0.0]
    t = AuthThrottle(3, window_s=10.0, block_s=5.0, clock=lambda: now[0], max_clients=4)
    t.failed("a")
    t.failed("a")
    now[0] = 11.0  # both outside the window
    t.failed("a")
    t.failed("a")
    assert t.blocked_for("a") is None
    t.failed("a")  # three within 10 s
    assert t.blocked_for("a") == pytest.approx(5.0)
    assert t.blocked_for("b") is None
    now[0] = 15.9
    assert t.blocked_for("a") == pytest.approx(0.1)
    now[0] = 16.0
    assert t.blocked_for("a") is None
    for i in range(100):
        t.failed(f"c{i}")
    assert len(t._fails) <= 4


# ---- tokens kept out of URLs and logs ---------------------------------------------------------------------------


def test_no_token_in_the_access_log(server: ServerProcess) -> None:
    """The page link puts the token in the fragment (never sent); a token in a query string (an old link, a
    mistaken client) is redacted in the access log; the API never takes a token from the query."""
    secret_q = "querysecret-" + "q" * 20
    secret_f = "fragmentsecret-" + "f" * 20
    with server.client() as anon:
        assert anon.get(f"/?autostart=1&prompt=cat#token={secret_f}").status_code == 200
        assert anon.get(f"/?prompt=cat&token={secret_q}").status_code == 200
        r = anon.get(f"/v1/sessions?token={TOKEN}")
        assert r.status_code == 401  # no query-string auth
        assert anon.get(f"/v1/sessions?access_token={TOKEN}").status_code == 401
    # the page's token handling lives in settings.js
    page = (Path(__file__).resolve().parents[2] / "client_web" / "settings.js").read_text()
    assert "location.hash" in page and "sessionStorage.setItem('lipar.token'" in page

    def logged() -> str | None:
        text = server.log_path.read_text(errors="replace")
        return text if "access_token=[redacted]" in text else None

    text = wait_until(logged, 10, "the access log lines")
    assert "GET /?autostart=1&prompt=cat HTTP/1.1" in text  # the page request, without a fragment
    assert "?prompt=cat&token=[redacted]" in text
    for secret in (secret_q, secret_f, TOKEN):
        assert secret not in text


# ---- the OpenAPI document declares what the API answers ---------------------------------------------------------


def test_openapi_declares_the_error_responses() -> None:
    """Every session operation declares its error statuses with the error envelope; 429 and 503 declare
    Retry-After; the 201 of a create links to the session's operations; the prompt's documented limits are the
    node's (LIPAR_MAX_PROMPT_CHARS, not blank); FastAPI's unused default 422 body is gone."""
    from server.main import create_app
    from server.settings import load_settings

    spec = create_app(load_settings(config="tiny-random", max_prompt_chars=321), client_dir=None).openapi()
    envelope = "#/components/schemas/ErrorResponse"
    expected = {
        ("/v1/sessions", "post"): {400, 401, 413, 422, 429, 503},
        ("/v1/sessions", "get"): {401, 429, 503},
        ("/v1/sessions/{session_id}", "get"): {401, 404, 429, 503},
        ("/v1/sessions/{session_id}", "patch"): {400, 401, 404, 409, 413, 422, 429, 503},
        ("/v1/sessions/{session_id}", "delete"): {401, 404, 429, 503},
        ("/v1/sessions/{session_id}/offer", "post"): {400, 401, 404, 409, 413, 422, 429, 503},
    }
    for (path, method), statuses in expected.items():
        responses = spec["paths"][path][method]["responses"]
        errors = {int(s) for s in responses if int(s) >= 400}
        assert errors == statuses, (path, method, errors)
        for s in statuses:
            schema = responses[str(s)]["content"]["application/json"]["schema"]
            assert schema == {"$ref": envelope}, (path, method, s)
        for s in (429, 503):
            assert responses[str(s)]["headers"]["Retry-After"]["schema"]["type"] == "integer"
    links = spec["paths"]["/v1/sessions"]["post"]["responses"]["201"]["links"]
    assert {link["operationId"] for link in links.values()} == {
        "get_session",
        "patch_session",
        "offer_session",
        "delete_session",
    }
    assert all(link["parameters"] == {"session_id": "$response.body#/id"} for link in links.values())
    schemas = spec["components"]["schemas"]
    assert "HTTPValidationError" not in schemas
    prompt = schemas["SessionCreate"]["properties"]["prompt"]
    assert prompt["maxLength"] == 321 and prompt["pattern"].startswith("[^")
    patch_prompt = next(
        a for a in schemas["SessionPatch"]["properties"]["prompt"]["anyOf"] if a["type"] == "string"
    )
    assert patch_prompt["maxLength"] == 321
    assert spec["paths"]["/readyz"]["get"].get("security", [{}])[0] == {}  # the token is optional there


def test_wrong_method_names_the_allowed_ones(server: ServerProcess) -> None:
    """A method a path of the API does not take is a 405 whose Allow lists every method of the path (not the
    page's static files' GET, HEAD, nor only the first route's)."""
    with server.client(TOKEN) as c:
        for method, path, allow in (
            ("PUT", "/v1/sessions", "GET, POST"),
            ("OPTIONS", "/v1/sessions/abc", "DELETE, GET, PATCH"),
            ("GET", "/v1/sessions/abc/offer", "POST"),
        ):
            r = c.request(method, path)
            assert r.status_code == 405 and r.headers["allow"] == allow, (method, path, r.headers)
            assert r.json()["error"]["code"] == "method_not_allowed"
            assert r.headers["x-content-type-options"] == "nosniff"
