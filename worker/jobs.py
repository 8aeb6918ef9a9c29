"""What a scan task does, as plain functions (the Celery tasks in worker/tasks.py only call these).

Flow (DESIGN.md "Runtime"): load the scan row by id → fetch the model and target hints from
object storage → run the scanner suite (Rawat et al. arXiv 2108.01644 defenses) with progress and
cancellation wired to the row → per-check rows, artifacts and reports (JSON, SARIF, HTML) →
verdict. Every step is idempotent: a finished scan is a no-op, rows are upserted, objects are
overwritten under deterministic keys.

The scanner (and so torch) is imported inside the functions: in a prefork worker that is the
child process, never the Celery parent.
"""

from __future__ import annotations

import json
import logging
import mimetypes
import re
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select, update

from persistence.db import session_scope
from persistence.models import ArtifactRow, CheckRow, Scan, utcnow
from persistence.repo import transition, upsert_artifact, upsert_check
from persistence.scanconfig import ScanConfigIn
from persistence.settings import Settings, get_settings
from persistence.status import ScanStatus, is_terminal
from persistence.storage import ObjectStore, get_store, scan_prefix

log = logging.getLogger("dgmscan.worker")

ARTIFACT_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]*(/[A-Za-z0-9][A-Za-z0-9._\-]*){0,7}$")
MODEL_SUFFIXES = (".safetensors", ".onnx")
CANCEL_POLL_S = 1.0


@dataclass(frozen=True)
class ScanInputs:
    """A snapshot of what a worker needs from the scan row (so no session stays open during the scan)."""

    scan_id: str
    tenant_id: str
    model_key: str
    model_suffix: str
    model_filename: str
    targets: list[dict[str, Any]]
    config: ScanConfigIn


def claim(db: str, scan_id: str) -> ScanInputs | None:
    """Mark the scan running (or cancel it if asked) and snapshot its inputs; None means: nothing to do."""
    with session_scope(db) as session:
        scan = session.get(Scan, scan_id)
        if scan is None:
            log.warning("scan %s does not exist (deleted?); dropping the task", scan_id)
            return None
        if is_terminal(scan.status):
            log.info("scan %s is already %s; redelivered task is a no-op", scan_id, scan.status)
            return None
        if scan.cancel_requested:
            transition(session, scan_id, ScanStatus.canceled, current_check=None)
            return None
        if scan.status == ScanStatus.queued.value and not transition(session, scan_id, ScanStatus.running):
            return None  # someone else moved it (a cancel) in between
        # status running: a re-delivery after a worker died mid-scan; start over (rows are upserted)
        session.execute(update(Scan).where(Scan.id == scan_id).values(attempts=Scan.attempts + 1))
        return ScanInputs(
            scan_id=scan.id,
            tenant_id=scan.tenant_id,
            model_key=scan.model_key,
            model_suffix=scan.model_suffix,
            model_filename=scan.model_filename,
            targets=list(scan.targets or []),
            config=ScanConfigIn.model_validate(scan.config or {}),
        )


def cancel_requested_probe(db: str, scan_id: str) -> Callable[[], bool]:
    """A cheap `should_cancel` for the scanner: reads the row at most once per second."""
    state = {"at": 0.0, "value": False}

    def should_cancel() -> bool:
        now = time.monotonic()
        if not state["value"] and now - state["at"] >= CANCEL_POLL_S:
            state["at"] = now
            with session_scope(db) as session:
                state["value"] = bool(session.scalar(select(Scan.cancel_requested).where(Scan.id == scan_id)))
        return state["value"]

    return should_cancel


def fetch_inputs(store: ObjectStore, inputs: ScanInputs, workdir: Path) -> tuple[Path, list[Path]]:
    """Download the model and targets under names we choose (the client's names are never paths)."""
    model_path = workdir / f"model{inputs.model_suffix}"
    store.download(inputs.model_key, model_path)
    target_dir = workdir / "targets"
    target_dir.mkdir()
    targets: list[Path] = []
    for i, t in enumerate(inputs.targets):
        # a readable, safe stem (the report shows it) + the allowlisted suffix the reader dispatches on
        stem = re.sub(r"[^A-Za-z0-9_-]+", "_", Path(t.get("filename", "")).stem)[:48].strip("_") or "target"
        p = target_dir / f"{i:02d}_{stem}{t['suffix']}"
        store.download(t["key"], p)
        targets.append(p)
    return model_path, targets


