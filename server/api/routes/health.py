"""Probes and metrics: ``/healthz`` (alive), ``/readyz`` (model loaded, workers up, store reachable), ``/metrics``.

Who sees what when ``LIPAR_API_TOKEN`` is set:

* ``/healthz``: everyone (status and node id).
* ``/readyz``: everyone gets the status code (200 ready, 503 not), ``status`` and ``progress`` (the workers'
  warm-up: stage, done of total, fraction; nothing secret); the details (``checks``: the store, each worker's
  state, pid, error text, load, warm-up) need ``Authorization: Bearer <token>``, unless
  ``LIPAR_READYZ_DETAILS_PUBLIC=true``. A missing or wrong token is never a 401 here, so container healthchecks
  and load balancers probe it without the secret.
* ``/metrics``: needs the bearer token (401 otherwise) unless ``LIPAR_METRICS_PUBLIC=true``.

Without a token configured everything is open, as the rest of the API is. Both routes compare tokens through
:func:`server.api.deps.check_bearer`, so wrong tokens count against the client's address like everywhere else
(neither route is an unthrottled way to guess the token; a throttled address gets no details, and 429 on
``/metrics``).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from server.api.deps import ManagerDep, MetricsDep, SettingsDep, check_bearer, require_token
from server.api.schemas import Health, WarmupProgress

router = APIRouter(tags=["operations"])

_bearer = HTTPBearer(auto_error=False, description="LIPAR_API_TOKEN, when the server sets one")
CredentialsDep = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


@router.get("/healthz", response_model=Health)
async def healthz(settings: SettingsDep) -> Health:
    """The process is alive (no dependency is checked)."""
    return Health(status="ok", node_id=settings.node_id)


@router.get("/readyz", response_model=Health, responses={503: {"model": Health}})
async def readyz(
    request: Request, settings: SettingsDep, manager: ManagerDep, credentials: CredentialsDep
) -> JSONResponse:
    """Ready to serve sessions: the workers' start is over and at least one worker has its model loaded and
    answers, and the store answers; else 503. A node of several devices stays ready while some of its workers
    restart or were given up (fewer slots; ``checks.workers`` says which), so one broken GPU does not idle the
    others; a node of one worker is ready exactly when it is.

    ``checks`` (with the bearer token when ``LIPAR_API_TOKEN`` is set, or ``LIPAR_READYZ_DETAILS_PUBLIC=true``;
    empty otherwise): the store, and per worker its ``state`` (``starting``, ``ready``, ``hung``,
    ``restarting``, ``failed``: given up after failing to start ``LIPAR_WORKER_MAX_START_FAILURES`` times in a
    row, ``stopped``), ``device``, ``sessions`` placed on it of its ``capacity``, ``pid``, ``last_error``,
    ``heartbeat_age_s``, its load over about the last second: ``busy`` (fraction of wall time it was not
    idle-waiting for work, 0..1) and ``blocks_per_s`` (null until its first report), ``memory_mb`` on a GPU
    (``allocated`` by its tensors, ``reserved`` by its allocator, ``used`` on the whole card, ``total``; null on a
    CPU), ``warmup``: ``{stage, done, total}`` of its start (``starting``, ``loading``,
    ``compiling`` n of m warm-up blocks and ``capturing`` n of m CUDA graphs on a GPU, ``measuring`` n of m timed
    blocks, ``ready``), and ``input_fps``: the input rate one session sustains on it, measured at its warm-up
    (null before; ``GET /v1/model`` gives everyone the minimum over the workers).

    ``progress`` (for everyone): the least advanced worker's warm-up stage with its ``done`` and ``total``, and
    ``fraction``, the workers' start done on average (0..1).
    """
    store_ok = await manager.store.ping()
    ready = store_ok and manager.pool.ready
    checks: dict[str, object] = {}
    if settings.readyz_details_public or check_bearer(request, settings, credentials) == "ok":
        checks = {
            "store": {"kind": manager.store.kind, "ok": store_ok},
            "workers": manager.pool.status(),
        }
    body = Health(
        status="ok" if ready else "unavailable",
        node_id=settings.node_id,
        checks=checks,
        progress=WarmupProgress.model_validate(manager.pool.progress()),
    )
    headers = None if ready else {"Retry-After": "5"}
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503, headers=headers)


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        401: {"description": "missing or wrong bearer token"},
        429: {"description": "too many wrong tokens from this address"},
    },
)
async def metrics(
    request: Request, m: MetricsDep, settings: SettingsDep, credentials: CredentialsDep
) -> Response:
    """Prometheus text exposition (names in :mod:`server.metrics`).

    With ``LIPAR_API_TOKEN`` set it needs the bearer token (Prometheus: ``authorization: {credentials_file:
    ...}``) unless ``LIPAR_METRICS_PUBLIC=true``.
    """
    if not settings.metrics_public:
        require_token(request, settings, credentials)
    return Response(m.render(), media_type="text/plain; version=0.0.4; charset=utf-8")
