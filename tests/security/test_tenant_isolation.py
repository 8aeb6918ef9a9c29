"""Tenant isolation: every scan endpoint x two tenants x read / write / cancel / download, on a
finished scan (report, artifacts, sanitized model, presigned URLs) and an active one (running or
queued). The other tenant always gets 404 (indistinguishable from a missing scan), the owner's same
request succeeds (so the 404 is not vacuous), and nothing the intruder did changed the owner's scan.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest
import sqlalchemy as sa
from svc_helpers import upload, wait_scan
from svc_models import TARGET_PNG, make_benign

TENANTS = ("alice", "bob")
SANITIZED = "sanitization.distillation/sanitized.safetensors"
EVIDENCE = "static.bias_outliers/evidence.json"
# a BF-OI search far too long to finish: keeps a scan running (worker busy) or queued behind it
LONG = {"profile": "quick", "only": ["format", "bf_oi.closest"], "params": {"bf_oi.closest": {"n_samples": 50_000_000}}}


@dataclass
class TenantScans:
    finished: str
    active: str
    tenant_id: str


def _tenant_id(db_url: str, name: str) -> str:
    engine = sa.create_engine(db_url)
    with engine.connect() as conn:
        tid = conn.execute(sa.text("SELECT id FROM tenants WHERE name = :n"), {"n": name}).scalar_one()
    engine.dispose()
    return tid


def _record_artifacts(prod_env: dict, db_url: str, scan_id: str, tenant_id: str, tmp: Path, model: Path) -> None:
    """Record a sanitized checkpoint and an evidence file through the worker's own artifact code."""
    from persistence.scanconfig import ScanConfigIn
    from persistence.settings import Settings
    from persistence.storage import get_store
    from worker.jobs import ScanInputs, upload_artifacts

    for name, body in ((SANITIZED, model.read_bytes()), (EVIDENCE, f'{{"tenant": "{tenant_id}"}}'.encode())):
        (tmp / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp / name).write_bytes(body)
    report = {
        "checks": [
            {"name": "sanitization.distillation", "family": "sanitization", "artifacts": [{"name": SANITIZED}]},
            {"name": "static.bias_outliers", "family": "static", "artifacts": [{"name": EVIDENCE}]},
        ]
    }
    settings = Settings(**{k[len("DGMSCAN_") :].lower(): v for k, v in prod_env.items() if k.startswith("DGMSCAN_")})
    inputs = ScanInputs(scan_id, tenant_id, "", "", "", [], ScanConfigIn())
    upload_artifacts(db_url, get_store(settings), inputs, tmp, report)


@pytest.fixture(scope="module")
def scans(prod_api, prod_worker, prod_env, tenant_keys, migrated_pg, tmp_path_factory) -> dict[str, TenantScans]:
    """Per tenant: one finished scan with reports and artifacts, one long scan left running/queued."""
    out: dict[str, TenantScans] = {}
    for tenant in TENANTS:
        d = tmp_path_factory.mktemp(f"iso-{tenant}")
        model = make_benign(d / f"{tenant}.safetensors", seed=TENANTS.index(tenant))
        with prod_api.client(tenant_keys[tenant]) as c:
            r = upload(c, model, [TARGET_PNG], {"profile": "quick", "only": ["format", "static.bias_outliers"]})
            assert r.status_code == 202, r.text
            finished = wait_scan(c, r.json()["id"])
            assert finished["status"] == "succeeded", finished
            tid = _tenant_id(migrated_pg, tenant)
            _record_artifacts(prod_env, migrated_pg, finished["id"], tid, d / "artifacts", model)
            out[tenant] = TenantScans(finished["id"], "", tid)
    for tenant in TENANTS:  # the first occupies the single worker child, the second waits in the queue
        with prod_api.client(tenant_keys[tenant]) as c:
            out[tenant].active = upload(c, model, [TARGET_PNG], LONG).json()["id"]
    yield out
    for tenant in TENANTS:
        with prod_api.client(tenant_keys[tenant]) as c:
            c.delete(f"/v1/scans/{out[tenant].active}")
            wait_scan(c, out[tenant].active, timeout_s=120)