def scanner_config(cfg: ScanConfigIn, settings: Settings) -> Any:
    from scanner.checks.base import ScanConfig

    return ScanConfig(
        profile=cfg.profile,
        seed=cfg.seed,
        device=settings.worker_device,
        params={k: dict(v) for k, v in cfg.params.items()},
        budgets=dict(cfg.budgets),
        only=list(cfg.only) if cfg.only is not None else None,
        skip=list(cfg.skip),
    )


def model_hints(cfg: ScanConfigIn) -> dict[str, Any]:
    from scanner.specs import LatentSpec, OutputSpec

    hints: dict[str, Any] = {"architecture": cfg.architecture, "architecture_config": cfg.architecture_config}
    hints["latent"] = LatentSpec.from_dict(cfg.latent.model_dump()) if cfg.latent else None
    if cfg.output:
        d = cfg.output.model_dump()
        hints["output"] = OutputSpec(
            kind=d["kind"],
            shape=tuple(d["shape"]),
            value_range=tuple(d["value_range"]),
            final_activation=d["final_activation"],
        )
    else:
        hints["output"] = None
    return hints


def record_checks(db: str, scan_id: str, results: list[Any], positions: dict[str, int]) -> None:
    """Upsert one row per finished check (unique (scan_id, name))."""
    with session_scope(db) as session:
        for r in results:
            d = r.to_dict()
            upsert_check(
                session,
                scan_id,
                r.name,
                position=positions.get(r.name, 0),
                status=d["status"],
                score=d["score"],
                threshold=d["threshold"],
                summary=str(d["summary"])[:4000],
                duration_s=float(d["duration_s"] or 0.0),
            )


def progress_recorder(
    db: str, scan_id: str, session_obj: Any, positions: dict[str, int]
) -> Callable[[str, float], None]:
    """The scanner's progress callback: row progress/current check, and rows of the checks done so far."""
    recorded: set[str] = set()

    def progress(check_name: str, fraction: float) -> None:
        done = [r for n, r in session_obj.ctx.results.items() if n not in recorded]
        record_checks(db, scan_id, done, positions)
        recorded.update(r.name for r in done)
        with session_scope(db) as session:
            session.execute(
                update(Scan)
                .where(Scan.id == scan_id, Scan.status == ScanStatus.running.value)
                .values(
                    progress=round(float(fraction), 4),
                    current_check=None if check_name == "done" else check_name[:128],
                    updated_at=utcnow(),
                )
            )
            if check_name != "done":
                upsert_check(session, scan_id, check_name, position=positions.get(check_name, 0), status="running")

    return progress


def _media_type(name: str, declared: dict[str, str]) -> str:
    return declared.get(name) or mimetypes.guess_type(name)[0] or "application/octet-stream"


def upload_artifacts(
    db: str, store: ObjectStore, inputs: ScanInputs, artifacts_dir: Path, report: dict[str, Any]
) -> None:
    """Upload every file the checks wrote and record it; names are re-validated (checks are code we
    trust, but the names may embed parts of user file names)."""
    declared: dict[str, str] = {}
    descriptions: dict[str, str] = {}
    sanitized: set[str] = set()
    for check in report.get("checks", []):
        for a in check.get("artifacts", []):
            declared[a["name"]] = a.get("media_type", "")
            descriptions[a["name"]] = a.get("description", "")
            if check.get("family") == "sanitization" and a["name"].endswith(MODEL_SUFFIXES):
                sanitized.add(a["name"])
    prefix = scan_prefix(inputs.tenant_id, inputs.scan_id) + "artifacts/"
    with session_scope(db) as session:
        for path in sorted(p for p in artifacts_dir.rglob("*") if p.is_file()):
            name = path.relative_to(artifacts_dir).as_posix()
            if not ARTIFACT_NAME_RE.match(name) or ".." in name.split("/"):
                log.warning("scan %s: skipping artifact with an unsafe name %r", inputs.scan_id, name)
                continue
            media_type = _media_type(name, declared)
            key = prefix + name
            store.put_file(key, path, media_type)
            upsert_artifact(
                session,
                inputs.scan_id,
                name,
                object_key=key,
                media_type=media_type,
                size=path.stat().st_size,
                description=descriptions.get(name, "")[:1000],
                kind="sanitized_model" if name in sanitized else "check",
            )


