"""Probes and metrics: ``/healthz`` (alive), ``/readyz`` (model loaded, workers up, store reachable), ``/metrics``."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from server.api.deps import ManagerDep, MetricsDep, SettingsDep
from server.api.schemas import Health

router = APIRouter(tags=["operations"])


@router.get("/healthz", response_model=Health)
async def healthz(settings: SettingsDep) -> Health:
    """The process is alive (no dependency is checked)."""
    return Health(status="ok", node_id=settings.node_id)


@router.get("/readyz", response_model=Health, responses={503: {"model": Health}})
async def readyz(request: Request, settings: SettingsDep, manager: ManagerDep) -> JSONResponse:
    """Ready to serve sessions: every worker has its model loaded and the store answers; else 503.

    Each worker entry also carries its load over about the last second: ``busy`` (fraction of wall time it was
    not idle-waiting for work, 0..1) and ``blocks_per_s`` (null until its first report).
    """
    store_ok = await manager.store.ping()
    workers = manager.pool.status()
    ready = store_ok and manager.pool.ready
    body = Health(
        status="ok" if ready else "unavailable",
        node_id=settings.node_id,
        checks={"store": {"kind": manager.store.kind, "ok": store_ok}, "workers": workers},
    )
    headers = None if ready else {"Retry-After": "5"}
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503, headers=headers)


@router.get("/metrics", response_class=Response)
async def metrics(m: MetricsDep) -> Response:
    """Prometheus text exposition (names in :mod:`server.metrics`)."""
    return Response(m.render(), media_type="text/plain; version=0.0.4; charset=utf-8")
