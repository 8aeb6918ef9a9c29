"""Prometheus metrics of the API process (exposed at /metrics)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

REQUESTS = Counter("dgmscan_http_requests_total", "HTTP requests", ["method", "route", "status"], registry=REGISTRY)
LATENCY = Histogram(
    "dgmscan_http_request_duration_seconds",
    "HTTP request latency",
    ["method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 120),
    registry=REGISTRY,
)
SCANS_CREATED = Counter("dgmscan_scans_created_total", "Scans accepted", ["profile"], registry=REGISTRY)
UPLOAD_BYTES = Counter("dgmscan_upload_bytes_total", "Bytes of accepted uploads", registry=REGISTRY)
