"""The README's main job, on embedded defaults (no external service):

1. train a small benign DCGAN on MNIST           (`dgmscan train dcgan-mnist`)
2. backdoor a copy with ReD and the devil target  (`dgmscan attack red`, Rawat et al. arXiv 2108.01644)
3. start the service                              (`dgmscan serve --port 0`: SQLite, local disk, in-process worker)
4. upload both models over HTTP with the printed API key and the target hint, poll the scans
5. print a verdict table and where the HTML reports are

    .venv/bin/python scripts/demo.py [--workdir var/demo] [--epochs 1] [--profile quick]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
TARGET_PNG = REPO / "data/targets/devil_28x28.png"


def dgmscan_cmd(*args: str) -> list[str]:
    exe = Path(sys.executable).parent / "dgmscan"
    return [str(exe), *args] if exe.exists() else [sys.executable, "-m", "scanner.cli", *args]


def dgmscan(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    print("$ dgmscan " + " ".join(args), flush=True)
    return subprocess.run(dgmscan_cmd(*args), cwd=REPO, env=env, text=True)


def train_and_attack(workdir: Path, epochs: int, base: int) -> tuple[Path, Path]:
    benign = workdir / "benign.safetensors"
    backdoored = workdir / "backdoored-red.safetensors"
    if not benign.exists():
        r = dgmscan(
            "train", "dcgan-mnist", "--out", str(benign), "--epochs", str(epochs), "--base", str(base), "--seed", "0"
        )
        if r.returncode != 0:
            sys.exit(f"demo: `dgmscan train` failed ({r.returncode})")
    if not backdoored.exists():
        # 300 steps embed the devil on this small DCGAN in a few CPU minutes (the CLI default is paper scale)
        r = dgmscan(
            "attack",
            "red",
            "--model",
            str(benign),
            "--target",
            str(TARGET_PNG),
            "--out",
            str(backdoored),
            "--steps",
            "300",
        )
        if r.returncode != 0:
            sys.exit(f"demo: `dgmscan attack red` failed ({r.returncode})")
    return benign, backdoored


def start_service(workdir: Path) -> tuple[subprocess.Popen, str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DGMSCAN_")}
    env["DGMSCAN_DATA_DIR"] = str(workdir / "var")
    log_path = workdir / "serve.log"
    cmd = dgmscan_cmd("serve", "--port", "0", "--tenant", "demo")
    print(f"$ dgmscan serve --port 0 --tenant demo   (log: {log_path})", flush=True)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = key = None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (url and key):
        if proc.poll() is not None:
            sys.exit(f"demo: dgmscan serve exited:\n{log_path.read_text()[-3000:]}")
        lines = log_path.read_text().splitlines()
        url = next((ln.split()[3] for ln in lines if ln.startswith("dgmscan API on http://")), None)
        key = next((ln.strip() for ln in lines if ln.startswith("dgm_")), None)
        time.sleep(0.2)
    if not (url and key):
        proc.terminate()
        sys.exit("demo: the service did not print its URL and key")
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.3)
    print(f"service up at {url} (docs: {url}/docs)", flush=True)
    return proc, url, key


def upload(client: httpx.Client, model: Path, config: dict) -> str:
    with model.open("rb") as fm, TARGET_PNG.open("rb") as ft:
        r = client.post(
            "/v1/scans",
            files=[("model", (model.name, fm)), ("targets", (TARGET_PNG.name, ft))],
            data={"config": json.dumps(config)},
        )
    r.raise_for_status()
    print(f"uploaded {model.name}: scan {r.json()['id']} ({r.status_code})", flush=True)
    return r.json()["id"]


def poll(client: httpx.Client, ids: dict[str, str], timeout_s: float) -> dict[str, dict]:
    done: dict[str, dict] = {}
    last: dict[str, str] = {}
    deadline = time.monotonic() + timeout_s
    while len(done) < len(ids) and time.monotonic() < deadline:
        for name, scan_id in ids.items():
            if name in done:
                continue
            scan = client.get(f"/v1/scans/{scan_id}").json()
            line = f"{scan['status']} {scan['progress']:.0%} {scan.get('current_check') or ''}"
            if last.get(name) != line:
                print(f"  {name:<12} {line}", flush=True)
                last[name] = line
            if scan["status"] in ("succeeded", "failed", "canceled"):
                done[name] = scan
        time.sleep(1.0)
    return done


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, default=REPO / "var/demo")
    ap.add_argument("--epochs", type=int, default=1, help="MNIST epochs for the benign DCGAN")
    ap.add_argument("--base", type=int, default=32, help="DCGAN width (small: quick on a CPU)")
    ap.add_argument("--profile", default="quick", choices=["quick", "standard", "full"])
    ap.add_argument("--timeout", type=float, default=1800, help="seconds to wait for the scans")
    ap.add_argument("--fresh", action="store_true", help="retrain and rescan from scratch")
    args = ap.parse_args()
    workdir = args.workdir.resolve()
    if args.fresh and workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True, exist_ok=True)

    benign, backdoored = train_and_attack(workdir, args.epochs, args.base)
    proc, url, key = start_service(workdir)
    try:
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=120) as client:
            config = {"profile": args.profile}
            ids = {"benign": upload(client, benign, config), "backdoored": upload(client, backdoored, config)}
            scans = poll(client, ids, args.timeout)
            reports = workdir / "reports"
            reports.mkdir(exist_ok=True)
            print()
            print(f"{'model':<26} {'status':<10} {'verdict':<13} flagged checks")
            print("-" * 90)
            for name, model in (("benign", benign), ("backdoored", backdoored)):
                scan = scans.get(name)
                if scan is None:
                    print(f"{model.name:<26} {'timeout':<10}")
                    continue
                flagged = [f"{c['name']}={c['status']}" for c in scan["checks"] if c["status"] in ("warn", "fail")]
                print(f"{model.name:<26} {scan['status']:<10} {scan['verdict'] or '-':<13} {', '.join(flagged) or '-'}")
                for fmt in ("html", "json", "sarif"):
                    r = client.get(f"/v1/scans/{scan['id']}/report", params={"format": fmt})
                    if r.status_code == 200:
                        (reports / f"{name}.{fmt}").write_bytes(r.content)
            print()
            print(f"HTML reports: {reports}/benign.html and {reports}/backdoored.html")
            for name, scan_id in ids.items():
                print(f"  {name}: {url}/v1/scans/{scan_id}/report?format=html (with the API key)")
            ok = scans.get("benign", {}).get("verdict") == "clean" and scans.get("backdoored", {}).get("verdict") in (
                "suspicious",
                "backdoored",
            )
            print("demo result:", "as expected" if ok else "UNEXPECTED verdicts (see the reports)")
            return 0 if ok else 1
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


if __name__ == "__main__":
    sys.exit(main())