# (method, path template, which scan, what the owner gets)
ENDPOINTS = [
    ("GET", "/v1/scans/{id}", "finished", {200}),
    ("GET", "/v1/scans/{id}", "active", {200}),
    ("GET", "/v1/scans/{id}/report?format=json", "finished", {200}),
    ("GET", "/v1/scans/{id}/report?format=sarif", "finished", {200}),
    ("GET", "/v1/scans/{id}/report?format=html", "finished", {200}),
    ("GET", "/v1/scans/{id}/report?format=json", "active", {409}),
    ("GET", "/v1/scans/{id}/artifacts", "finished", {200}),
    ("GET", "/v1/scans/{id}/artifacts/" + EVIDENCE, "finished", {307}),
    ("GET", "/v1/scans/{id}/artifacts/" + SANITIZED, "finished", {307}),
    ("GET", "/v1/scans/{id}/sanitized-model", "finished", {307}),
    ("GET", "/v1/scans/{id}/artifacts", "active", {200}),
    ("DELETE", "/v1/scans/{id}", "finished", {409}),
    ("DELETE", "/v1/scans/{id}", "active", None),  # the owner's cancel is done in teardown
]


def _request(client: httpx.Client, method: str, path: str) -> httpx.Response:
    return client.request(method, path, follow_redirects=False)


@pytest.mark.parametrize(("owner", "intruder_key"), [("alice", "bob"), ("bob", "alice"), ("bob", "alice_ro")])
@pytest.mark.parametrize(("method", "template", "which", "owner_gets"), ENDPOINTS)
def test_other_tenant_gets_404(prod_api, tenant_keys, scans, method, template, which, owner_gets, owner, intruder_key):
    scan_id = getattr(scans[owner], which)
    path = template.format(id=scan_id)
    key = tenant_keys[intruder_key]
    with prod_api.client(key) as c, prod_api.client(tenant_keys[owner]) as own:
        before = own.get(f"/v1/scans/{scan_id}").json()
        r = _request(c, method, path)
        expected = 403 if (intruder_key == "alice_ro" and method == "DELETE") else 404  # scope is checked first
        assert r.status_code == expected, (method, path, r.status_code, r.text[:300])
        if expected == 404:
            assert r.json()["error"]["code"] == "not_found"
            assert scan_id not in r.text  # the error does not confirm the id exists
        assert "location" not in r.headers  # no presigned URL leaks
        after = own.get(f"/v1/scans/{scan_id}").json()
        assert after["cancel_requested"] == before["cancel_requested"] is False or which == "finished"
        if owner_gets is not None:
            assert _request(own, method, path).status_code in owner_gets, (method, path)


def test_listing_and_filters_show_only_own_scans(prod_api, tenant_keys, scans) -> None:
    for tenant in TENANTS:
        other = scans["bob" if tenant == "alice" else "alice"]
        with prod_api.client(tenant_keys[tenant]) as c:
            for query in ("", "?status=succeeded", "?status=running", "?status=queued", "?verdict=clean", "?limit=1"):
                seen: set[str] = set()
                url = "/v1/scans" + query
                while url:
                    page = c.get(url)
                    assert page.status_code == 200, page.text
                    body = page.json()
                    seen |= {item["id"] for item in body["items"]}
                    cursor = body["next_cursor"]
                    sep = "&" if "?" in query else "?"
                    url = f"/v1/scans{query}{sep}cursor={cursor}" if cursor else ""
                assert not seen & {other.finished, other.active}, (tenant, query)
            assert scans[tenant].finished in {i["id"] for i in c.get("/v1/scans?limit=200").json()["items"]}


def test_presigned_urls_are_bound_to_one_object(prod_api, tenant_keys, scans, s3_server) -> None:
    """A presigned URL opens exactly its object: rewriting its path to the other tenant's object fails."""
    with prod_api.client(tenant_keys["alice"]) as alice, prod_api.client(tenant_keys["bob"]) as bob:
        a_url = alice.get(f"/v1/scans/{scans['alice'].finished}/sanitized-model").headers["location"]
        b_url = bob.get(f"/v1/scans/{scans['bob'].finished}/sanitized-model").headers["location"]
    a_parts, b_parts = urlsplit(a_url), urlsplit(b_url)
    assert f"tenants/{scans['alice'].tenant_id}/" in a_parts.path
    assert f"tenants/{scans['bob'].tenant_id}/" in b_parts.path
    assert httpx.get(a_url, timeout=30).status_code == 200
    forged = urlunsplit(a_parts._replace(path=b_parts.path))  # alice's signature, bob's object
    assert httpx.get(forged, timeout=30).status_code == 403
    unsigned = urlunsplit(b_parts._replace(query=""))
    assert httpx.get(unsigned, timeout=30).status_code == 403
    # every object of a tenant lives under its own prefix
    for tenant in TENANTS:
        prefix = f"tenants/{scans[tenant].tenant_id}/"
        for scan_id in (scans[tenant].finished,):
            assert s3_server.keys(f"{prefix}scans/{scan_id}/"), tenant
        other = scans["bob" if tenant == "alice" else "alice"]
        assert not s3_server.keys(f"{prefix}scans/{other.finished}/")
