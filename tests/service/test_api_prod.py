"""The service as deployed: uvicorn over real HTTP, a Celery worker process over Redis, Postgres,
SeaweedFS S3. Plumbing tests narrow the scan with `only`; detection runs on models built here."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from svc_helpers import S3Server, raw_chunked_upload, upload, wait_scan
from svc_models import TARGET_PNG, make_benign, make_malicious_pickle

PLUMBING = {"profile": "quick", "only": ["format", "static.bias_outliers"]}


@pytest.fixture(scope="module")
def benign_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_benign(tmp_path_factory.mktemp("models") / "benign.safetensors")


def _tenant_id(db_url: str, name: str) -> str:
    engine = sa.create_engine(db_url)
    with engine.connect() as conn:
        tid = conn.execute(sa.text("SELECT id FROM tenants WHERE name = :n"), {"n": name}).scalar_one()
    engine.dispose()
    return tid


def _count_scans(db_url: str, tenant_id: str) -> int:
    engine = sa.create_engine(db_url)
    with engine.connect() as conn:
        n = conn.execute(sa.text("SELECT count(*) FROM scans WHERE tenant_id = :t"), {"t": tenant_id}).scalar_one()
    engine.dispose()
    return int(n)


def test_auth_missing_wrong_and_scope(prod_api, tenant_keys, benign_model) -> None:
    with prod_api.client() as anon:
        r = anon.get("/v1/scans")
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthenticated"
        assert r.headers["www-authenticate"] == "Bearer"
    with prod_api.client("dgm_" + "A" * 43) as wrong:
        assert wrong.get("/v1/scans").status_code == 401
    with httpx.Client(base_url=prod_api.url, headers={"X-API-Key": tenant_keys["alice"]}) as alt:
        assert alt.get("/v1/scans").status_code == 200
    with prod_api.client(tenant_keys["alice_ro"]) as ro:
        assert ro.get("/v1/scans").status_code == 200
        r = upload(ro, benign_model, config=PLUMBING)
        assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"


def test_health_ready_metrics_and_openapi(prod_api) -> None:
    with prod_api.client() as c:
        assert c.get("/healthz").json() == {"status": "ok", "components": {}}
        ready = c.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json()["components"] == {"database": "ok", "broker": "ok", "storage": "ok"}
        spec = c.get("/openapi.json").json()
        assert {"/v1/scans", "/v1/scans/{scan_id}", "/v1/scans/{scan_id}/report"} <= set(spec["paths"])
        assert "multipart/form-data" in spec["paths"]["/v1/scans"]["post"]["requestBody"]["content"]
        metrics = c.get("/metrics").text
        assert 'dgmscan_http_requests_total{method="GET",route="/healthz",status="200"}' in metrics


def test_scan_round_trip_tenant_isolation_reports_and_artifacts(
    prod_api, prod_worker, tenant_keys, benign_model, s3_server: S3Server, migrated_pg: str
) -> None:
    with prod_api.client(tenant_keys["alice"]) as alice, prod_api.client(tenant_keys["bob"]) as bob:
        r = upload(alice, benign_model, [TARGET_PNG], PLUMBING)
        assert r.status_code == 202, r.text
        created = r.json()
        assert created["status"] == "queued" and r.headers["location"].endswith(created["id"])
        assert created["model"]["filename"] == "benign.safetensors"
        scan = wait_scan(alice, created["id"])
        assert scan["status"] == "succeeded", scan
        assert scan["verdict"] == "clean" and scan["progress"] == 1.0
        names = [c["name"] for c in scan["checks"]]
        assert "format.detection" in names and "static.bias_outliers" in names
        assert all(c["status"] == "pass" for c in scan["checks"])

        # content-addressed: the model object is keyed by its sha256
        tid = _tenant_id(migrated_pg, "alice")
        assert f"tenants/{tid}/blobs/sha256/{scan['model']['sha256']}" in s3_server.keys(f"tenants/{tid}/blobs/")

        # another tenant sees nothing: 404 like a missing scan, absent from its list
        for path in ("", "/report", "/artifacts", "/sanitized-model"):
            assert bob.get(f"/v1/scans/{scan['id']}{path}").status_code == 404
        assert bob.delete(f"/v1/scans/{scan['id']}").status_code == 404
        assert scan["id"] not in [s["id"] for s in bob.get("/v1/scans").json()["items"]]

        report = alice.get(f"/v1/scans/{scan['id']}/report").json()
        assert report["verdict"] == "clean" and report["model"]["file_name"] == "benign.safetensors"
        sarif = alice.get(f"/v1/scans/{scan['id']}/report", params={"format": "sarif"}).json()
        assert sarif["version"] == "2.1.0"
        html = alice.get(f"/v1/scans/{scan['id']}/report", params={"format": "html"})
        assert html.headers["content-type"].startswith("text/html") and "<html" in html.text
        assert "default-src 'none'" in html.headers["content-security-policy"]
        assert alice.get(f"/v1/scans/{scan['id']}/report", params={"format": "pdf"}).status_code == 422

        arts = alice.get(f"/v1/scans/{scan['id']}/artifacts").json()["items"]
        assert arts, "the target hint picture at least"
        first = arts[0]
        redirect = alice.get(f"/v1/scans/{scan['id']}/artifacts/{first['name']}")
        assert redirect.status_code == 307 and s3_server.endpoint in redirect.headers["location"]
        blob = httpx.get(redirect.headers["location"], timeout=30)
        assert blob.status_code == 200 and len(blob.content) == first["size_bytes"]
        for bad in ("../../etc/passwd", "..%2F..%2Fetc%2Fpasswd", "targets/../x", "nonexistent.png"):
            assert alice.get(f"/v1/scans/{scan['id']}/artifacts/{bad}").status_code == 404

        # the finished scan cannot be canceled
        assert alice.delete(f"/v1/scans/{scan['id']}").status_code == 409

        listed = alice.get("/v1/scans", params={"verdict": "clean", "status": "succeeded"}).json()["items"]
        assert scan["id"] in [s["id"] for s in listed]
        assert alice.get("/v1/scans", params={"status": "bogus"}).status_code == 422


def test_pickle_is_rejected_and_never_executed(prod_api, prod_worker, tenant_keys, tmp_path: Path) -> None:
    evil = make_malicious_pickle(tmp_path / "generator.pt")
    with prod_api.client(tenant_keys["alice"]) as alice:
        r = upload(alice, evil, config={"profile": "quick", "only": ["format"]})
        assert r.status_code == 202, r.text
        scan = wait_scan(alice, r.json()["id"])
        assert scan["status"] == "succeeded" and scan["verdict"] == "rejected", scan
        report = alice.get(f"/v1/scans/{scan['id']}/report").json()
        assert report["load_error"] and "rejected" in report["load_error"]
        assert any("pickle" in f["code"] for f in report["findings"])
    assert not Path("/tmp/dgmscan-pwned").exists()


def test_oversize_upload_gets_413_while_streaming_and_leaves_nothing(
    prod_api, tenant_keys, s3_server: S3Server, migrated_pg: str
) -> None:
    tid = _tenant_id(migrated_pg, "bob")
    before = _count_scans(migrated_pg, tid)
    limit = 8 * 1024 * 1024  # DGMSCAN_MAX_MODEL_BYTES of the test deployment
    status, sent, body = raw_chunked_upload(prod_api.url, tenant_keys["bob"], filler_bytes=64 * 1024 * 1024)
    assert status == 413, body
    assert json.loads(body)["error"]["code"] == "payload_too_large"
    assert sent < 4 * limit, f"the server read {sent} bytes before answering"  # not the whole 64 MiB
    assert _count_scans(migrated_pg, tid) == before
    assert s3_server.keys(f"tenants/{tid}/") == []  # no temporary object, no multipart leftovers


def test_bad_requests_leave_no_rows_or_objects(
    prod_api, tenant_keys, benign_model, s3_server: S3Server, migrated_pg: str
) -> None:
    tid = _tenant_id(migrated_pg, "bob")
    before = _count_scans(migrated_pg, tid)
    with prod_api.client(tenant_keys["bob"]) as bob:
        r = upload(bob, benign_model, config={"profile": "quick", "onyl": ["format"]})  # misspelt option
        assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_config"
        r = upload(bob, benign_model, config={"profile": "ludicrous"})
        assert r.status_code == 422
        r = bob.post("/v1/scans", files={"config": (None, "{}")})
        assert r.status_code == 422  # no model part
        r = bob.post("/v1/scans", content=b"{}", headers={"content-type": "application/json"})
        assert r.status_code == 415
        r = bob.post("/v1/scans", files={"weights": ("x.bin", b"123")})
        assert r.status_code == 422
        truncated = b'--xx\r\nContent-Disposition: form-data; name="model"; filename="a.onnx"\r\n\r\n' + b"A" * 3000
        r = bob.post("/v1/scans", content=truncated, headers={"content-type": "multipart/form-data; boundary=xx"})
        assert r.status_code == 400 and r.json()["error"]["code"] == "malformed_multipart"
        r = bob.post(
            "/v1/scans", content=b"garbage" * 100, headers={"content-type": "multipart/form-data; boundary=xx"}
        )
        assert r.status_code in (400, 422)
    assert _count_scans(migrated_pg, tid) == before
    assert s3_server.keys(f"tenants/{tid}/") == []


def test_cancel_running_scan_and_signed_webhook(prod_api, prod_worker, tenant_keys, benign_model, migrated_pg) -> None:
    from worker.webhooks import SIGNATURE_HEADER, verify

    received: list[tuple[bytes, str]] = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append((body, self.headers[SIGNATURE_HEADER]))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        config = {
            "profile": "quick",
            # a BF-OI search far too long to finish: the check polls should_cancel, the runner stops after it
            "only": ["format", "bf_oi.closest"],
            "params": {"bf_oi.closest": {"n_samples": 20_000_000}},
            "callback_url": f"http://127.0.0.1:{server.server_port}/hook",
        }
        with prod_api.client(tenant_keys["alice"]) as alice:
            scan_id = upload(alice, benign_model, [TARGET_PNG], config).json()["id"]
            for _ in range(1200):  # wait until the worker is inside the long check
                if alice.get(f"/v1/scans/{scan_id}").json()["current_check"] == "bf_oi.closest":
                    break
                threading.Event().wait(0.05)
            r = alice.delete(f"/v1/scans/{scan_id}")
            assert r.status_code == 202 and r.json()["cancel_requested"] is True
            scan = wait_scan(alice, scan_id)
            assert scan["status"] == "canceled", scan
            assert scan["verdict"] is None
        for _ in range(200):
            if received:
                break
            threading.Event().wait(0.1)
        assert received, "no webhook arrived"
        body, signature = received[0]
        engine = sa.create_engine(migrated_pg)
        with engine.connect() as conn:
            secret = conn.execute(sa.text("SELECT webhook_secret FROM tenants WHERE name='alice'")).scalar_one()
        engine.dispose()
        assert verify(secret, body, signature)
        assert not verify(secret, body + b" ", signature) and not verify("wrong", body, signature)
        payload = json.loads(body)
        assert payload["scan"]["id"] == scan_id and payload["scan"]["status"] == "canceled"
    finally:
        server.shutdown()


def test_listing_paginates_with_a_cursor(prod_api, tenant_keys, migrated_pg: str) -> None:
    from svc_helpers import create_key

    from persistence.db import session_scope
    from persistence.models import Scan

    key = create_key(migrated_pg, "pager")
    tid = _tenant_id(migrated_pg, "pager")
    with session_scope(migrated_pg) as s:
        for i in range(7):
            s.add(
                Scan(
                    tenant_id=tid,
                    status="succeeded" if i % 2 else "failed",
                    verdict="clean" if i % 2 else None,
                    model_key="k",
                    model_sha256=f"{i:064d}",
                    model_size=1,
                    model_filename=f"m{i}",
                    model_suffix=".bin",
                )
            )
    with prod_api.client(key) as c:
        seen, cursor = [], None
        while True:
            page = c.get("/v1/scans", params={"limit": 3, **({"cursor": cursor} if cursor else {})}).json()
            seen += [s["id"] for s in page["items"]]
            cursor = page["next_cursor"]
            if not cursor:
                break
        assert len(seen) == len(set(seen)) == 7
        assert len(c.get("/v1/scans", params={"status": "succeeded"}).json()["items"]) == 3
        assert c.get("/v1/scans", params={"cursor": "garbage!"}).status_code == 422


# the DMI/SMI/BF-OI families: seconds per scan on CPU; sanitization (tens of seconds) is left out
DETECTION = {"profile": "quick", "only": ["format", "static", "dynamic", "bf_oi"]}


def test_benign_is_clean_and_red_backdoor_is_flagged(prod_api, prod_worker, tenant_keys, detection_models) -> None:
    with prod_api.client(tenant_keys["alice"]) as alice:
        ids = {
            name: upload(alice, path, [TARGET_PNG], DETECTION).json()["id"] for name, path in detection_models.items()
        }
        scans = {name: wait_scan(alice, scan_id) for name, scan_id in ids.items()}
        assert scans["benign"]["verdict"] == "clean", scans["benign"]
        assert scans["red"]["status"] == "succeeded"
        assert scans["red"]["verdict"] in ("suspicious", "backdoored"), scans["red"]
        flagged = [c["name"] for c in scans["red"]["checks"] if c["status"] in ("warn", "fail")]
        assert flagged, scans["red"]["checks"]
        sarif = alice.get(f"/v1/scans/{ids['red']}/report", params={"format": "sarif"}).json()
        assert {r["ruleId"] for r in sarif["runs"][0]["results"]} >= set(flagged)


def test_bf_oi_fans_out_as_shards_and_merges_to_the_in_process_result(
    prod_api, prod_worker, tenant_keys, detection_models, s3_server: S3Server, migrated_pg: str
) -> None:
    def config(n_shards: int) -> dict:
        return {
            "profile": "quick",
            "only": ["format", "bf_oi.closest"],
            "params": {"bf_oi.closest": {"n_shards": n_shards}},
        }

    with prod_api.client(tenant_keys["alice"]) as alice:
        sharded_id = upload(alice, detection_models["benign"], [TARGET_PNG], config(3)).json()["id"]
        single_id = upload(alice, detection_models["benign"], [TARGET_PNG], config(1)).json()["id"]
        sharded, single = wait_scan(alice, sharded_id), wait_scan(alice, single_id)
        assert sharded["status"] == single["status"] == "succeeded", (sharded, single)
        tid = _tenant_id(migrated_pg, "alice")
        shard_objects = s3_server.keys(f"tenants/{tid}/scans/{sharded_id}/shards/bf_oi.closest/")
        assert len(shard_objects) == 3, shard_objects  # three shard tasks ran and stored partials
        assert s3_server.keys(f"tenants/{tid}/scans/{single_id}/shards/") == []  # one shard: no fan-out
        a = next(c for c in sharded["checks"] if c["name"] == "bf_oi.closest")
        b = next(c for c in single["checks"] if c["name"] == "bf_oi.closest")
        assert a["status"] == b["status"] and a["score"] == pytest.approx(b["score"], rel=1e-5)


def test_sanitized_model_download(
    prod_api, prod_worker, prod_env, tenant_keys, detection_models, migrated_pg: str, tmp_path: Path
) -> None:
    """The sanitized checkpoint a sanitization check writes is recorded as such and downloadable.

    (Sanitization does not converge on these small random-init models within a test's budget, so the
    checkpoint is written here as the check would write it, then recorded by the worker's own code.)"""
    from persistence.scanconfig import ScanConfigIn
    from persistence.settings import Settings
    from persistence.storage import get_store
    from worker.jobs import ScanInputs, upload_artifacts

    with prod_api.client(tenant_keys["alice"]) as alice:
        assert alice.get(f"/v1/scans/{'0' * 32}/sanitized-model").status_code == 404
        scan = wait_scan(
            alice, upload(alice, detection_models["red"], [], {"profile": "quick", "only": ["format"]}).json()["id"]
        )
        assert alice.get(f"/v1/scans/{scan['id']}/sanitized-model").status_code == 404  # none written
        name = "sanitization.distillation/sanitized.safetensors"
        (tmp_path / "sanitization.distillation").mkdir()
        (tmp_path / name).write_bytes(detection_models["benign"].read_bytes())
        report = {
            "checks": [
                {
                    "name": "sanitization.distillation",
                    "family": "sanitization",
                    "artifacts": [
                        {"name": name, "media_type": "application/octet-stream", "description": "sanitized generator"}
                    ],
                }
            ]
        }
        settings = Settings(
            **{k[len("DGMSCAN_") :].lower(): v for k, v in prod_env.items() if k.startswith("DGMSCAN_")}
        )
        inputs = ScanInputs(scan["id"], _tenant_id(migrated_pg, "alice"), "", "", "", [], ScanConfigIn())
        upload_artifacts(migrated_pg, get_store(settings), inputs, tmp_path, report)
        kinds = {a["name"]: a["kind"] for a in alice.get(f"/v1/scans/{scan['id']}/artifacts").json()["items"]}
        assert kinds[name] == "sanitized_model"
        r = alice.get(f"/v1/scans/{scan['id']}/sanitized-model")
        assert r.status_code == 307
        blob = httpx.get(r.headers["location"], timeout=30)
        assert blob.content == detection_models["benign"].read_bytes()
        assert 'filename="sanitized.safetensors"' in blob.headers.get("content-disposition", "")
