"""Errors the scanner raises. Each carries a message a user can act on."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Finding:
    """One safety finding about an input file (a pickle import, an unsafe ONNX op, ...)."""

    code: str  # stable machine-readable id, e.g. "pickle.unsafe_import"
    message: str  # one line for people
    severity: str = "high"  # "high" | "medium" | "low" | "info"
    detail: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"code": self.code, "message": self.message, "severity": self.severity, "detail": self.detail}


class ScannerError(Exception):
    """Base class of every error the scanner raises on purpose."""


class InvalidModelError(ScannerError):
    """The file is not a model we can read: truncated, corrupt, wrong shape, over a size limit."""


class RejectedModelError(ScannerError):
    """The file is (or may be) unsafe to load, or is of a format that can run code.

    `findings` lists why; `advice` says how the owner can convert the model safely.
    """

    def __init__(self, message: str, findings: list[Finding] | None = None, advice: str = "") -> None:
        super().__init__(message)
        self.findings = list(findings or [])
        self.advice = advice


class UnsupportedOpError(RejectedModelError):
    """An ONNX graph uses an operator outside the executor's allowlist."""


class InvalidTargetError(ScannerError):
    """A target hint (image, WAV, .npy) cannot be read or converted to the model's output."""
