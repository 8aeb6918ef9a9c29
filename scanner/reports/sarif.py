"""SARIF 2.1.0 rendering of a JSON scan report, for code-scanning UIs and CI gates.

One SARIF result per check whose status is not ``pass`` (plus one for a model that could not be
loaded), one rule per check in the report with its description from the check registry.
Levels: ``fail`` → ``error``, ``warn`` → ``warning``, ``error`` / ``skipped`` → ``note`` (the check
could not judge; the verdict, in ``runs[0].properties``, says whether that matters).
The location of every result is the scanned model file (``runs[0].artifacts[0]``).
Tests validate the output against the official SARIF 2.1.0 (RTM 5) JSON Schema.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from scanner.checks.base import CHECKS, Check

SARIF_VERSION = "2.1.0"
SARIF_SCHEMA_URI = "https://json.schemastore.org/sarif-2.1.0.json"
LEVELS: dict[str, str] = {"fail": "error", "warn": "warning", "error": "note", "skipped": "note"}
LOAD_RULE_ID = "model.load"


def _rule_name(check_name: str) -> str:
    """``ob_oi.reconstruction`` → ``ObOiReconstruction`` (SARIF rule names are identifiers)."""
    return "".join(part.capitalize() for part in check_name.replace(".", "_").split("_") if part)


def _text(s: Any) -> str:
    return str(s) if s not in (None, "") else "(none)"


def render_sarif(report: Mapping[str, Any], *, registry: Mapping[str, type[Check]] | None = None) -> dict[str, Any]:
    """The SARIF log (a dict; ``json.dumps`` it) for a JSON report from ``ScanReport.to_dict()``."""
    registry = CHECKS if registry is None else registry
    model = report["model"]
    # a model file name is attacker-controlled: percent-encode it into a relative URI reference
    model_uri = quote(model["file_name"], safe="") or "model"

    rules: list[dict[str, Any]] = []
    rule_index: dict[str, int] = {}
    for check in report["checks"]:
        name = check["name"]
        if name in rule_index:
            continue
        cls = registry.get(name)
        description = (cls.description if cls is not None else "") or check.get("description") or name
        rule_index[name] = len(rules)
        rules.append(
            {
                "id": name,
                "name": _rule_name(name),
                "shortDescription": {"text": description.splitlines()[0] if description else name},
                "fullDescription": {"text": description},
                "defaultConfiguration": {"level": "error"},
                "properties": {
                    "family": check["family"],
                    "neededForClean": bool(check.get("needed_for_clean", True)),
                    "tags": ["dgmscan", check["family"]],
                },
            }
        )

    location = [{"physicalLocation": {"artifactLocation": {"uri": model_uri, "index": 0}}}]
    results: list[dict[str, Any]] = []
    if report.get("load_error"):
        rule_index[LOAD_RULE_ID] = len(rules)
        rules.append(
            {
                "id": LOAD_RULE_ID,
                "name": "ModelLoad",
                "shortDescription": {"text": "The model file can be loaded safely"},
                "fullDescription": {"text": "Unsafe (code-carrying) or invalid model files are rejected unloaded."},
                "defaultConfiguration": {"level": "error"},
            }
        )
        results.append(
            {
                "ruleId": LOAD_RULE_ID,
                "ruleIndex": rule_index[LOAD_RULE_ID],
                "level": "error",
                "message": {"text": _text(report["load_error"])},
                "locations": location,
                "partialFingerprints": {"dgmscanModelCheck/v1": f"{model['sha256']}:{LOAD_RULE_ID}"},
                "properties": {"findings": [f.get("code", "") for f in report.get("findings", [])]},
            }
        )
    for check in report["checks"]:
        status = check["status"]
        if status == "pass":
            continue
        results.append(
            {
                "ruleId": check["name"],
                "ruleIndex": rule_index[check["name"]],
                "level": LEVELS[status],
                "message": {"text": f"[{status}] {_text(check['summary'])}"},
                "locations": location,
                "partialFingerprints": {"dgmscanModelCheck/v1": f"{model['sha256']}:{check['name']}"},
                "properties": {
                    "status": status,
                    "score": check.get("score"),
                    "threshold": check.get("threshold"),
                    "artifacts": [a["name"] for a in check.get("artifacts", [])],
                },
            }
        )

    artifact: dict[str, Any] = {"location": {"uri": model_uri}, "hashes": {"sha-256": model["sha256"]}}
    if model.get("size_bytes"):
        artifact["length"] = int(model["size_bytes"])
    return {
        "$schema": SARIF_SCHEMA_URI,
        "version": SARIF_VERSION,
        "runs": [
            {
                "tool": {
                    "driver": {
                        "name": report["tool"]["name"],
                        "version": report["tool"]["version"],
                        "semanticVersion": report["tool"]["version"],
                        "rules": rules,
                    }
                },
                "invocations": [
                    {
                        "executionSuccessful": True,
                        "startTimeUtc": report["started_at"],
                        "endTimeUtc": report["finished_at"],
                    }
                ],
                "artifacts": [artifact],
                "results": results,
                "properties": {
                    "verdict": report["verdict"],
                    "verdictReasons": list(report.get("verdict_reasons", [])),
                    "profile": report["profile"],
                },
            }
        ],
    }
