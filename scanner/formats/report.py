"""The result of inspecting a model file without loading it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from scanner.errors import Finding
from scanner.formats.detect import CODE_BEARING_FORMATS, LOADABLE_FORMATS

CONVERT_ADVICE = (
    "convert with `dgmscan export` on the owner's trusted machine (load there, save as safetensors or ONNX), "
    "then upload the converted file"
)


@dataclass
class FileReport:
    """Format (decided from the bytes), safety findings, header facts and any reason it cannot be read."""

    path: str
    format: str
    size_bytes: int
    findings: list[Finding] = field(default_factory=list)
    header: dict[str, Any] = field(default_factory=dict)
    problem: str | None = None  # truncated / corrupt / over a limit / not a model
    advice_text: str | None = None  # a reader's own advice for a rejected file (else CONVERT_ADVICE)

    @property
    def code_bearing(self) -> bool:
        """The format itself can run code when loaded (TorchScript, .pt2, torch.package, pickle)."""
        return self.format in CODE_BEARING_FORMATS

    @property
    def rejected(self) -> bool:
        """Unsafe: a code-bearing format or a high-severity finding. Never loaded."""
        return self.code_bearing or any(f.severity == "high" for f in self.findings)

    @property
    def invalid(self) -> bool:
        return self.problem is not None

    @property
    def loadable(self) -> bool:
        return self.format in LOADABLE_FORMATS and not self.rejected and not self.invalid

    @property
    def status(self) -> str:
        """'rejected' | 'invalid' | 'ok'."""
        if self.rejected:
            return "rejected"
        if self.invalid:
            return "invalid"
        return "ok"

    @property
    def advice(self) -> str:
        if not self.rejected:
            return ""
        return self.advice_text or CONVERT_ADVICE

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "format": self.format,
            "size_bytes": self.size_bytes,
            "status": self.status,
            "findings": [f.to_dict() for f in self.findings],
            "header": self.header,
            "problem": self.problem,
            "advice": self.advice,
        }
