"""/healthz (the process is up), /readyz (database, broker, storage answer), /metrics (Prometheus)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from api.metrics import REGISTRY
from api.schemas import HealthOut
from persistence.db import ping

router = APIRouter(tags=["health"])
READY_TIMEOUT_S = 5.0


@router.get("/healthz", response_model=HealthOut, summary="Liveness")
def healthz() -> HealthOut:
    return HealthOut(status="ok")


def _check_broker(request: Request) -> None:
    app = request.app.state.celery
    with app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, timeout=READY_TIMEOUT_S)


@router.get(
    "/readyz", response_model=HealthOut, responses={503: {"model": HealthOut}}, summary="Readiness of every dependency"
)
async def readyz(request: Request) -> JSONResponse:
    settings = request.app.state.settings
    probes = {
        "database": lambda: ping(settings.effective_database_url),
        "broker": lambda: _check_broker(request),
        "storage": request.app.state.store.ping,
    }
    components: dict[str, str] = {}
    for name, probe in probes.items():
        try:
            await asyncio.wait_for(run_in_threadpool(probe), READY_TIMEOUT_S)
            components[name] = "ok"
        except Exception as exc:  # any failure means not ready; say which
            components[name] = f"error: {type(exc).__name__}: {str(exc)[:200]}"
    ok = all(v == "ok" for v in components.values())
    body = HealthOut(status="ok" if ok else "unavailable", components=components)
    return JSONResponse(status_code=200 if ok else 503, content=body.model_dump())


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
def metrics() -> Response:
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
