"""Scan lifecycle: the explicit transition map and the vocabulary of statuses and verdicts.

queued ──> running ──> succeeded | failed | canceled
   └─────────────────> canceled | failed
running ──> queued   (a worker died; the broker re-delivers the task, which starts over)

A scan whose file was unsafe still *succeeds*: the scanner's verdict is `rejected`.
"""

from __future__ import annotations

from enum import Enum


class ScanStatus(str, Enum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    canceled = "canceled"


class Verdict(str, Enum):
    clean = "clean"
    suspicious = "suspicious"
    backdoored = "backdoored"
    rejected = "rejected"
    inconclusive = "inconclusive"


class CheckStatus(str, Enum):
    """Per-check status: the scanner's pass|warn|fail|error|skipped, plus `running` while in progress."""

    running = "running"
    passed = "pass"
    warn = "warn"
    fail = "fail"
    error = "error"
    skipped = "skipped"


TERMINAL: frozenset[ScanStatus] = frozenset({ScanStatus.succeeded, ScanStatus.failed, ScanStatus.canceled})

TRANSITIONS: dict[ScanStatus, frozenset[ScanStatus]] = {
    ScanStatus.queued: frozenset({ScanStatus.running, ScanStatus.canceled, ScanStatus.failed}),
    ScanStatus.running: frozenset({ScanStatus.succeeded, ScanStatus.failed, ScanStatus.canceled, ScanStatus.queued}),
    ScanStatus.succeeded: frozenset(),
    ScanStatus.failed: frozenset(),
    ScanStatus.canceled: frozenset(),
}


class IllegalTransition(ValueError):
    """A status change the lifecycle does not allow (e.g. succeeded -> running)."""


def can_transition(current: ScanStatus | str, new: ScanStatus | str) -> bool:
    return ScanStatus(new) in TRANSITIONS[ScanStatus(current)]


def check_transition(current: ScanStatus | str, new: ScanStatus | str) -> ScanStatus:
    """Return the new status, or raise IllegalTransition."""
    if not can_transition(current, new):
        raise IllegalTransition(f"scan status {ScanStatus(current).value} -> {ScanStatus(new).value} is not allowed")
    return ScanStatus(new)


def is_terminal(status: ScanStatus | str) -> bool:
    return ScanStatus(status) in TERMINAL
