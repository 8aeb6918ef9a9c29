"""format.* checks: is the uploaded file what it claims, and is it safe to load?

These run even when the model could not be loaded (a rejected file still gets a report that
shows why). Each reads the model file through `scanner.loading.inspect_file` (cached in
`ctx.shared["format.file_report"]`), or `ctx.load_findings` when there is no file. A check
that does not apply to the file's format passes with "not applicable: <format>" — not
"skipped", which would make a clean verdict inconclusive.
"""

from __future__ import annotations

from typing import Any

from scanner.checks.base import Check, CheckResult, ScanContext, register_check
from scanner.errors import InvalidModelError
from scanner.formats import detect
from scanner.formats.report import FileReport

SHARED_KEY = "format.file_report"

_PICKLE_FORMATS = frozenset(
    {
        detect.TORCH_ZIP,
        detect.TORCHSCRIPT,
        detect.TORCH_EXPORT,
        detect.TORCH_PACKAGE,
        detect.PICKLE,
        detect.NPY,
        detect.NPZ,
        detect.ZIP,
    }
)


def file_report(ctx: ScanContext) -> FileReport | None:
    """The inspection of ctx.model_path, computed once per scan; None when there is no file."""
    if SHARED_KEY in ctx.shared:
        return ctx.shared[SHARED_KEY]
    if ctx.model_path is None:
        return None
    from scanner.loading import inspect_file

    try:
        report = inspect_file(ctx.model_path)
    except InvalidModelError as exc:  # unreadable / over the size limit: a report saying so
        report = FileReport(path=str(ctx.model_path), format=detect.UNKNOWN, size_bytes=0, problem=str(exc))
    ctx.shared[SHARED_KEY] = report
    return report


def _findings(report: FileReport | None, ctx: ScanContext, prefixes: tuple[str, ...]) -> list[dict[str, Any]]:
    source = [f.to_dict() for f in report.findings] if report is not None else list(ctx.load_findings)
    return [f for f in source if str(f.get("code", "")).startswith(prefixes)]


