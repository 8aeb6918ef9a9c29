"""A longer soak of a running dgmscan deployment (run by hand, not in CI).

For `--minutes`, keeps `--concurrency` clients uploading a mix of benign models and hostile files
from tests/hostile_corpus.py under two tenants, polling every scan to the end, and cross-checking
each tenant's listing against the other's ids. At the end it prints (and writes as JSON with --out)
counts per outcome, any 5xx, any scan stuck, any cross-tenant leak, and whether a canary file from a
pickle payload appeared. Exit code 0 only if nothing went wrong.

    python bench/soak.py --url http://127.0.0.1:8000 --key-a KEY_A --key-b KEY_B --minutes 30

Keys come from `dgmscan keys create --tenant soak-a` (and soak-b).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests/service"))

TERMINAL = ("succeeded", "failed", "canceled")
CONFIG = {"profile": "quick", "only": ["format", "static.bias_outliers"]}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True, help="base URL of the API")
    parser.add_argument("--key-a", required=True, help="API key of the first tenant")
    parser.add_argument("--key-b", required=True, help="API key of the second tenant")
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--hostile-fraction", type=float, default=0.5)
    parser.add_argument("--scan-timeout-s", type=float, default=1800.0)
    parser.add_argument("--out", type=Path, default=None, help="write the summary as JSON here")
    return parser.parse_args(argv)


class Soak:
    """Shared state of the client threads (guarded by one lock)."""

    def __init__(self, args: argparse.Namespace, files: list[Path], benign: Path, corpus_dir: Path) -> None:
        self.args = args
        self.files = files
        self.benign = benign
        self.corpus_dir = corpus_dir
        self.lock = threading.Lock()
        self.outcomes: Counter[str] = Counter()
        self.server_errors: list[str] = []
        self.stuck: list[str] = []
        self.leaks: list[str] = []
        self.ids: dict[str, set[str]] = {"a": set(), "b": set()}
        self.deadline = time.monotonic() + args.minutes * 60

    def record(self, outcome: str) -> None:
        with self.lock:
            self.outcomes[outcome] += 1

    def client_loop(self, seed: int) -> None:
        rng = random.Random(seed)
        while time.monotonic() < self.deadline:
            tenant = rng.choice(["a", "b"])
            key = self.args.key_a if tenant == "a" else self.args.key_b
            path = rng.choice(self.files) if rng.random() < self.args.hostile_fraction else self.benign
            with httpx.Client(base_url=self.args.url, headers={"Authorization": f"Bearer {key}"}, timeout=120) as c:
                try:
                    with path.open("rb") as fh:
                        r = c.post("/v1/scans", files={"model": (path.name, fh)}, data={"config": json.dumps(CONFIG)})
                except httpx.HTTPError as exc:
                    self.record(f"transport_error:{type(exc).__name__}")
                    continue
                if r.status_code >= 500:
                    self.server_errors.append(f"POST {path.name}: {r.status_code} {r.text[:200]}")
                    continue
                if r.status_code != 202:
                    self.record(f"upload_{r.status_code}")
                    continue
                scan_id = r.json()["id"]
                with self.lock:
                    self.ids[tenant].add(scan_id)
                self.follow(c, tenant, scan_id, path.name)

    def follow(self, c: httpx.Client, tenant: str, scan_id: str, name: str) -> None:
        end = time.monotonic() + self.args.scan_timeout_s
        while time.monotonic() < end:
            r = c.get(f"/v1/scans/{scan_id}")
            if r.status_code >= 500:
                self.server_errors.append(f"GET {scan_id}: {r.status_code}")
            elif r.status_code == 200 and r.json()["status"] in TERMINAL:
                body = r.json()
                self.record(f"{'benign' if name == self.benign.name else 'hostile'}:{body['status']}/{body['verdict']}")
                self.check_isolation(c, tenant)
                return
            time.sleep(1.0)
        self.stuck.append(scan_id)

    def check_isolation(self, c: httpx.Client, tenant: str) -> None:
        other = "b" if tenant == "a" else "a"
        with self.lock:
            others = set(self.ids[other])
        listed = {item["id"] for item in c.get("/v1/scans?limit=200").json()["items"]}
        if listed & others:
            self.leaks.append(f"tenant {tenant} lists {sorted(listed & others)[:3]}")
        for scan_id in list(others)[:3]:
            if c.get(f"/v1/scans/{scan_id}").status_code != 404:
                self.leaks.append(f"tenant {tenant} reads {scan_id}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from svc_models import make_benign

    from tests.hostile_corpus import CANARY_NAME, write_corpus

    with tempfile.TemporaryDirectory(prefix="dgmscan-soak-") as tmp:
        corpus_dir = Path(tmp) / "corpus"
        corpus_dir.mkdir()
        files = [path for path, _ in write_corpus(corpus_dir).values()]
        benign = make_benign(Path(tmp) / "benign.safetensors")
        soak = Soak(args, files, benign, corpus_dir)
        started = time.monotonic()
        threads = [threading.Thread(target=soak.client_loop, args=(i,), daemon=True) for i in range(args.concurrency)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        canary = bool(list(corpus_dir.rglob(CANARY_NAME)))
        health = httpx.get(args.url + "/healthz", timeout=10).status_code
        summary = {
            "minutes": round((time.monotonic() - started) / 60, 2),
            "outcomes": dict(soak.outcomes),
            "scans": sum(len(v) for v in soak.ids.values()),
            "server_errors": soak.server_errors,
            "stuck": soak.stuck,
            "cross_tenant_leaks": soak.leaks,
            "canary_created": canary,
            "healthz_after": health,
        }
    print(json.dumps(summary, indent=2))
    if args.out:
        args.out.write_text(json.dumps(summary, indent=2))
    ok = not (soak.server_errors or soak.stuck or soak.leaks or canary) and health == 200
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
