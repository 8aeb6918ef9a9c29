"""Speed and scale figures, measured side by side in one run and reported as ratios.

1. Dense-matmul FLOP rate of this machine (torch.matmul on large fp32 square matrices): the roofline
   against which BF-OI's achieved FLOP/s is expressed.
2. BF-OI Closest-N (paper's Closest1M, Rawat et al. arXiv 2108.01644 Sec. V-C): the project's fused,
   batched loop (scanner.search.closest.closest_n) vs a naive loop, one latent at a time.
3. OB-OI ReconD (Sec. V-D): R restarts batched in one Adam run vs R sequential runs (same init, steps).
4. End-to-end scan time through the CLI (`dgmscan scan`) and through the embedded service
   (`dgmscan serve`, HTTP upload + polling).
5. Scale-out: BF-OI shards (scanner.search.closest.closest_blocks over block ranges) on one worker
   process vs two worker processes (multiprocessing, spawn).

All timings are medians over repeats; the machine (CPU model, cores, torch version, load average)
is recorded with them because the machine is shared with other work.
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from bench.zoo import DEVIL_PNG, ZooEntry, load_target
from scanner.generator import Generator
from scanner.search.closest import block_layout, closest_blocks, closest_n
from scanner.search.common import eval_copy
from scanner.search.recond import reconstruct, restart_latents

log = logging.getLogger("bench.speed")
# Full mode: the paper's Closest1M (N = 10^6 rounded to whole 4096-sample blocks).
FULL_BF_OI_N = 1_048_576
GPU_BATCH_SWEEP = (4096, 16384, 65536)
RESUMABLE_STAGES = ("matmul", "bf_oi", "bf_oi_batch_sweep", "ob_oi", "scale_out", "cli", "service")
REPO = Path(__file__).resolve().parent.parent


def machine_info(device: str) -> dict[str, Any]:
    """CPU model, logical cores, torch version and threads, load average, accelerator name if any."""
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "logical_cores": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "load_average": list(os.getloadavg()),
        "device": device,
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_time(fn: Any, repeats: int, device: torch.device) -> float:
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def matmul_flops(device: str, size: int, repeats: int) -> dict[str, Any]:
    """Dense fp32 matmul rate: 2·n³ FLOPs per product, median over repeats (one warm-up)."""
    dev = torch.device(device)
    a = torch.randn(size, size, device=dev)
    b = torch.randn(size, size, device=dev)
    torch.matmul(a, b)
    t = _median_time(lambda: torch.matmul(a, b), repeats, dev)
    return {"size": size, "median_s": t, "flops_per_s": 2 * size**3 / t, "repeats": repeats}


def forward_flops(generator: Generator) -> float:
    """FLOPs of one sample's forward pass (torch.utils.flop_counter; matmul/conv FLOPs)."""
    from torch.utils.flop_counter import FlopCounterMode

    g = eval_copy(generator)
    z = g.latent.sample(8, device=g.device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        g(z)
    return counter.get_total_flops() / 8


@torch.no_grad()
def naive_closest(generator: Generator, target: torch.Tensor, n: int, seed: int) -> float:
    """The obvious loop: draw one z, run G, compare with the target, keep the minimum. Returns min distance."""
    g = eval_copy(generator)
    rng = torch.Generator().manual_seed(seed)
    target = target.reshape(1, -1).to(g.device)
    best = float("inf")
    for _ in range(n):
        z = g.latent.sample(1, generator=rng).to(g.device)
        d = float(((g(z).reshape(1, -1) - target) ** 2).sum())
        best = min(best, d)
    return best


def bf_oi_speed(
    generator: Generator, *, n_fused: int, n_naive: int, batch_size: int, repeats: int, matmul_rate: float
) -> dict[str, Any]:
    """Fused batched Closest-N vs the naive loop; achieved FLOP/s as a fraction of the matmul rate."""
    dev = generator.device
    target = load_target("devil").to(dev)
    fused_rates, naive_rates = [], []
    for r in range(repeats):
        res = closest_n(generator, target, n_fused, batch_size=batch_size, seed=r)
        fused_rates.append(res.samples_per_s)
        _sync(dev)
        t0 = time.perf_counter()
        naive_closest(generator, target, n_naive, seed=r)
        _sync(dev)
        naive_rates.append(n_naive / (time.perf_counter() - t0))
    fused, naive = statistics.median(fused_rates), statistics.median(naive_rates)
    flops = forward_flops(generator)
    numel = generator.output.numel
    achieved = fused * (flops + 2 * numel)  # + the fused distance's multiply-adds
    return {
        "n_fused": n_fused,
        "n_naive": n_naive,
        "batch_size": batch_size,
        "fused_samples_per_s": fused,
        "naive_samples_per_s": naive,
        "speedup_fused_vs_naive": fused / naive,
        "forward_flops_per_sample": flops,
        "fused_flops_per_s": achieved,
        "fraction_of_matmul_rate": achieved / matmul_rate,
        "repeats": repeats,
    }


def bf_oi_batch_sweep(
    generator: Generator, *, n: int, batch_sizes: tuple[int, ...], repeats: int
) -> list[dict[str, Any]]:
    """Fused Closest-N throughput (median samples/s over repeats) at each batch size."""
    target = load_target("devil").to(generator.device)
    rows = []
    for batch_size in batch_sizes:
        rates = [closest_n(generator, target, n, batch_size=batch_size, seed=r).samples_per_s for r in range(repeats)]
        rows.append({"n": n, "batch_size": batch_size, "samples_per_s": statistics.median(rates), "repeats": repeats})
    return rows


def ob_oi_speed(generator: Generator, *, restarts: int, steps: int, repeats: int) -> dict[str, Any]:
    """R restarts in one batched Adam run vs R runs of one restart each (same starting latents and steps)."""
    target = load_target("devil").reshape(1, *generator.output.shape)
    init = restart_latents(generator, 1, restarts, seed=0)
    dev = generator.device
    batched = _median_time(lambda: reconstruct(generator, target, steps=steps, init_z=init), repeats, dev)

    def sequential() -> None:
        for r in range(restarts):
            reconstruct(generator, target, steps=steps, init_z=init[:, r : r + 1])

    seq = _median_time(sequential, repeats, dev)
    return {
        "restarts": restarts,
        "steps": steps,
        "batched_s": batched,
        "sequential_s": seq,
        "speedup_batched_vs_sequential": seq / batched,
        "repeats": repeats,
    }


# -- scale-out: BF-OI shards over worker processes ---------------------------------------------
def _shard_worker(args: tuple[str, str, int, int, int, int, int]) -> float:
    """One worker: load the model from a safetensors file, run blocks [start, stop). Returns its seconds."""
    model_path, device, n, batch_size, start, stop, threads = args
    torch.set_num_threads(threads)
    from scanner.loading import load_generator

    g = load_generator(Path(model_path)).to(device).eval()
    target = load_target("devil").reshape(1, -1).to(device)
    refs = torch.empty((0, g.output.numel), device=device)
    t0 = time.perf_counter()
    closest_blocks(g, target, refs, n=n, batch_size=batch_size, seed=0, block_start=start, block_stop=stop)
    return time.perf_counter() - t0


def scale_out(model_path: Path, *, device: str, n: int, batch_size: int, repeats: int) -> dict[str, Any]:
    """Wall time of the same N-sample Closest-N as 1 shard in 1 worker vs 2 shards in 2 workers (1 thread each)."""
    blocks = len(block_layout(n, batch_size))
    half = blocks // 2
    ctx = mp.get_context("spawn")  # fresh interpreters: no shared torch thread pools
    one, two = [], []
    with ctx.Pool(2) as pool:
        pool.map(_shard_worker, [(str(model_path), device, batch_size, batch_size, 0, 1, 1)] * 2)  # warm-up + imports
        for _ in range(repeats):
            t0 = time.perf_counter()
            pool.map(_shard_worker, [(str(model_path), device, n, batch_size, 0, blocks, 1)])
            one.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            pool.map(
                _shard_worker,
                [
                    (str(model_path), device, n, batch_size, 0, half, 1),
                    (str(model_path), device, n, batch_size, half, blocks, 1),
                ],
            )
            two.append(time.perf_counter() - t0)
    w1, w2 = statistics.median(one), statistics.median(two)
    return {
        "n": n,
        "batch_size": batch_size,
        "one_worker_s": w1,
        "two_workers_s": w2,
        "speedup": w1 / w2,
        "efficiency": w1 / w2 / 2,
        "threads_per_worker": 1,
        "repeats": repeats,
        "note": "wall time incl. pool dispatch; model load per task included",
    }


# -- end to end ----------------------------------------------------------------------------------
def _dgmscan_cmd(*args: str) -> list[str]:
    exe = Path(sys.executable).parent / "dgmscan"
    return [str(exe), *args] if exe.exists() else [sys.executable, "-m", "scanner.cli", *args]


def cli_scan(
    model_path: Path, target_png: Path, *, profile: str, device: str, only: list[str] | None, repeats: int
) -> dict[str, Any]:
    """Wall time of `dgmscan scan MODEL --target PNG --profile P` (process start included)."""
    times, codes, verdict, check_seconds = [], [], None, {}
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as tmp:
            cmd = _dgmscan_cmd(
                "scan",
                str(model_path),
                "--target",
                str(target_png),
                "--profile",
                profile,
                "--device",
                device,
                "--json",
                f"{tmp}/r.json",
                "--quiet",
            )
            for name in only or []:
                cmd += ["--only", name]
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
            times.append(time.perf_counter() - t0)
            codes.append(proc.returncode)
            try:
                report = json.loads(Path(f"{tmp}/r.json").read_text())
                verdict = report["verdict"]
                # where the time goes (the last run's): what a reviewer of a slow profile asks first
                check_seconds = {c["name"]: c.get("duration_s") for c in report.get("checks", [])}
            except (OSError, ValueError, KeyError, TypeError):
                verdict = f"no report: {proc.stderr[-300:]}"
    return {
        "profile": profile,
        "only": only,
        "median_s": statistics.median(times),
        "times_s": times,
        "exit_codes": codes,
        "verdict": verdict,
        "check_seconds": check_seconds,
    }


def service_scan(
    model_path: Path,
    target_png: Path,
    *,
    profile: str,
    only: list[str] | None,
    repeats: int,
    timeout_s: float,
    device: str = "cpu",
) -> dict[str, Any]:
    """Wall time from POST /v1/scans to a finished status on an embedded `dgmscan serve` (SQLite, local disk),
    its in-process worker on `device`."""
    import httpx

    with tempfile.TemporaryDirectory() as tmp:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DGMSCAN_")}
        env["DGMSCAN_DATA_DIR"] = f"{tmp}/var"
        env["DGMSCAN_WORKER_DEVICE"] = device
        log_path = Path(tmp) / "serve.log"
        with open(log_path, "wb") as logf:
            proc = subprocess.Popen(
                _dgmscan_cmd("serve", "--port", "0", "--tenant", "bench"),
                cwd=REPO,
                env=env,
                stdout=logf,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            url = key = None
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline and not (url and key):
                if proc.poll() is not None:
                    return {"error": "dgmscan serve exited: " + log_path.read_text()[-500:]}
                lines = log_path.read_text().splitlines()
                url = next((ln.split()[3] for ln in lines if ln.startswith("dgmscan API on http://")), None)
                key = next((ln.strip() for ln in lines if ln.startswith("dgm_")), None)
                time.sleep(0.2)
            if not (url and key):
                return {"error": "service did not print its URL and key"}
            config = {"profile": profile, **({"only": only} if only else {})}
            times, statuses, verdicts = [], [], []
            timed_out = False
            with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=120) as client:
                while time.monotonic() < deadline:
                    try:
                        if client.get("/readyz").status_code == 200:
                            break
                    except httpx.HTTPError:
                        time.sleep(0.3)
                for _ in range(repeats):
                    t0 = time.perf_counter()
                    with model_path.open("rb") as fm, target_png.open("rb") as ft:
                        r = client.post(
                            "/v1/scans",
                            files=[("model", (model_path.name, fm)), ("targets", (target_png.name, ft))],
                            data={"config": json.dumps(config)},
                        )
                    r.raise_for_status()
                    scan_id = r.json()["id"]
                    end = time.monotonic() + timeout_s
                    scan: dict[str, Any] = {}
                    while time.monotonic() < end:
                        scan = client.get(f"/v1/scans/{scan_id}").json()
                        if scan["status"] in ("succeeded", "failed", "canceled"):
                            break
                        time.sleep(0.25)
                    times.append(time.perf_counter() - t0)
                    statuses.append(scan.get("status"))
                    timed_out = timed_out or scan.get("status") not in ("succeeded", "failed", "canceled")
                    verdicts.append(scan.get("verdict"))
            return {
                "profile": profile,
                "only": only,
                "median_s": statistics.median(times),
                "times_s": times,
                "statuses": statuses,
                "verdicts": verdicts,
                "worker_device": device,
                "poll_interval_s": 0.25,
                "timeout_s": timeout_s,
                "timed_out": timed_out,
            }
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


def run_speed(
    benign: ZooEntry,
    *,
    device: str,
    quick: bool,
    out_dir: Path,
    e2e_repeats: int | None = None,
    e2e_profiles: list[str] | None = None,
    e2e_paths: tuple[str, ...] = ("cli", "service"),
    service_timeout_s: float,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
    resume: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """All speed figures for `benign` (a registry-architecture DCGAN saved as safetensors for the CLI/service).

    `on_progress(results)` is called after every stage, so a run cut off by a time limit (a lent GPU's
    lease) still leaves the stages it finished on disk; `resume` (such a partial result) keeps its
    finished stages and measures only the rest (listed in `resumed_stages`). `e2e_paths` chooses the
    end-to-end scans (CLI and/or service); the service path stops waiting for a scan after `service_timeout_s`
    (recorded in its row, with `timed_out`).
    """
    from scanner.formats.safetensors_io import save_safetensors

    def stage_done() -> None:
        if on_progress is not None:
            on_progress(results)

    g = benign.generator.copy().to(device).eval()
    model_path = Path(out_dir) / "speed" / f"{benign.name}.safetensors"
    save_safetensors(benign.generator, model_path)
    target_png = DEVIL_PNG
    results: dict[str, Any] = {"model": benign.name, "parameters": sum(p.numel() for p in g.parameters())}
    kept = [k for k in RESUMABLE_STAGES if resume and k in resume and resume.get("model") == benign.name]
    if resume and kept:
        results.update({k: resume[k] for k in ("machine", "started_unix", *kept) if k in resume})
        results["resumed_stages"] = kept
        log.info("speed: resuming; kept %s", kept)
    else:
        results["machine"] = machine_info(device)

    def stage(key: str, measure: Callable[[], Any]) -> None:
        """Measure one stage unless the resumed run already has it; save progress after it."""
        if key in results:
            return
        results[key] = measure()
        log.info("speed: %s %s", key, results[key])
        stage_done()

    stage("matmul", lambda: matmul_flops(device, size=1024 if quick else 4096, repeats=5))
    stage(
        "bf_oi",
        lambda: bf_oi_speed(
            g,
            n_fused=8192 if quick else FULL_BF_OI_N,
            n_naive=128 if quick else 4096,
            batch_size=1024 if quick else 4096,
            repeats=3,
            matmul_rate=results["matmul"]["flops_per_s"],
        ),
    )
    if torch.device(device).type == "cuda" and not quick:
        # A GPU is far from saturated by 4096-sample batches of a small generator: the same 1M-sample
        # Closest-N at larger batches, to show where throughput levels off.
        stage("bf_oi_batch_sweep", lambda: bf_oi_batch_sweep(g, n=FULL_BF_OI_N, batch_sizes=GPU_BATCH_SWEEP, repeats=3))
    # Quick: few steps, the sequential side dominates the whole quick run on a loaded CPU.
    stage("ob_oi", lambda: ob_oi_speed(g, restarts=8, steps=20 if quick else 200, repeats=3))
    stage(
        "scale_out",
        lambda: scale_out(
            model_path, device=device, n=16384 if quick else 262_144, batch_size=1024 if quick else 4096, repeats=3
        ),
    )
    # Quick mode: the cheap detector checks only, one repeat (the machine is shared); full: the whole profiles.
    profiles = e2e_profiles or (["quick"] if quick else ["quick", "standard", "full"])
    repeats = e2e_repeats or (1 if quick else 3)
    only = ["format", "static", "dynamic", "bf_oi"] if quick else None
    # Per profile, CLI then service, so a run cut off by a time limit still has both paths of the cheaper profiles.
    # a resumed run also names the paths its earlier part measured
    results["e2e_paths"] = sorted(set(e2e_paths) | set((resume or {}).get("e2e_paths", []) if kept else []))
    # each end-to-end row names the run that measured it: a resumed file may mix runs, and a service/CLI
    # ratio is only quoted for rows measured side by side
    run_started = time.time()
    results.setdefault("cli", [])
    results.setdefault("service", [])
    for p in profiles:
        if all(any(r.get("profile") == p for r in results[path]) for path in e2e_paths):
            continue  # the paths asked for finished in the run being resumed
        if "cli" in e2e_paths:
            results["cli"] = [r for r in results["cli"] if r.get("profile") != p]
            results["cli"].append(
                cli_scan(model_path, target_png, profile=p, device=device, only=only, repeats=repeats)
                | {"run_started_unix": run_started}
            )
            log.info("speed: cli %s", results["cli"][-1])
            stage_done()
        if "service" in e2e_paths:
            results["service"] = [r for r in results["service"] if r.get("profile") != p]
            results["service"].append(
                service_scan(
                    model_path,
                    target_png,
                    profile=p,
                    only=only,
                    repeats=repeats,
                    timeout_s=service_timeout_s,
                    device=device,
                )
                | {"run_started_unix": run_started}
            )
            log.info("speed: service %s", results["service"][-1])
            stage_done()
    results["machine_after"] = {"load_average": list(os.getloadavg())}
    return results
