"""Response models of the v1 API (request bodies are multipart; the `config` part is ScanConfigIn)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from persistence.status import ScanStatus, Verdict


class CheckOut(BaseModel):
    name: str
    status: Literal["running", "pass", "warn", "fail", "error", "skipped"]
    score: float | None = None
    threshold: float | None = None
    summary: str = ""
    duration_s: float = 0.0


class ModelOut(BaseModel):
    filename: str = Field(description="the client's file name, for display only")
    sha256: str
    size_bytes: int


class TargetOut(BaseModel):
    filename: str
    sha256: str
    size_bytes: int


class ScanLinks(BaseModel):
    self: str
    report: str
    artifacts: str


class ScanOut(BaseModel):
    id: str
    status: ScanStatus
    verdict: Verdict | None = None
    progress: float = Field(ge=0, le=1)
    current_check: str | None = None
    profile: str
    queue: str
    cancel_requested: bool
    error: str | None = None
    model: ModelOut
    targets: list[TargetOut]
    checks: list[CheckOut]
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    links: ScanLinks


class ScanSummaryOut(BaseModel):
    id: str
    status: ScanStatus
    verdict: Verdict | None = None
    progress: float
    profile: str
    model_sha256: str
    model_filename: str
    created_at: datetime
    finished_at: datetime | None = None


class ScanPage(BaseModel):
    items: list[ScanSummaryOut]
    next_cursor: str | None = Field(default=None, description="pass as `cursor` to get the next page")


class ArtifactOut(BaseModel):
    name: str
    media_type: str
    size_bytes: int
    description: str = ""
    kind: str
    url: str


class ArtifactList(BaseModel):
    items: list[ArtifactOut]


class ErrorBody(BaseModel):
    code: str
    message: str
    detail: object | None = None


class ErrorOut(BaseModel):
    error: ErrorBody


class HealthOut(BaseModel):
    status: Literal["ok", "unavailable"]
    components: dict[str, str] = Field(default_factory=dict)
