"""The embedded worker: a real Celery worker (solo pool) on a thread of the API process.

Used by `dgmscan serve` when no broker is configured: the broker is kombu's in-memory
transport, and the tasks are exactly the production ones (worker.tasks). Scans still queued
when the process stopped are re-enqueued at start (the memory broker forgets them).
"""

from __future__ import annotations

import logging
import threading

from celery import Celery
from celery.worker import WorkController
from sqlalchemy import select

from persistence.db import session_scope
from persistence.models import Scan
from persistence.status import ScanStatus
from worker.celery_app import QUEUES, RUN_SCAN_TASK

log = logging.getLogger("dgmscan.worker")


class _ReadyWorkController(WorkController):
    """A WorkController that signals when its consumer is ready (so start() can wait for it)."""

    def __init__(self, *args, ready: threading.Event, **kwargs) -> None:  # noqa: ANN002 - celery's signature
        self._ready = ready
        super().__init__(*args, **kwargs)

    def on_consumer_ready(self, consumer) -> None:  # noqa: ANN001 - celery's signature
        self._ready.set()


class EmbeddedWorker:
    def __init__(self, app: Celery) -> None:
        self.app = app
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._controller: WorkController | None = None

    def start(self, timeout_s: float = 30.0) -> None:
        import worker.tasks  # noqa: F401 - registers the tasks on the app

        self.app.finalize()
        self.app.set_current()
        self._controller = _ReadyWorkController(
            app=self.app,
            ready=self._ready,
            pool="solo",
            concurrency=1,
            queues=list(QUEUES),
            without_heartbeat=True,
            without_mingle=True,
            without_gossip=True,
            loglevel="WARNING",
            hostname="embedded@dgmscan",
        )
        self._thread = threading.Thread(target=self._controller.start, name="dgmscan-embedded-worker", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout_s):
            raise RuntimeError("the embedded Celery worker did not start")
        self.requeue_pending()

    def requeue_pending(self) -> None:
        """Re-enqueue scans left queued or running by a previous process (tasks are idempotent)."""
        with session_scope() as session:
            pending = session.execute(
                select(Scan.id, Scan.queue).where(Scan.status.in_([ScanStatus.queued.value, ScanStatus.running.value]))
            ).all()
        for scan_id, queue in pending:
            self.app.send_task(RUN_SCAN_TASK, args=[scan_id], queue=queue)
        if pending:
            log.info("re-enqueued %d unfinished scan(s)", len(pending))

    def stop(self, timeout_s: float = 10.0) -> None:
        if self._controller is not None:
            self._controller.stop(in_sighandler=False)
        if self._thread is not None:
            self._thread.join(timeout_s)
