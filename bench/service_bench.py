"""Service benchmark: GET /v1/scans/{id} throughput and latency with >= 10,000 stored scans, and
the API's memory (RSS) while a 1 GB upload streams through it.

    .venv/bin/python bench/service_bench.py [--scans 10000] [--requests 5000] [--concurrency 32] [--upload-mb 1024]

Needs the machine's Postgres (127.0.0.1:5432, trust auth; a fresh database is created and dropped)
and Redis (db 12, only for the API's broker connection; no worker runs). The API runs as a real
uvicorn process (1 worker) on loopback. Results: bench/results/service_bench.json and .md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import sqlalchemy as sa

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from persistence.db import session_scope, upgrade_to_head  # noqa: E402
from persistence.keys import create_key  # noqa: E402
from persistence.models import CheckRow, Scan, new_id  # noqa: E402

PG_ADMIN = os.environ.get("DGMSCAN_BENCH_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS = os.environ.get("DGMSCAN_BENCH_REDIS", "redis://127.0.0.1:6379/12")
CHECK_NAMES = [
    "format.detection",
    "format.pickle_scan",
    "static.bias_outliers",
    "static.block_sparsity",
    "static.bypass_topology",
    "dynamic.sleeper_units",
    "dynamic.gradient_health",
    "bf_oi.closest",
    "ob_oi.recon",
    "sanitization.distillation",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def populate(db_url: str, n_scans: int) -> tuple[str, list[str]]:
    """Insert n scans (10 check rows each) for one tenant, plus 10% for a second tenant."""
    with session_scope(db_url) as s:
        key = create_key(s, "bench").key
        tenant_id = s.scalar(sa.text("SELECT id FROM tenants WHERE name='bench'"))
        other = create_key(s, "other").tenant_id
    ids: list[str] = []
    now = datetime.now(timezone.utc)
    engine = sa.create_engine(db_url)
    batch = 1000
    for start in range(0, n_scans + n_scans // 10, batch):
        scans, checks = [], []
        for i in range(start, min(start + batch, n_scans + n_scans // 10)):
            sid = new_id()
            tid = tenant_id if i < n_scans else other
            if tid == tenant_id:
                ids.append(sid)
            scans.append(
                {
                    "id": sid,
                    "tenant_id": tid,
                    "status": "succeeded",
                    "verdict": random.choice(["clean", "suspicious", "backdoored"]),
                    "progress": 1.0,
                    "current_check": None,
                    "profile": "quick",
                    "queue": "cpu",
                    "config": {"profile": "quick"},
                    "model_key": f"tenants/{tid}/blobs/sha256/{i:064x}",
                    "model_sha256": f"{i:064x}",
                    "model_size": 1_500_000,
                    "model_filename": f"model-{i}.safetensors",
                    "model_suffix": ".safetensors",
                    "targets": [],
                    "callback_url": None,
                    "cancel_requested": False,
                    "error": None,
                    "report_keys": {},
                    "attempts": 1,
                    "created_at": now - timedelta(seconds=i),
                    "started_at": now - timedelta(seconds=i),
                    "finished_at": now - timedelta(seconds=i - 1),
                    "updated_at": now,
                }
            )
            for pos, name in enumerate(CHECK_NAMES):
                checks.append(
                    {
                        "scan_id": sid,
                        "name": name,
                        "position": pos,
                        "status": "pass",
                        "score": 0.5,
                        "threshold": 1.0,
                        "summary": "benchmark row",
                        "duration_s": 0.1,
                    }
                )
        with engine.begin() as conn:
            conn.execute(sa.insert(Scan.__table__), scans)
            conn.execute(sa.insert(CheckRow.__table__), checks)
    engine.dispose()
    return key, ids


def start_api(env: dict[str, str], log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [sys.executable, "-m", "uvicorn", "api.main:create_app", "--factory", "--port", str(port)]
    cmd += ["--log-level", "warning", "--no-access-log", "--timeout-keep-alive", "60"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    print(f"API pid {proc.pid}, log {log}", flush=True)
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(log.read_text()[-3000:])


async def get_load(url: str, key: str, ids: list[str], n_requests: int, concurrency: int) -> dict:
    latencies: list[float] = []
    errors = 0
    queue: asyncio.Queue[str] = asyncio.Queue()
    for _ in range(n_requests):
        queue.put_nowait(random.choice(ids))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(
        base_url=url, headers={"Authorization": f"Bearer {key}"}, limits=limits, timeout=30
    ) as client:
        for sid in ids[:50]:  # warm-up
            await client.get(f"/v1/scans/{sid}")

        async def worker() -> None:
            nonlocal errors
            while not queue.empty():
                sid = queue.get_nowait()
                t0 = time.perf_counter()
                try:
                    r = await client.get(f"/v1/scans/{sid}")
                except httpx.TransportError:
                    errors += 1  # counted, not retried: a dropped connection is a failed request
                    continue
                latencies.append(time.perf_counter() - t0)
                if r.status_code != 200 or len(r.json()["checks"]) != len(CHECK_NAMES):
                    errors += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    latencies.sort()

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000

    return {
        "requests": n_requests,
        "concurrency": concurrency,
        "errors": errors,
        "wall_s": round(wall, 3),
        "throughput_rps": round(n_requests / wall, 1),
        "latency_ms": {
            "mean": round(statistics.fmean(latencies) * 1000, 2),
            "p50": round(pct(0.50), 2),
            "p90": round(pct(0.90), 2),
            "p99": round(pct(0.99), 2),
            "max": round(latencies[-1] * 1000, 2),
        },
    }


def upload_memory(url: str, key: str, pid: int, size_mb: int) -> dict:
    """Stream `size_mb` MiB as the model part of a multipart POST; sample the API's RSS meanwhile."""
    boundary = "benchboundary" + secrets.token_hex(4)
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="model"; filename="big.safetensors"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    tail = (
        f'\r\n--{boundary}\r\nContent-Disposition: form-data; name="config"\r\n\r\n{{}}\r\n--{boundary}--\r\n'.encode()
    )
    block = os.urandom(1 << 20)

    def body():
        yield head
        for _ in range(size_mb):
            yield block
        yield tail

    samples: list[int] = []
    stop = threading.Event()

    def sampler() -> None:
        while not stop.is_set():
            samples.append(rss_kib(pid))
            time.sleep(0.05)

    baseline = rss_kib(pid)
    t = threading.Thread(target=sampler)
    t.start()
    t0 = time.perf_counter()
    r = httpx.post(
        url + "/v1/scans",
        content=body(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": f"multipart/form-data; boundary={boundary}"},
        timeout=600,
    )
    wall = time.perf_counter() - t0
    stop.set()
    t.join()
    return {
        "upload_mib": size_mb,
        "status": r.status_code,
        "sha256_matches": r.status_code == 202 and len(r.json()["model"]["sha256"]) == 64,
        "wall_s": round(wall, 2),
        "throughput_mib_s": round(size_mb / wall, 1),
        "rss_baseline_mib": round(baseline / 1024, 1),
        "rss_peak_mib": round(max(samples) / 1024, 1),
        "rss_growth_mib": round((max(samples) - baseline) / 1024, 1),
        "samples": len(samples),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scans", type=int, default=10_000)
    ap.add_argument("--requests", type=int, default=5_000)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--upload-mb", type=int, default=1024)
    ap.add_argument("--out", type=Path, default=REPO / "bench/results/service_bench.json")
    args = ap.parse_args()

    admin = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    name = f"dgmscan_bench_{secrets.token_hex(5)}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    db_url = PG_ADMIN.rsplit("/", 1)[0] + "/" + name
    proc = None
    tmp = Path(tempfile.mkdtemp(prefix="dgmscan-bench-"))
    try:
        upgrade_to_head(db_url)
        t0 = time.perf_counter()
        key, ids = populate(db_url, args.scans)
        populate_s = time.perf_counter() - t0
        env = {k: v for k, v in os.environ.items() if not k.startswith("DGMSCAN_")}
        env.update(
            PYTHONPATH=str(REPO),
            DGMSCAN_DATABASE_URL=db_url,
            DGMSCAN_BROKER_URL=REDIS,
            DGMSCAN_DATA_DIR=str(tmp),
            DGMSCAN_MAX_MODEL_BYTES=str((args.upload_mb + 64) << 20),
        )
        proc, url = start_api(env, tmp / "api.log")
        get_results = [asyncio.run(get_load(url, key, ids, args.requests, c)) for c in args.concurrency]
        upload_result = upload_memory(url, key, proc.pid, args.upload_mb)
        result = {
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "machine": {
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "platform": platform.platform(),
                "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()],  # other work on the box skews numbers
            },
            "setup": {
                "scans_stored": args.scans + args.scans // 10,
                "scans_of_tenant": args.scans,
                "check_rows_per_scan": len(CHECK_NAMES),
                "populate_s": round(populate_s, 1),
                "api": "uvicorn, 1 process, Postgres, local-disk object store, loopback",
            },
            "get_scan": get_results,
            "upload_1gb": upload_result,
        }
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    u = result["upload_1gb"]
    rows = "\n".join(
        f"| {g['concurrency']} | {g['requests']} | {g['throughput_rps']} | {g['latency_ms']['p50']} | "
        f"{g['latency_ms']['p90']} | {g['latency_ms']['p99']} | {g['latency_ms']['max']} | {g['errors']} |"
        for g in result["get_scan"]
    )
    md = f"""# Service benchmark ({result["date"]})

Machine: {result["machine"]["cpus"]} CPUs, Python {result["machine"]["python"]}, load average at the end
{result["machine"]["load_average_1_5_15"]} (other work on the machine). API: {result["setup"]["api"]}.
Stored: {result["setup"]["scans_stored"]} scans ({result["setup"]["check_rows_per_scan"]} check rows each).

GET /v1/scans/{{id}} (random ids of the tenant; each answer carries {len(CHECK_NAMES)} check rows):

| concurrency | requests | req/s | p50 ms | p90 ms | p99 ms | max ms | errors |
|---|---|---|---|---|---|---|---|
{rows}

| {u["upload_mib"]} MiB upload (streamed multipart) | value |
|---|---|
| HTTP status | {u["status"]} |
| time / throughput | {u["wall_s"]} s / {u["throughput_mib_s"]} MiB/s |
| API RSS baseline / peak / growth | {u["rss_baseline_mib"]} / {u["rss_peak_mib"]} / {u["rss_growth_mib"]} MiB |
"""
    args.out.with_suffix(".md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
