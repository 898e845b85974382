"""``lipar-server``: the CLI and the app factory. Runs in the server process.

``lipar-server [--config FILE] [--host H] [--port P]`` reads ``LIPAR_`` settings (the flags override
``LIPAR_CONFIG``, ``LIPAR_HOST``, ``LIPAR_PORT``), validates them (exit code 2 with a clear message when bad),
and serves the API with uvicorn. With no configuration it runs the ``tiny`` preset on the CPU with the
in-memory store. The worker processes start with the app and load the model in the background: ``/healthz``
answers at once, ``/readyz`` once the model is loaded.

Every response carries the browser security headers (:class:`server.api.middleware.SecurityHeaders`); request
bodies are limited to ``LIPAR_MAX_BODY_BYTES`` whether or not they declare a length; the access log never shows
the value of a ``token``-like query parameter (:class:`RedactTokens`).
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import logging
import re
import sys
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.staticfiles import StaticFiles

from server.api import errors
from server.api.deps import AuthThrottle
from server.api.middleware import AllowedMethods, BodySizeLimit, SecurityHeaders
from server.api.routes import health, model, recordings, sessions, viewer
from server.api.schemas import ParamLimits
from server.metrics import Metrics
from server.rtc.codecs import apply_bitrate
from server.rtc.ice import configure_ice, rtc_configuration
from server.rtc.viewers import Viewers
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
    return RedisStore(settings.redis_url, settings.redis_timeout_s) if settings.redis_url else MemoryStore()


SHUTDOWN_STEP_S = 15.0  #: the longest one shutdown step may take before the next one runs anyway (s)


async def _bounded(step: Coroutine[Any, Any, None], seconds: float, what: str) -> None:
    """Run one shutdown step for at most ``seconds``; past that, cancel it (without waiting) and log."""
    task = asyncio.ensure_future(step)
    done, _ = await asyncio.wait({task}, timeout=seconds)
    if not done:
        task.cancel()
        log.warning("shutdown: %s took over %.0f s; going on without it", what, seconds)
    elif not task.cancelled() and task.exception() is not None:
        log.warning("shutdown: %s failed: %r", what, task.exception())


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
        liveness_timeout_s=settings.worker_liveness_timeout_s,
        max_start_failures=settings.worker_max_start_failures,
        backoff_max_s=settings.worker_restart_backoff_max_s,
        threads=settings.worker_threads,
    )
    manager = SessionManager(settings, store, pool, metrics)
    limits = ParamLimits.for_preset(settings.config, settings.max_prompt_chars, settings.recording_enabled)
    model_info = model.ModelInfoSource(settings.config, limits)
    viewers = Viewers(
        settings.viewers_per_session, rtc_configuration(settings.ice_servers), settings.video_codec
    )

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
            # Each step bounded: a step that hangs (a stuck peer or store call) must not keep the process, and the
            # workers' shared memory, from shutting down.
            await _bounded(viewers.close(), SHUTDOWN_STEP_S, "closing the viewers")
            await _bounded(manager.stop(), SHUTDOWN_STEP_S, "closing the sessions")
            await _bounded(pool.stop(), SHUTDOWN_STEP_S + 20.0, "stopping the workers")
            await _bounded(store.close(), SHUTDOWN_STEP_S, "closing the session store")

    app = FastAPI(
        title="LIPAR streaming video editing",
        version="1.0.0",
        summary="Live video editing with a causal video diffusion model over WebRTC",
        lifespan=lifespan,
    )
    app.state.settings, app.state.metrics, app.state.manager = settings, metrics, manager
    app.state.model_info = model_info
    app.state.limits = limits
    app.state.viewers = viewers
    app.state.auth_throttle = AuthThrottle(
        settings.auth_fail_limit, settings.auth_fail_window_s, settings.auth_block_s
    )
    errors.install(app)
    app.include_router(health.router)
    app.include_router(sessions.router)
    app.include_router(recordings.router)
    app.include_router(model.router)
    app.include_router(viewer.router)
    # innermost: CORS preflights come first
    app.add_middleware(
        AllowedMethods, paths=lambda: {p: ops.keys() for p, ops in app.openapi()["paths"].items()}
    )
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "PATCH", "DELETE", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type"],
        )
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(SecurityHeaders, connect_src=settings.csp_connect_src)  # outermost: also on 413s
    _document_api(app, settings)
    if client_dir is not None and client_dir.is_dir():
        app.include_router(viewer.page_router(client_dir))  # /view/{id}, before the static files
        app.mount("/", StaticFiles(directory=client_dir, html=True, check_dir=False), name="client")
    return app


#: Routes that take the bearer token but answer without it too (``/readyz``: the status for everyone, the
#: details with the token); OpenAPI marks their security optional.
_OPTIONAL_TOKEN = ("/readyz",)


def _document_api(app: FastAPI, settings: Settings) -> None:
    """Make ``/openapi.json`` say what the API does: this node's prompt length limit (``LIPAR_MAX_PROMPT_CHARS``)
    is the prompt's ``maxLength``, FastAPI's default 422 body (``HTTPValidationError``, which this API never
    sends: its 422s are the error envelope) is dropped where FastAPI added it, and the optional token of
    :data:`_OPTIONAL_TOKEN` is marked optional."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        spec = generate()
        default_422 = "#/components/schemas/HTTPValidationError"
        for operations in spec.get("paths", {}).values():
            for operation in operations.values():
                responses = operation.get("responses", {})
                body = responses.get("422", {}).get("content", {}).get("application/json", {})
                if body.get("schema", {}).get("$ref") == default_422:
                    del responses["422"]
        for path in _OPTIONAL_TOKEN:  # the token is optional there: it only adds detail
            operation = spec.get("paths", {}).get(path, {}).get("get")
            if operation is not None and operation.get("security"):
                operation["security"] = [{}, *operation["security"]]
        if default_422 not in json.dumps(spec.get("paths", {})):
            for name in ("HTTPValidationError", "ValidationError"):
                spec.get("components", {}).get("schemas", {}).pop(name, None)
        for name, model_schema in spec.get("components", {}).get("schemas", {}).items():
            if not name.startswith(("SessionCreate", "SessionPatch")):
                continue
            prompt = model_schema.get("properties", {}).get("prompt", {})
            for alt in prompt.get("anyOf", [prompt]):
                if alt.get("type") == "string":
                    alt["maxLength"] = min(
                        alt.get("maxLength", settings.max_prompt_chars), settings.max_prompt_chars
                    )
        app.openapi_schema = spec
        return spec

    app.openapi = openapi  # type: ignore[method-assign]


_SECRET_QUERY = re.compile(r"(?i)([?&;](?:token|access_token|api_key|apikey|key|secret|auth)=)[^&;#\s\"]*")


class RedactTokens(logging.Filter):
    """Replace the value of ``token``-like query parameters in a log record's message and arguments by
    ``[redacted]`` (the access log prints every request's path with its query string)."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Redact in place; never drops the record."""
        if isinstance(record.msg, str):
            record.msg = _SECRET_QUERY.sub(r"\1[redacted]", record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(
                _SECRET_QUERY.sub(r"\1[redacted]", a) if isinstance(a, str) else a for a in record.args
            )
        return True


def uvicorn_log_config() -> dict[str, Any]:
    """uvicorn's logging configuration with :class:`RedactTokens` on its handlers (the access log's prints every
    request's path with its query string)."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config.setdefault("filters", {})["redact_tokens"] = {"()": RedactTokens}
    for handler in config["handlers"].values():
        handler.setdefault("filters", []).append("redact_tokens")
    return config


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
        log_config=uvicorn_log_config(),
        timeout_graceful_shutdown=10,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