def store_reports(
    store: ObjectStore, inputs: ScanInputs, report: dict[str, Any], artifacts_dir: Path
) -> dict[str, str]:
    """Store the JSON report (the source of truth) and its SARIF 2.1.0 and HTML renderings."""
    from scanner.reports import dump_json, render_html, render_sarif

    prefix = scan_prefix(inputs.tenant_id, inputs.scan_id) + "report."
    bodies = {
        "json": (dump_json(report), "application/json"),
        "sarif": (json.dumps(render_sarif(report), indent=2), "application/sarif+json"),
        "html": (render_html(report, artifacts_dir=artifacts_dir), "text/html; charset=utf-8"),
    }
    keys: dict[str, str] = {}
    for fmt, (body, media_type) in bodies.items():
        store.put_bytes(prefix + fmt, body.encode("utf-8"), media_type)
        keys[fmt] = prefix + fmt
    return keys


def restore_client_names(report: dict[str, Any], inputs: ScanInputs) -> None:
    """The scanner saw files under names we chose; the report shows the (sanitized) names the client sent."""
    report.setdefault("model", {})["file_name"] = inputs.model_filename
    for entry, target in zip(report.get("targets", []), inputs.targets, strict=False):
        entry["file_name"] = target.get("filename", entry.get("file_name"))


def finish(db: str, scan_id: str, status: ScanStatus, **values: Any) -> bool:
    with session_scope(db) as session:
        return transition(session, scan_id, status, **values)


FanoutDispatcher = Callable[[str, list[tuple[str, int, dict[str, Any]]]], None]


def shard_key(inputs: ScanInputs, check_name: str, index: int) -> str:
    return scan_prefix(inputs.tenant_id, inputs.scan_id) + f"shards/{check_name}/{index:04d}.json"


def run_scan_job(
    scan_id: str,
    settings: Settings | None = None,
    *,
    dispatch_fanout: FanoutDispatcher | None = None,
    shard_results: dict[str, list[str]] | None = None,
) -> str:
    """Run (or re-run after a crash) one scan to a terminal status. Returns the final status.

    With `dispatch_fanout`, shardable checks (Rawat et al.'s brute-force Closest-N) are handed to it
    as (check, index, shard) triples and the job returns "running": the chord callback calls this
    again with `shard_results` (check -> object keys of the partials), which are merged in place of
    running those checks.
    """
    settings = settings or get_settings()
    db = settings.effective_database_url
    inputs = claim(db, scan_id)
    if inputs is None:
        with session_scope(db) as session:
            scan = session.get(Scan, scan_id)
            return scan.status if scan is not None else "missing"

    from scanner.errors import ScannerError
    from scanner.suite import ScanCanceled, execute_scan, merge_shards, plan_scan

    store = get_store(settings)
    with tempfile.TemporaryDirectory(prefix=f"dgmscan-{scan_id}-") as tmp:
        workdir = Path(tmp)
        artifacts_dir = workdir / "artifacts"
        try:
            session_obj = open_inputs(settings, store, inputs, workdir, artifacts_dir)
            positions = {name: i for i, name in enumerate(session_obj.order)}
            if dispatch_fanout is not None and shard_results is None:
                fan = [(s.name, i, sh) for s in plan_scan(session_obj).fanout for i, sh in enumerate(s.shards or [])]
                if len(fan) >= 2:  # worth a round trip through the queue
                    with session_scope(db) as session:
                        for name in {name for name, _, _ in fan}:
                            upsert_check(session, scan_id, name, position=positions.get(name, 0), status="running")
                    dispatch_fanout(scan_id, fan)
                    return ScanStatus.running.value
            precomputed = {}
            for name, keys in (shard_results or {}).items():
                partials = [json.loads(b"".join(store.iter_chunks(k))) for k in sorted(keys)]
                precomputed[name] = merge_shards(session_obj, name, partials)
            report_obj = execute_scan(
                session_obj,
                progress=progress_recorder(db, scan_id, session_obj, positions),
                precomputed=precomputed,
            )
            report = report_obj.to_dict()
            restore_client_names(report, inputs)
            record_checks(db, scan_id, report_obj.checks, positions)
            upload_artifacts(db, store, inputs, artifacts_dir, report)
            report_keys = store_reports(store, inputs, report, artifacts_dir)
            finish(
                db,
                scan_id,
                ScanStatus.succeeded,
                verdict=str(report["verdict"]),
                progress=1.0,
                current_check=None,
                report_keys=report_keys,
                error=None,
            )
        except ScanCanceled as exc:
            record_checks(db, scan_id, exc.partial, {r.name: i for i, r in enumerate(exc.partial)})
            finish(db, scan_id, ScanStatus.canceled, current_check=None, error="canceled by request")
        except ScannerError as exc:  # bad target hint, bad config, unreadable file: the user's to fix
            finish(db, scan_id, ScanStatus.failed, current_check=None, error=f"{type(exc).__name__}: {exc}"[:4000])
        except Exception as exc:
            from celery.exceptions import SoftTimeLimitExceeded
            from sqlalchemy.exc import OperationalError

            if isinstance(exc, OperationalError):
                raise  # the database is down: the task retries the scan (worker/tasks.py), nothing to record
            if isinstance(exc, SoftTimeLimitExceeded):
                finish(db, scan_id, ScanStatus.failed, current_check=None, error="scan exceeded its time limit")
            elif _out_of_memory(exc):
                log.warning("scan %s ran out of memory: %r", scan_id, exc, exc_info=True)
                finish(db, scan_id, ScanStatus.failed, current_check=None, error=OUT_OF_MEMORY)
            else:
                log.exception("scan %s failed", scan_id)
                finish(
                    db, scan_id, ScanStatus.failed, current_check=None, error=f"internal error: {type(exc).__name__}"
                )
    with session_scope(db) as session:
        scan = session.get(Scan, scan_id)
        return scan.status if scan is not None else "missing"


