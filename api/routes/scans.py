"""/v1/scans: create (streamed multipart upload), read, list, report, artifacts, cancel.

Every query is scoped to the caller's tenant; another tenant's scan is a 404, like a missing one.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, RedirectResponse, Response, StreamingResponse
from pydantic import ValidationError
from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session, joinedload

from api.deps import DbSession, ReadPrincipal, SettingsDep, StoreDep, WritePrincipal
from api.errors import ApiError, not_found
from api.metrics import SCANS_CREATED, UPLOAD_BYTES
from api.schemas import (
    ArtifactList,
    ArtifactOut,
    CheckOut,
    ErrorOut,
    ModelOut,
    ScanLinks,
    ScanOut,
    ScanPage,
    ScanSummaryOut,
    TargetOut,
)
from api.uploads import MODEL_SUFFIXES, TARGET_SUFFIXES, ParsedUpload, receive_upload, safe_suffix
from persistence.db import session_factory
from persistence.models import ArtifactRow, Scan
from persistence.repo import transition
from persistence.scanconfig import ScanConfigIn
from persistence.status import ScanStatus, Verdict, is_terminal
from persistence.storage import ObjectStore
from worker.celery_app import RUN_SCAN_TASK

log = logging.getLogger("dgmscan.api")
router = APIRouter(prefix="/v1/scans", tags=["scans"])
ARTIFACT_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]*(/[A-Za-z0-9][A-Za-z0-9._\-]*){0,7}$")
REPORT_MEDIA = {"json": "application/json", "sarif": "application/sarif+json", "html": "text/html; charset=utf-8"}
# the HTML report is ours, but shows user-supplied names: forbid scripts and remote loads anyway
HTML_CSP = "default-src 'none'; img-src data: 'self'; style-src 'unsafe-inline'; frame-ancestors 'none'"
ERRORS = {401: {"model": ErrorOut}, 403: {"model": ErrorOut}, 404: {"model": ErrorOut}}


def scan_out(scan: Scan, request: Request) -> ScanOut:
    base = str(request.url_for("get_scan", scan_id=scan.id))
    return ScanOut(
        id=scan.id,
        status=ScanStatus(scan.status),
        verdict=Verdict(scan.verdict) if scan.verdict else None,
        progress=min(max(scan.progress, 0.0), 1.0),
        current_check=scan.current_check,
        profile=scan.profile,
        queue=scan.queue,
        cancel_requested=scan.cancel_requested,
        error=scan.error,
        model=ModelOut(filename=scan.model_filename, sha256=scan.model_sha256, size_bytes=scan.model_size),
        targets=[
            TargetOut(filename=t["filename"], sha256=t["sha256"], size_bytes=t["size"]) for t in (scan.targets or [])
        ],
        checks=[
            CheckOut(
                name=c.name,
                status=c.status,  # type: ignore[arg-type]
                score=c.score,
                threshold=c.threshold,
                summary=c.summary,
                duration_s=c.duration_s,
            )
            for c in scan.checks
        ],
        created_at=scan.created_at,
        started_at=scan.started_at,
        finished_at=scan.finished_at,
        links=ScanLinks(self=base, report=base + "/report", artifacts=base + "/artifacts"),
    )


def load_scan(db: Session, tenant_id: str, scan_id: str, *, with_children: bool = False) -> Scan:
    if not re.fullmatch(r"[0-9a-f]{32}", scan_id):
        raise not_found()
    stmt = select(Scan).where(Scan.id == scan_id, Scan.tenant_id == tenant_id)
    if with_children:
        stmt = stmt.options(joinedload(Scan.checks))  # one round trip for the scan and its checks
    scan = db.scalars(stmt).unique().first()
    if scan is None:
        raise not_found()
    return scan


def _commit_scan(settings_url: str, scan: Scan) -> None:
    with session_factory(settings_url)() as db:
        db.add(scan)
        db.commit()


def _discard(upload: ParsedUpload, db_url: str) -> None:
    """Remove what a failed request stored; keep content keys other scans reference."""
    with session_factory(db_url)() as db:
        for blob in upload.blobs:
            if blob.created_final and blob.final_key:
                in_use = db.scalar(select(Scan.id).where(Scan.model_key == blob.final_key).limit(1))
                if in_use:
                    blob.created_final = False
            blob.discard()


@router.post(
    "",
    status_code=202,
    response_model=ScanOut,
    responses={**ERRORS, 413: {"model": ErrorOut}, 415: {"model": ErrorOut}, 422: {"model": ErrorOut}},
    summary="Upload a model (and target hints) and queue a scan",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["model"],
                        "properties": {
                            "model": {"type": "string", "format": "binary", "description": "the checkpoint"},
                            "targets": {
                                "type": "array",
                                "items": {"type": "string", "format": "binary"},
                                "description": "target hints (images or WAV), repeatable",
                            },
                            "config": {
                                "type": "string",
                                "description": "JSON matching ScanConfigIn",
                                "contentMediaType": "application/json",
                            },
                        },
                    }
                }
            },
        }
    },
)
async def create_scan(request: Request, principal: WritePrincipal, settings: SettingsDep, store: StoreDep) -> Response:
    """The body is streamed to object storage while hashed; nothing is kept if anything fails."""
    upload = await receive_upload(request, settings, store, principal.tenant_id)
    db_url = settings.effective_database_url
    try:
        try:
            config = ScanConfigIn.model_validate_json(upload.config_json) if upload.config_json else ScanConfigIn()
        except ValidationError as exc:
            raise ApiError(
                422,
                "invalid_config",
                "the config part is not valid",
                exc.errors(include_url=False, include_input=False),
            ) from None
        await run_in_threadpool(lambda: [b.finalize() for b in upload.blobs])
        scan = Scan(
            tenant_id=principal.tenant_id,
            status=ScanStatus.queued.value,
            profile=config.profile,
            queue=config.effective_queue,
            config=config.model_dump(mode="json", exclude={"callback_url"}),
            callback_url=str(config.callback_url) if config.callback_url else None,
            model_key=upload.model.final_key,
            model_sha256=upload.model.sha256,
            model_size=upload.model.size,
            model_filename=upload.model.filename,
            model_suffix=safe_suffix(upload.model.filename, MODEL_SUFFIXES, ".bin"),
            targets=[
                {
                    "key": t.final_key,
                    "sha256": t.sha256,
                    "size": t.size,
                    "filename": t.filename,
                    "suffix": safe_suffix(t.filename, TARGET_SUFFIXES, ".bin"),
                }
                for t in upload.targets
            ],
        )
        # commit BEFORE enqueueing: a worker must always find the row
        await run_in_threadpool(_commit_scan, db_url, scan)
    except BaseException:
        await run_in_threadpool(_discard, upload, db_url)
        raise
    UPLOAD_BYTES.inc(sum(b.size for b in upload.blobs))
    SCANS_CREATED.labels(profile=scan.profile).inc()
    try:
        await run_in_threadpool(request.app.state.celery.send_task, RUN_SCAN_TASK, args=[scan.id], queue=scan.queue)
    except Exception as exc:
        log.exception("could not enqueue scan %s", scan.id)

        def _mark_failed() -> None:
            with session_factory(db_url)() as db:
                transition(db, scan.id, ScanStatus.failed, error="could not enqueue the scan (broker unavailable)")
                db.commit()

        await run_in_threadpool(_mark_failed)
        raise ApiError(503, "broker_unavailable", "the scan was stored but could not be queued; retry") from exc

    def _reload() -> ScanOut:
        with session_factory(db_url)() as db:
            return scan_out(load_scan(db, principal.tenant_id, scan.id, with_children=True), request)

    out = await run_in_threadpool(_reload)
    return JSONResponse(status_code=202, content=out.model_dump(mode="json"), headers={"Location": out.links.self})


@router.get("", response_model=ScanPage, responses=ERRORS, summary="List the tenant's scans, newest first")
def list_scans(
    db: DbSession,
    principal: ReadPrincipal,
    status: Annotated[ScanStatus | None, Query()] = None,
    verdict: Annotated[Verdict | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> ScanPage:
    stmt = select(Scan).where(Scan.tenant_id == principal.tenant_id)
    if status is not None:
        stmt = stmt.where(Scan.status == status.value)
    if verdict is not None:
        stmt = stmt.where(Scan.verdict == verdict.value)
    if cursor:
        created, last_id = _decode_cursor(cursor)
        stmt = stmt.where(or_(Scan.created_at < created, and_(Scan.created_at == created, Scan.id < last_id)))
    rows = db.scalars(stmt.order_by(Scan.created_at.desc(), Scan.id.desc()).limit(limit + 1)).all()
    more = len(rows) > limit
    rows = rows[:limit]
    items = [
        ScanSummaryOut(
            id=s.id,
            status=ScanStatus(s.status),
            verdict=Verdict(s.verdict) if s.verdict else None,
            progress=min(max(s.progress, 0.0), 1.0),
            profile=s.profile,
            model_sha256=s.model_sha256,
            model_filename=s.model_filename,
            created_at=s.created_at,
            finished_at=s.finished_at,
        )
        for s in rows
    ]
    return ScanPage(items=items, next_cursor=_encode_cursor(rows[-1]) if more and rows else None)


def _encode_cursor(scan: Scan) -> str:
    return base64.urlsafe_b64encode(f"{scan.created_at.isoformat()}|{scan.id}".encode()).decode()


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        created, last_id = base64.urlsafe_b64decode(cursor.encode()).decode().split("|", 1)
        return datetime.fromisoformat(created), last_id
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise ApiError(422, "invalid_cursor", "cursor is not one this API returned") from None


@router.get("/{scan_id}", response_model=ScanOut, responses=ERRORS, summary="Status, progress, verdict, checks")
def get_scan(scan_id: str, db: DbSession, principal: ReadPrincipal, request: Request) -> ScanOut:
    return scan_out(load_scan(db, principal.tenant_id, scan_id, with_children=True), request)


@router.delete(
    "/{scan_id}",
    status_code=202,
    response_model=ScanOut,
    responses={**ERRORS, 409: {"model": ErrorOut}},
    summary="Cancel a scan (a running scan stops between checks)",
)
def cancel_scan(scan_id: str, db: DbSession, principal: WritePrincipal, request: Request) -> ScanOut:
    scan = load_scan(db, principal.tenant_id, scan_id)
    if is_terminal(scan.status):
        raise ApiError(409, "already_finished", f"scan is already {scan.status}")
    scan.cancel_requested = True
    db.flush()
    if scan.status == ScanStatus.queued.value:
        transition(db, scan.id, ScanStatus.canceled, error="canceled by request")
    db.commit()
    db.expire_all()
    return scan_out(load_scan(db, principal.tenant_id, scan_id, with_children=True), request)


def _stream(store: ObjectStore, key: str, media_type: str, headers: dict[str, str]) -> StreamingResponse:
    return StreamingResponse(store.iter_chunks(key), media_type=media_type, headers=headers)


@router.get(
    "/{scan_id}/report",
    responses={**ERRORS, 409: {"model": ErrorOut}, 200: {"content": {m: {} for m in REPORT_MEDIA.values()}}},
    summary="The scan report: JSON (source of truth), SARIF 2.1.0 or HTML",
)
def get_report(
    scan_id: str,
    db: DbSession,
    principal: ReadPrincipal,
    store: StoreDep,
    format: Annotated[Literal["json", "sarif", "html"], Query()] = "json",  # noqa: A002 - the API's parameter name
) -> Response:
    scan = load_scan(db, principal.tenant_id, scan_id)
    key = (scan.report_keys or {}).get(format)
    if key is None:
        raise ApiError(409, "report_not_ready", f"no {format} report: the scan is {scan.status}")
    headers = {"X-Content-Type-Options": "nosniff"}
    if format == "html":
        headers["Content-Security-Policy"] = HTML_CSP
    else:
        headers["Content-Disposition"] = f'inline; filename="dgmscan-{scan.id}.{format}"'
    return _stream(store, key, REPORT_MEDIA[format], headers)


@router.get("/{scan_id}/artifacts", response_model=ArtifactList, responses=ERRORS, summary="Files the checks wrote")
def list_artifacts(scan_id: str, db: DbSession, principal: ReadPrincipal, request: Request) -> ArtifactList:
    scan = load_scan(db, principal.tenant_id, scan_id)
    rows = db.scalars(select(ArtifactRow).where(ArtifactRow.scan_id == scan.id).order_by(ArtifactRow.name)).all()
    return ArtifactList(
        items=[
            ArtifactOut(
                name=a.name,
                media_type=a.media_type,
                size_bytes=a.size,
                description=a.description,
                kind=a.kind,
                url=str(request.url_for("get_artifact", scan_id=scan.id, name=a.name)),
            )
            for a in rows
        ]
    )


def _serve_artifact(store: ObjectStore, settings_expiry: int, a: ArtifactRow) -> Response:
    filename = a.name.rsplit("/", 1)[-1]
    url = store.presigned_get_url(a.object_key, filename=filename, expiry_s=settings_expiry)
    if url is not None:
        return RedirectResponse(url, status_code=307)
    headers = {"Content-Disposition": f'attachment; filename="{filename}"', "X-Content-Type-Options": "nosniff"}
    return _stream(store, a.object_key, a.media_type, headers)


@router.get(
    "/{scan_id}/artifacts/{name:path}",
    responses={**ERRORS, 307: {"description": "redirect to a presigned object-store URL"}},
    summary="Download one artifact (presigned redirect on S3, streamed from local disk)",
)
def get_artifact(
    scan_id: str, name: str, db: DbSession, principal: ReadPrincipal, store: StoreDep, settings: SettingsDep
) -> Response:
    if len(name) > 256 or not ARTIFACT_NAME_RE.match(name) or ".." in name.split("/"):
        raise not_found("artifact")
    scan = load_scan(db, principal.tenant_id, scan_id)
    a = db.scalar(select(ArtifactRow).where(ArtifactRow.scan_id == scan.id, ArtifactRow.name == name))
    if a is None:
        raise not_found("artifact")
    return _serve_artifact(store, settings.presign_expiry_s, a)


@router.get(
    "/{scan_id}/sanitized-model",
    responses={**ERRORS, 307: {"description": "redirect to a presigned object-store URL"}},
    summary="Download the sanitized checkpoint a sanitization check produced",
)
def get_sanitized_model(
    scan_id: str, db: DbSession, principal: ReadPrincipal, store: StoreDep, settings: SettingsDep
) -> Response:
    scan = load_scan(db, principal.tenant_id, scan_id)
    a = db.scalar(
        select(ArtifactRow)
        .where(ArtifactRow.scan_id == scan.id, ArtifactRow.kind == "sanitized_model")
        .order_by(ArtifactRow.name)
        .limit(1)
    )
    if a is None:
        raise not_found("sanitized model")
    return _serve_artifact(store, settings.presign_expiry_s, a)
