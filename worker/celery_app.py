"""The Celery application (no torch here: the scanner is imported inside task bodies, i.e. in
the worker's child processes only).

Queues: `cpu` and `gpu` (a CUDA worker runs `dgmscan worker -Q gpu` with DGMSCAN_WORKER_DEVICE=cuda,
one process per GPU). Reliability: acks_late + reject_on_worker_lost so a crashed worker's scan is
re-delivered, prefetch 1 so a long scan never hoards queued ones, a broker visibility timeout
above the longest scan so Redis does not re-deliver a scan that is still running, soft/hard
time limits per scan.

`celery -A worker.celery_app worker` uses the module-level `app`.
"""

from __future__ import annotations

import resource
import signal

from celery import Celery
from celery.signals import worker_process_init
from kombu import Queue

from persistence.settings import Settings, get_settings

QUEUES: tuple[str, ...] = ("cpu", "gpu")
RUN_SCAN_TASK = "dgmscan.run_scan"
RUN_SHARD_TASK = "dgmscan.run_shard"
FINISH_FANOUT_TASK = "dgmscan.finish_fanout"
WEBHOOK_TASK = "dgmscan.deliver_webhook"


def create_app(settings: Settings | None = None) -> Celery:
    """A Celery app configured from `settings` (default: the environment)."""
    settings = settings or get_settings()
    app = Celery("dgmscan", broker=settings.effective_broker_url, backend=settings.result_backend)
    app.conf.update(
        include=["worker.tasks"],
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=settings.result_backend is None,
        task_default_queue="cpu",
        task_queues=[Queue(q) for q in QUEUES],
        task_soft_time_limit=settings.scan_soft_time_limit_s,
        task_time_limit=settings.scan_hard_time_limit_s,
        # Redis: a dead worker's unacknowledged scan is put back once visibility_timeout has passed, by a
        # sweep kombu runs every 10 s but (by default) acts on only every 10th time; acting on each one
        # (a cheap ZRANGE) bounds the redelivery delay by visibility_timeout + 10 s instead of + 100 s.
        broker_transport_options={
            "visibility_timeout": settings.broker_visibility_timeout_s,
            "unacked_restore_throttle": 1,
        },
        result_backend_transport_options={"visibility_timeout": settings.broker_visibility_timeout_s},
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        # a scan child that grew big (torch caches) is replaced now and then
        worker_max_tasks_per_child=50,
        # a child that ended a task holding over half its memory limit (e.g. after a MemoryError whose
        # traceback kept big tensors alive) is replaced, so the next scan starts with a clean heap
        worker_max_memory_per_child=(settings.worker_memory_limit_mb * 1024 // 2) or None,
    )
    return app


def apply_child_limits(settings: Settings) -> None:
    """Resource limits of one worker child (memory: RLIMIT_DATA, written files: RLIMIT_FSIZE).

    RLIMIT_DATA (not RLIMIT_AS) because CUDA reserves large PROT_NONE address ranges that RLIMIT_AS
    would count; an allocation past the limit raises MemoryError / torch's allocator error, which the
    job reports as the scan's failure reason while the worker lives on."""
    if settings.worker_memory_limit_mb > 0:
        limit = settings.worker_memory_limit_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
    if settings.worker_max_file_mb > 0:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit raises EFBIG instead of killing
        limit = settings.worker_max_file_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


@worker_process_init.connect
def _limit_worker_child(**_signal_kwargs: object) -> None:  # Celery passes sender/signal keywords
    apply_child_limits(get_settings())


app = create_app()
