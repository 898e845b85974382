"""``lipar-server``: the CLI and the app factory. Runs in the server process.

``lipar-server [--config FILE] [--host H] [--port P]`` reads ``LIPAR_`` settings (the flags override
``LIPAR_CONFIG``, ``LIPAR_HOST``, ``LIPAR_PORT``), validates them (exit code 2 with a clear message when bad),
and serves the API with uvicorn. With no configuration it runs the ``tiny`` preset on the CPU with the
in-memory store. The worker processes start with the app and load the model in the background: ``/healthz``
answers at once, ``/readyz`` once the model is loaded.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.staticfiles import StaticFiles

from server.api import errors
from server.api.middleware import BodySizeLimit
from server.api.routes import health, model, sessions
from server.metrics import Metrics
from server.rtc.codecs import apply_bitrate
from server.rtc.ice import configure_ice
from server.sessions.manager import SessionManager
from server.sessions.memory_store import MemoryStore
from server.sessions.redis_store import RedisStore
from server.sessions.store import SessionStore
from server.settings import Settings, SettingsError, check_model_config, load_settings
from server.worker.editors import DEFAULT_FACTORY
from server.worker.pool import WorkerPool

log = logging.getLogger("server")

CLIENT_DIR = Path(__file__).resolve().parent.parent / "client_web"


def make_store(settings: Settings) -> SessionStore:
    """Redis when ``LIPAR_REDIS_URL`` is set, else in memory."""
    return RedisStore(settings.redis_url) if settings.redis_url else MemoryStore()


def create_app(
    settings: Settings | None = None,
    *,
    editor_factory: str = DEFAULT_FACTORY,
    client_dir: Path | None = CLIENT_DIR,
) -> FastAPI:
    """Build the app.

    ``editor_factory`` is the import path of the worker's editor factory (the production one by default);
    ``client_dir`` is served at ``/`` when it exists (the web page; the API never depends on it).
    """
    settings = settings or load_settings()
    metrics = Metrics()
    store = make_store(settings)
    pool = WorkerPool(
        settings.config,
        settings.devices,
        settings.sessions_per_worker,
        metrics,
        factory=editor_factory,
        log_level=settings.log_level,
        start_timeout_s=settings.worker_start_timeout_s,
    )
    manager = SessionManager(settings, store, pool, metrics)
    model_info = model.ModelInfoSource(settings.config)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        model_info.start()  # in a thread: the prompts the model knows, for GET /v1/model
        configure_ice(settings.rtc_host_addresses, settings.rtc_port_range)
        apply_bitrate(settings.video_bitrate)
        await store.start()
        await pool.start()
        await manager.start()
        log.info(
            "node %s serving preset %s on %s with the %s store",
            settings.node_id,
            settings.config,
            ",".join(settings.devices),
            store.kind,
        )
        try:
            yield
        finally:
            await manager.stop()
            await pool.stop()
            await store.close()

    app = FastAPI(
        title="LIPAR streaming video editing",
        version="1.0.0",
        summary="Live video editing with a causal video diffusion model over WebRTC",
        lifespan=lifespan,
    )
    app.state.settings, app.state.metrics, app.state.manager = settings, metrics, manager
    app.state.model_info = model_info
    errors.install(app)
    app.include_router(health.router)
    app.include_router(sessions.router)
    app.include_router(model.router)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "PATCH", "DELETE", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type"],
        )
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    if client_dir is not None and client_dir.is_dir():
        app.mount("/", StaticFiles(directory=client_dir, html=True, check_dir=False), name="client")
    return app


def main(argv: list[str] | None = None) -> int:
    """CLI entry point (console script ``lipar-server``)."""
    parser = argparse.ArgumentParser(prog="lipar-server", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", help="model preset name or YAML preset path (LIPAR_CONFIG)")
    parser.add_argument("--host", help="bind address (LIPAR_HOST)")
    parser.add_argument("--port", type=int, help="port (LIPAR_PORT)")
    args = parser.parse_args(argv)
    overrides = {
        k: v for k, v in (("config", args.config), ("host", args.host), ("port", args.port)) if v is not None
    }
    try:
        settings = load_settings(**overrides)
        check_model_config(settings.config)
    except SettingsError as e:
        sys.stderr.write(f"lipar-server: {e}\n")
        return 2
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    import uvicorn

    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        timeout_graceful_shutdown=10,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
