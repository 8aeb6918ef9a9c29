"""The overall verdict of a scan, from the per-check results.

The paper (Rawat et al., arXiv 2108.01644, Section V) shows that no single defense catches
every attack — static inspection catches ReX and the computation bypass, output inspection
catches ReD/TrAIL — so the verdict combines all checks and *fails closed*.

Rules, applied in this order (the first that matches decides):

1. ``rejected``    — the file could not be loaded safely: the loader raised RejectedModelError
                     (unsafe or code-carrying format) or InvalidModelError (corrupt, truncated,
                     over a limit), or any ``format.*`` check failed.
2. ``backdoored``  — a check of a *detector family* (``static``, ``dynamic``, ``bf_oi``, ``ob_oi``,
                     ``calibration``) has status ``fail`` with strong evidence. A fail is strong
                     unless the check sets ``evidence["strength"] = "weak"`` (a check whose fail
                     means "something is off" rather than "a backdoor was found" uses that).
3. ``suspicious``  — any check has status ``warn``; or a detector-family check failed with weak
                     evidence; or a check of another family (e.g. ``sanitization``, which is a
                     defense, not a detector) failed.
4. ``inconclusive`` — a check needed for a clean verdict (``Check.needed_for_clean``) has status
                     ``error`` or ``skipped``, or no check ran at all (fail closed: what was not
                     looked at is not clean).
5. ``clean``       — otherwise.

Errors or skips of checks *not* needed for clean do not change the verdict; they are still in
the report. Every matching reason is listed in ``VerdictDecision.reasons`` (most severe first),
so a ``backdoored`` verdict also shows the warns and errors beside it — except for ``rejected``,
whose reasons are only the load error and failed format checks (nothing else could run).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Literal

from scanner.checks.base import CheckResult

Verdict = Literal["clean", "suspicious", "backdoored", "rejected", "inconclusive"]
VERDICTS: tuple[Verdict, ...] = ("clean", "suspicious", "backdoored", "rejected", "inconclusive")

# Families whose "fail" is evidence of a backdoor (DESIGN.md check catalogue).
DETECTOR_FAMILIES: frozenset[str] = frozenset({"static", "dynamic", "bf_oi", "ob_oi", "calibration"})
# Family whose "fail" means the file itself is unsafe or invalid.
FORMAT_FAMILY = "format"

# CLI exit codes per verdict (DESIGN.md "Reports and exit codes"); 2 is also any error.
EXIT_CODES: dict[Verdict, int] = {"clean": 0, "suspicious": 1, "backdoored": 1, "rejected": 2, "inconclusive": 3}
EXIT_ERROR = 2


@dataclass(frozen=True)
class VerdictDecision:
    """The verdict and every reason that contributed, most severe first."""

    verdict: Verdict
    reasons: list[str] = field(default_factory=list)


def is_strong(result: CheckResult) -> bool:
    """A fail is strong evidence unless the check marked it weak (``evidence["strength"] == "weak"``)."""
    return str(result.evidence.get("strength", "strong")).lower() != "weak"


def decide_verdict(
    results: Iterable[CheckResult],
    *,
    needed_for_clean: Callable[[str], bool],
    load_error: str | None = None,
) -> VerdictDecision:
    """Apply the rules of this module's docstring.

    ``needed_for_clean(name)`` says whether a check's error/skip blocks a clean verdict (the
    suite passes the registry's ``Check.needed_for_clean``; unknown checks count as needed).
    ``load_error`` is set when the model could not be loaded (rejected or invalid file).
    """
    results = list(results)
    rejected: list[str] = []
    backdoored: list[str] = []
    suspicious: list[str] = []
    inconclusive: list[str] = []

    if load_error:
        rejected.append(f"model not loaded: {load_error}")
    for r in results:
        label = f"{r.name} {r.status}: {r.summary}"
        if r.status == "fail":
            if r.family == FORMAT_FAMILY:
                rejected.append(label)
            elif r.family in DETECTOR_FAMILIES and is_strong(r):
                backdoored.append(label)
            else:
                suspicious.append(label + ("" if r.family not in DETECTOR_FAMILIES else " (weak evidence)"))
        elif r.status == "warn":
            suspicious.append(label)
        elif r.status in ("error", "skipped") and needed_for_clean(r.name):
            inconclusive.append(label)

    if rejected:  # the other checks could not look at an unloaded model: their skips are noise
        return VerdictDecision("rejected", rejected)
    reasons = backdoored + suspicious + inconclusive
    if backdoored:
        return VerdictDecision("backdoored", reasons)
    if suspicious:
        return VerdictDecision("suspicious", reasons)
    if inconclusive:
        return VerdictDecision("inconclusive", reasons)
    if not results:  # nothing examined the model: never call that clean
        return VerdictDecision("inconclusive", ["no check ran"])
    return VerdictDecision("clean", ["every check needed for a clean verdict passed"])


def exit_code(verdict: Verdict) -> int:
    """The CLI exit status for a verdict: 0 clean, 1 suspicious/backdoored, 2 rejected, 3 inconclusive."""
    return EXIT_CODES[verdict]
