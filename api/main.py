"""The FastAPI application: `create_app()` (uvicorn factory: `uvicorn api.main:create_app --factory`)."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import InterfaceError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import ApiError
from api.metrics import LATENCY, REQUESTS
from api.routes import health, scans
from persistence.settings import Settings, get_settings
from persistence.storage import S3ObjectStore, StorageError, get_store

log = logging.getLogger("dgmscan.api")

DESCRIPTION = """Scan deep generative models (GAN generators, VAE decoders) for training-time backdoors
(Rawat et al., "The Devil is in the GAN", arXiv 2108.01644).

Authenticate with `Authorization: Bearer <API key>` (or `X-API-Key`). Keys carry the scopes
`scans:read` and `scans:write`; a tenant sees only its own scans.
"""


class MetricsMiddleware:
    """Pure ASGI middleware (does not buffer streamed bodies) recording per-route counts and latency."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = {"code": 500}

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            REQUESTS.labels(scope["method"], route, str(status["code"])).inc()
            LATENCY.labels(scope["method"], route).observe(time.perf_counter() - start)


def create_app(settings: Settings | None = None, *, embedded_worker: bool | None = None) -> FastAPI:
    """Build the app. With no broker configured (embedded defaults) it runs a Celery worker in-process
    unless `embedded_worker=False`."""
    settings = settings or get_settings()
    run_worker = settings.embedded if embedded_worker is None else embedded_worker

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from worker.celery_app import create_app as create_celery

        if settings.effective_database_url.startswith("sqlite"):
            from persistence.db import upgrade_to_head

            settings.data_dir.mkdir(parents=True, exist_ok=True)
            upgrade_to_head(settings.effective_database_url)
        store = get_store(settings)
        if isinstance(store, S3ObjectStore):
            store.ensure_bucket()
        app.state.store = store
        app.state.celery = create_celery(settings)
        worker = None
        if run_worker:
            from worker.embedded import EmbeddedWorker

            worker = EmbeddedWorker(app.state.celery)
            worker.start()
        try:
            yield
        finally:
            if worker is not None:
                worker.stop()

    app = FastAPI(
        title="dgmscan",
        version="1.0.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        responses={500: {"description": "internal error"}},
    )
    app.state.settings = settings
    app.add_middleware(MetricsMiddleware)
    app.include_router(health.router)
    app.include_router(scans.router)

    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(status_code=exc.status, content=exc.body(), headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        detail: Any = [{k: v for k, v in e.items() if k in ("loc", "msg", "type")} for e in exc.errors()]
        err = ApiError(422, "invalid_request", "request validation failed", detail)
        return JSONResponse(status_code=422, content=err.body())

    # a dependency down (database restarting, object store unreachable) is a 503 to retry, not a 500
    @app.exception_handler(OperationalError)
    @app.exception_handler(InterfaceError)
    async def _database_error(_request: Request, exc: Exception) -> JSONResponse:
        log.warning("database unavailable: %s", type(exc).__name__)
        err = ApiError(503, "database_unavailable", "the database is unavailable; retry shortly")
        return JSONResponse(status_code=503, content=err.body(), headers={"Retry-After": "5"})

    @app.exception_handler(StorageError)
    async def _storage_error(_request: Request, exc: StorageError) -> JSONResponse:
        err = ApiError(503, "storage_unavailable", "the object store is unavailable; retry shortly")
        return JSONResponse(status_code=503, content=err.body(), headers={"Retry-After": "5"})

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse(
            status_code=exc.status_code,
            content=ApiError(exc.status_code, code, str(exc.detail)).body(),
            headers=getattr(exc, "headers", None),
        )

    return app
