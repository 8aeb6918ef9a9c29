"""Embedded defaults: `dgmscan serve` alone (SQLite, local disk, in-process Celery worker), no
external service. Real HTTP; the same task code as production."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from svc_helpers import REPO, service_env, stop, upload, wait_scan
from svc_models import TARGET_PNG, make_malicious_pickle


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, Path]]:
    data_dir = tmp_path_factory.mktemp("embedded-var")
    log_path = data_dir.parent / "embedded-serve.log"
    env = service_env(DGMSCAN_DATA_DIR=str(data_dir))
    # the service verbs of `dgmscan` (serve/worker/keys), without the library verbs' imports
    cmd = [sys.executable, str(REPO / "tests/service/svc_cli.py"), "serve", "--port", "0"]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        url = key = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (url and key):
            lines = log_path.read_text().splitlines()
            url = next((ln.split()[3] for ln in lines if ln.startswith("dgmscan API on http://")), None)
            key = next((ln for ln in lines if ln.startswith("dgm_")), None)
            if proc.poll() is not None:
                pytest.fail(f"dgmscan serve exited: {log_path.read_text()[-3000:]}")
            time.sleep(0.2)
        assert url and key, log_path.read_text()
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"embedded API not ready: {log_path.read_text()[-3000:]}")
            time.sleep(0.2)
        yield url, key, data_dir
    finally:
        stop(proc)


def test_embedded_defaults_scan_end_to_end(embedded, detection_models, tmp_path: Path) -> None:
    url, key, data_dir = embedded
    benign = detection_models["benign"]
    evil = make_malicious_pickle(tmp_path / "evil.ckpt")
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as c:
        assert c.get("/readyz").json()["components"] == {"database": "ok", "broker": "ok", "storage": "ok"}
        detection = {"profile": "quick", "only": ["format", "static", "dynamic", "bf_oi"]}
        good = upload(c, benign, [TARGET_PNG], detection)
        red = upload(c, detection_models["red"], [TARGET_PNG], detection)
        bad = upload(c, evil, config={"profile": "quick", "only": ["format"]})
        assert good.status_code == red.status_code == bad.status_code == 202
        good_scan = wait_scan(c, good.json()["id"])
        red_scan = wait_scan(c, red.json()["id"])
        bad_scan = wait_scan(c, bad.json()["id"])
        assert (good_scan["status"], good_scan["verdict"]) == ("succeeded", "clean"), good_scan
        assert red_scan["verdict"] in ("suspicious", "backdoored"), red_scan
        assert (bad_scan["status"], bad_scan["verdict"]) == ("succeeded", "rejected"), bad_scan
        html = c.get(f"/v1/scans/{good_scan['id']}/report", params={"format": "html"})
        assert html.status_code == 200 and "benign.safetensors" in html.text
        arts = c.get(f"/v1/scans/{good_scan['id']}/artifacts").json()["items"]
        art = c.get(f"/v1/scans/{good_scan['id']}/artifacts/{arts[0]['name']}")  # streamed from local disk
        assert art.status_code == 200 and len(art.content) == arts[0]["size_bytes"]
        assert "attachment" in art.headers["content-disposition"]
    assert (data_dir / "dgmscan.db").is_file() and (data_dir / "objects").is_dir()
    assert not Path("/tmp/dgmscan-pwned").exists()


def _serve(data_dir: Path, log_path: Path) -> tuple[subprocess.Popen, str, str]:
    env = service_env(DGMSCAN_DATA_DIR=str(data_dir))
    cmd = [sys.executable, str(REPO / "tests/service/svc_cli.py"), "serve", "--port", "0"]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        lines = log_path.read_text().splitlines()
        url = next((ln.split()[3] for ln in lines if ln.startswith("dgmscan API on http://")), None)
        key = next((ln for ln in lines if ln.startswith("dgm_")), None)
        if url and key:
            return proc, url, key
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    stop(proc)
    pytest.fail(f"dgmscan serve did not start: {log_path.read_text()[-3000:]}")


def test_embedded_restart_requeues_unfinished_scans(detection_models, tmp_path: Path) -> None:
    """The memory broker forgets queued tasks when the process stops; the next start re-enqueues them."""
    import hashlib

    from persistence.db import session_scope
    from persistence.models import Scan, Tenant
    from persistence.storage import LocalObjectStore, blob_key

    data_dir = tmp_path / "var"
    proc, _, _ = _serve(data_dir, tmp_path / "first.log")  # creates and migrates the SQLite database
    stop(proc)
    db_url = f"sqlite:///{(data_dir / 'dgmscan.db').resolve()}"
    model = detection_models["benign"].read_bytes()
    sha = hashlib.sha256(model).hexdigest()
    with session_scope(db_url) as s:
        tenant = s.query(Tenant).filter_by(name="local").one()
        LocalObjectStore(data_dir / "objects").put_bytes(blob_key(tenant.id, sha), model)
        scan = Scan(
            tenant_id=tenant.id,
            status="queued",
            model_key=blob_key(tenant.id, sha),
            model_sha256=sha,
            model_size=len(model),
            model_filename="left-over.safetensors",
            model_suffix=".safetensors",
            config={"profile": "quick", "only": ["format"]},
        )
        s.add(scan)
    proc, url, key = _serve(data_dir, tmp_path / "second.log")
    try:
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as c:
            finished = wait_scan(c, scan.id, timeout_s=120)
        assert finished["status"] == "succeeded" and finished["verdict"] == "clean", finished
    finally:
        stop(proc)
