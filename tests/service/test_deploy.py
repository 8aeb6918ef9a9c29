"""Deployment files, validated offline: docker-compose.yml against the Compose specification schema
(check-jsonschema's vendored copy), Dockerfiles and entrypoints consistent with the code."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml
from svc_helpers import REPO

from persistence.settings import Settings

CHECK_JSONSCHEMA = Path(sys.executable).parent / "check-jsonschema"


def _validate(path: Path) -> subprocess.CompletedProcess:
    assert CHECK_JSONSCHEMA.exists(), "check-jsonschema (dev dependency) is required"
    cmd = [str(CHECK_JSONSCHEMA), "--builtin-schema", "vendor.compose-spec", str(path)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def test_compose_file_matches_the_compose_spec(tmp_path: Path) -> None:
    ok = _validate(REPO / "docker-compose.yml")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    # negative control: the validator does reject a malformed file
    broken = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    broken["services"]["api"]["depends_on"] = {"migrate": {"condition": "whenever"}}
    (tmp_path / "broken.yml").write_text(yaml.safe_dump(broken))
    assert _validate(tmp_path / "broken.yml").returncode != 0


def test_compose_services_health_checks_gpu_and_settings_names() -> None:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"postgres", "redis", "minio", "minio-init", "migrate", "api", "worker-cpu", "worker-gpu"} <= set(services)
    for name in ("postgres", "redis", "minio", "api"):
        assert "healthcheck" in services[name], name
    gpu = services["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["driver"] == "nvidia" and "gpu" in gpu["capabilities"]
    assert "mb" in " ".join(services["minio-init"]["command"])  # the bucket is created
    assert services["api"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    # every DGMSCAN_* variable the deployment sets is a real setting (a typo would be silently ignored)
    fields = {f"DGMSCAN_{name.upper()}" for name in Settings.model_fields}
    extra_ok = {"DGMSCAN_QUEUES", "DGMSCAN_CONCURRENCY", "DGMSCAN_LOGLEVEL", "DGMSCAN_PORT", "DGMSCAN_API_WORKERS"}
    for name, svc in services.items():
        env = svc.get("environment") or {}
        unknown = {k for k in env if k.startswith("DGMSCAN_")} - fields - extra_ok
        assert not unknown, f"{name}: unknown settings {unknown}"
    for name, svc in services.items():
        build = svc.get("build")
        if build:
            dockerfile = REPO / build["dockerfile"]
            assert dockerfile.is_file(), f"{name}: {dockerfile} missing"


def test_dockerfiles_and_entrypoints() -> None:
    for name in ("Dockerfile.api", "Dockerfile.worker-cpu", "Dockerfile.worker-cuda"):
        text = (REPO / "docker" / name).read_text()
        for line in text.splitlines():
            if line.startswith("COPY ") and "--from" not in line:
                for src in line.split()[1:-1]:
                    assert (REPO / src).exists(), f"{name}: COPY source {src} missing"
    assert "cuda" in (REPO / "docker/Dockerfile.worker-cuda").read_text().splitlines()[2].lower()
    for script in ("entrypoint-api.sh", "entrypoint-worker.sh", "entrypoint-migrate.sh"):
        path = REPO / "docker" / script
        assert path.stat().st_mode & 0o111, f"{script} is not executable"
        assert subprocess.run(["sh", "-n", str(path)]).returncode == 0, f"{script}: shell syntax error"
    assert "worker.celery_app" in (REPO / "docker/entrypoint-worker.sh").read_text()
    assert "api.main:create_app" in (REPO / "docker/entrypoint-api.sh").read_text()