def _high(findings: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [f for f in findings if f.get("severity", "high") == "high"]


def _no_file(check: Check, ctx: ScanContext) -> CheckResult:
    if ctx.load_findings:
        # No file to re-read, but the loader reported findings: judge those.
        high = _high(list(ctx.load_findings))
        status = "fail" if high else "pass"
        return check.result(
            status,
            f"{len(high)} high-severity loader finding(s)" if high else "no high-severity loader findings",
            score=float(len(high)),
            threshold=0.0,
            evidence={"findings": list(ctx.load_findings)},
        )
    return check.result("pass", "not applicable: no model file (in-memory generator)")


@register_check
class FormatDetection(Check):
    """Format from the bytes; rejected (code-bearing / unsafe) and invalid files fail."""

    name = "format.detection"
    description = "detect the model format from its bytes; fail on rejected or unreadable files"

    def run(self, ctx: ScanContext) -> CheckResult:
        report = file_report(ctx)
        if report is None:
            return _no_file(self, ctx)
        evidence = {
            "format": report.format,
            "size_bytes": report.size_bytes,
            "status": report.status,
            "problem": report.problem,
            "advice": report.advice,
            "findings": [f.to_dict() for f in report.findings],
        }
        if report.rejected:
            high = [f for f in report.findings if f.severity == "high"]
            return self.result(
                "fail",
                f"rejected {report.format} file: {high[0].message if high else 'code-bearing format'}"[:300],
                score=float(len(high)),
                threshold=0.0,
                evidence=evidence,
            )
        if report.invalid:
            return self.result("fail", f"unreadable {report.format} file: {report.problem}"[:300], evidence=evidence)
        warn = [f for f in report.findings if f.severity == "medium"]
        if warn:
            return self.result("warn", f"{report.format}: {warn[0].message}"[:300], evidence=evidence)
        return self.result("pass", f"{report.format} file, {report.size_bytes} bytes, loadable", evidence=evidence)


@register_check
class PickleScan(Check):
    """Allowlist pickle scan of every pickle in the file (fickling + a stdlib opcode walk)."""

    name = "format.pickle_scan"
    description = "scan embedded pickles against the torch weights_only state-dict allowlist"

    def run(self, ctx: ScanContext) -> CheckResult:
        report = file_report(ctx)
        if report is None:
            return _no_file(self, ctx)
        if report.format not in _PICKLE_FORMATS:
            return self.result("pass", f"not applicable: {report.format}")
        findings = _findings(report, ctx, ("pickle.", "numpy.", "zip.", "format.code_bearing"))
        high = _high(findings)
        pickles = report.header.get("pickles") or (
            {"<file>": report.header["pickle"]} if "pickle" in report.header else {}
        )
        evidence = {
            "format": report.format,
            "findings": findings,
            "pickles": {
                name: {"globals": p.get("globals", []), "problem": p.get("problem")} for name, p in pickles.items()
            },
        }
        if high:
            return self.result(
                "fail",
                f"{len(high)} unsafe pickle finding(s): {high[0]['message']}"[:300],
                score=float(len(high)),
                threshold=0.0,
                evidence=evidence,
            )
        if report.invalid:
            return self.result("fail", f"pickle could not be scanned: {report.problem}"[:300], evidence=evidence)
        return self.result(
            "pass",
            f"{len(pickles)} pickle(s) reference only allowlisted globals",
            score=0.0,
            threshold=0.0,
            evidence=evidence,
        )


@register_check
class OnnxSafety(Check):
    """External data inside the upload, operators inside the executor's allowlist, no custom domains."""

    name = "format.onnx_safety"
    description = "ONNX external-data locations, operator allowlist and custom domains"

    def run(self, ctx: ScanContext) -> CheckResult:
        report = file_report(ctx)
        if report is None:
            return _no_file(self, ctx)
        if report.format != detect.ONNX:
            return self.result("pass", f"not applicable: {report.format}")
        findings = [f.to_dict() for f in report.findings]
        high = _high(findings)
        evidence = {"findings": findings, "header": report.header, "problem": report.problem}
        if high:
            return self.result(
                "fail",
                f"{len(high)} unsafe ONNX finding(s): {high[0]['message']}"[:300],
                score=float(len(high)),
                threshold=0.0,
                evidence=evidence,
            )
        if report.invalid:
            return self.result("fail", f"ONNX file unreadable: {report.problem}"[:300], evidence=evidence)
        if findings:
            return self.result("warn", f"{len(findings)} low-severity ONNX finding(s)", evidence=evidence)
        return self.result("pass", "ONNX graph within the operator allowlist, no external data outside the upload")


@register_check
class SafetensorsHeader(Check):
    """Header offsets in range and non-overlapping, known dtypes, spans == shape×dtype, finite weights."""

    name = "format.safetensors_header"
    description = "validate the safetensors header against the data (no lying headers) and the weights"

    def run(self, ctx: ScanContext) -> CheckResult:
        report = file_report(ctx)
        if report is None:
            return _no_file(self, ctx)
        if report.format != detect.SAFETENSORS:
            return self.result("pass", f"not applicable: {report.format}")
        evidence = {
            "header": report.header,
            "problem": report.problem,
            "findings": [f.to_dict() for f in report.findings],
        }
        if report.invalid:
            return self.result("fail", f"safetensors file refused: {report.problem}"[:300], evidence=evidence)
        arch = report.header.get("architecture", {}).get("name")
        return self.result(
            "pass",
            f"header valid: {report.header.get('tensor_count', 0)} tensors, "
            f"{report.header.get('total_elements', 0)} elements"
            + (f", fits architecture {arch}" if arch else ", no architecture in metadata"),
            evidence=evidence,
        )
