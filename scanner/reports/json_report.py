"""The JSON report: the source of truth every other format is rendered from.

Its schema is ``report.schema.json`` beside this module (JSON Schema 2020-12), described for
people in docs/report-schema.md. ``ScanReport.to_dict()`` (scanner.suite) produces it.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

REPORT_SCHEMA_PATH = Path(__file__).with_name("report.schema.json")


@lru_cache(maxsize=1)
def load_report_schema() -> dict[str, Any]:
    """The report's JSON Schema as a dict."""
    return json.loads(REPORT_SCHEMA_PATH.read_text(encoding="utf-8"))


def validate_report(report: dict[str, Any]) -> None:
    """Raise ``jsonschema.ValidationError`` if ``report`` does not follow the schema.

    jsonschema is imported here, not at module import, so rendering reports does not need it.
    """
    import jsonschema

    validator_cls = jsonschema.validators.validator_for(load_report_schema())
    validator_cls(load_report_schema(), format_checker=validator_cls.FORMAT_CHECKER).validate(report)


def dump_json(report: dict[str, Any]) -> str:
    """Serialise a report: strict JSON (no NaN/Infinity tokens), stable key order, trailing newline."""
    return json.dumps(report, indent=2, sort_keys=False, allow_nan=False, ensure_ascii=False) + "\n"