OUT_OF_MEMORY = "scan exceeded the worker memory limit (DGMSCAN_WORKER_MEMORY_LIMIT_MB)"


def _out_of_memory(exc: BaseException) -> bool:
    """MemoryError, or torch's allocator refusing past RLIMIT_DATA (a RuntimeError)."""
    text = str(exc).lower()
    return isinstance(exc, MemoryError) or (
        isinstance(exc, RuntimeError) and ("can't allocate memory" in text or "not enough memory" in text)
    )


def open_inputs(settings: Settings, store: ObjectStore, inputs: ScanInputs, workdir: Path, artifacts_dir: Path) -> Any:
    """Fetch the scan's files and open a scanner session on them (model loaded, checks selected)."""
    from scanner.suite import open_scan

    model_path, targets = fetch_inputs(store, inputs, workdir)
    return open_scan(
        model_path,
        targets=targets,
        config=scanner_config(inputs.config, settings),
        artifacts_dir=artifacts_dir,
        should_cancel=cancel_requested_probe(settings.effective_database_url, inputs.scan_id),
        **model_hints(inputs.config),
    )


def run_shard_job(
    scan_id: str, check_name: str, index: int, shard: dict[str, Any], settings: Settings | None = None
) -> str | None:
    """Run one shard of a fanned-out check; store its JSON partial; return the object key (None if the
    scan is finished or being canceled). Idempotent: a re-run overwrites the same key."""
    settings = settings or get_settings()
    db = settings.effective_database_url
    with session_scope(db) as session:
        scan = session.get(Scan, scan_id)
        if scan is None or is_terminal(scan.status) or scan.cancel_requested:
            return None
        inputs = ScanInputs(
            scan_id=scan.id,
            tenant_id=scan.tenant_id,
            model_key=scan.model_key,
            model_suffix=scan.model_suffix,
            model_filename=scan.model_filename,
            targets=list(scan.targets or []),
            config=ScanConfigIn.model_validate(scan.config or {}),
        )
    from scanner.suite import run_check_shard

    store = get_store(settings)
    with tempfile.TemporaryDirectory(prefix=f"dgmscan-{scan_id}-shard-") as tmp:
        workdir = Path(tmp)
        session_obj = open_inputs(settings, store, inputs, workdir, workdir / "artifacts")
        partial = run_check_shard(session_obj, check_name, shard)
    key = shard_key(inputs, check_name, index)
    store.put_bytes(key, json.dumps(partial).encode(), "application/json")
    return key


def fail_scan(scan_id: str, error: str, settings: Settings | None = None) -> None:
    settings = settings or get_settings()
    finish(settings.effective_database_url, scan_id, ScanStatus.failed, current_check=None, error=error[:4000])


def scan_summary(db: str, scan_id: str) -> dict[str, Any] | None:
    """The webhook payload: the scan's outcome (no report body; the receiver fetches it with its key)."""
    with session_scope(db) as session:
        scan = session.get(Scan, scan_id)
        if scan is None:
            return None
        checks = session.scalars(select(CheckRow).where(CheckRow.scan_id == scan_id).order_by(CheckRow.position))
        n_artifacts = len(session.scalars(select(ArtifactRow.id).where(ArtifactRow.scan_id == scan_id)).all())
        return {
            "event": "scan.finished",
            "scan": {
                "id": scan.id,
                "status": scan.status,
                "verdict": scan.verdict,
                "error": scan.error,
                "model_sha256": scan.model_sha256,
                "finished_at": scan.finished_at.isoformat() if scan.finished_at else None,
                "checks": [{"name": c.name, "status": c.status} for c in checks],
                "artifacts": n_artifacts,
            },
        }
