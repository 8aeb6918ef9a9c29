"""Scan reports: JSON (the source of truth), SARIF 2.1.0 and a self-contained HTML page.

Every renderer takes the JSON report (``ScanReport.to_dict()``), so a service that stored only
the JSON can render the other formats later::

    from scanner.reports import render_html, render_sarif, validate_report
"""

from __future__ import annotations

from scanner.reports.html import render_html
from scanner.reports.json_report import REPORT_SCHEMA_PATH, dump_json, load_report_schema, validate_report
from scanner.reports.sarif import render_sarif

__all__ = ["REPORT_SCHEMA_PATH", "dump_json", "load_report_schema", "render_html", "render_sarif", "validate_report"]
