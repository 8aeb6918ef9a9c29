"""`python -m bench run [--quick] [--device cuda] [--parts ...]` and `python -m bench report`.

run     builds (or loads) the zoo, measures the selected parts, writes bench/results/<part>.json
        and regenerates BENCHMARKS.md from every results file present.
report  re-renders BENCHMARKS.md from bench/results/*.json without measuring anything.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
OUT_DIR = BENCH_DIR / "out"
PARTS = (
    "detection",
    "table1",
    "speed",
    "ablation",
    "full_profile",
    "full_profile_nohints",
    "sanitized_rescan",
    "far_field",
    "audio",
)
log = logging.getLogger("bench")
QUICK_DETECTION_PARAMS: dict[str, dict[str, Any]] = {
    "bf_oi.closest": {"n_samples": 4096},
    "ob_oi.reconstruction": {"restarts": 4, "steps": 60},
}


def results_name(part: str, device: str) -> str:
    """`speed` on a CPU, `speed_cuda` on a GPU: a GPU run never overwrites the CPU figures."""
    return part if torch.device(device).type == "cpu" else f"{part}_{torch.device(device).type}"


def _git_revision() -> str | None:
    """The commit the measured code came from ("+dirty" when the working tree had changes), or None
    outside a git checkout."""
    import subprocess

    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], cwd=BENCH_DIR, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=BENCH_DIR, capture_output=True, text=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return rev + ("+dirty" if dirty else "")


def _write(part: str, payload: dict[str, Any]) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{part}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=1, default=str, allow_nan=False))
    tmp.replace(path)
    return path


def _detection_config(args: argparse.Namespace) -> Any:
    from scanner.checks.base import ScanConfig

    skip = [] if args.all_checks else list(args.skip_checks)
    # Quick mode on a shared 2-core CPU: smaller BF-OI N and fewer OB-OI restarts/steps than the quick
    # profile's defaults (recorded in the results); full mode uses the profile as it is.
    params = QUICK_DETECTION_PARAMS if args.quick else {}
    return ScanConfig(profile="quick", seed=0, device=args.device, skip=skip, params=params)


def _hinted_part(
    part: str,
    chosen: list[Any],
    config: Any,
    args: argparse.Namespace,
    stamp: dict[str, Any],
    summarise: Callable[[list[dict[str, Any]]], dict[str, Any]] | None = None,
    evidence_of: tuple[str, ...] = (),
    targets: tuple[str, ...] | None = None,
    settings: tuple[bool, ...] = (True,),
) -> None:
    """Scan `chosen` zoo entries (with their target hints only, unless `settings` says otherwise; benign
    ones with every name in `targets`, default the image targets) and write the part's results file."""
    from bench.detection import run_detection
    from bench.zoo import TARGET_NAMES

    t0 = time.perf_counter()
    records = run_detection(
        chosen,
        config=config,
        out_dir=OUT_DIR,
        all_targets=list(targets or TARGET_NAMES),
        jobs=args.jobs,
        settings=settings,
        evidence_of=evidence_of,
    )
    payload = {
        **stamp,
        "elapsed_s": time.perf_counter() - t0,
        "scan_config": {"profile": config.profile, "only": config.only, "skip": config.skip, "params": config.params},
        "records": records,
    }
    if summarise is not None:
        payload["summary"] = summarise(records)
    _write(results_name(part, args.device), payload)


def cmd_run(args: argparse.Namespace) -> int:
    from bench.zoo import TARGET_NAMES, Zoo, zoo_spec

    mode = "quick" if args.quick else "full"
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("bench: --device cuda but torch sees no CUDA device", file=sys.stderr)
        return 2
    t_start = time.perf_counter()
    spec = zoo_spec(args.zoo or mode)
    zoo = Zoo(spec, OUT_DIR, device=args.device)
    parts = args.parts or list(PARTS)
    t0 = time.perf_counter()
    # Speed needs one benign DCGAN only; the zoo is built when detection or Table I is asked for.
    entries = (
        zoo.build_all(cached_only=args.cached_only)
        if {"detection", "table1", "ablation"} & set(parts)
        else [zoo.benign("dcgan", spec.benign_seeds[0])]
    )
    for e in entries:
        e.generator.to(args.device)
    zoo_s = time.perf_counter() - t0
    stamp = {
        "git_revision": _git_revision(),
        "mode": mode,
        "zoo_mode": spec.mode,
        "device": args.device,
        "started_unix": time.time(),
        "zoo_build_s": zoo_s,
        "zoo": spec.to_dict(),
        "n_models": len(entries),
    }
    if "speed" in parts:
        from bench.speed import run_speed

        t0 = time.perf_counter()
        benign = next(e for e in entries if e.attack == "benign" and e.family == "dcgan")
        name = results_name("speed", args.device)
        previous = None
        if args.resume and (RESULTS_DIR / f"{name}.json").is_file():
            previous = json.loads((RESULTS_DIR / f"{name}.json").read_text())
            if previous.get("mode") != mode:
                previous = None  # only a run of the same mode is resumed (cut off, or extended by new e2e rows)
        if previous:
            stamp["started_unix"] = previous.get("started_unix", stamp["started_unix"])
            stamp["resumed_unix"] = time.time()
            stamp["resumed_from_revision"] = previous.get("resumed_from_revision") or previous.get("git_revision")
        res = run_speed(
            benign,
            device=args.device,
            quick=args.quick,
            out_dir=OUT_DIR,
            e2e_repeats=args.e2e_repeats,
            e2e_profiles=args.e2e_profiles,
            e2e_paths=tuple(args.e2e_paths),
            service_timeout_s=args.service_timeout_s,
            on_progress=lambda partial: _write(name, {**stamp, "partial": True, **partial}),
            resume=previous,
        )
        _write(name, {**stamp, "elapsed_s": time.perf_counter() - t0, **res})
    if "table1" in parts:
        from bench.table1 import run_table1

        t0 = time.perf_counter()
        res = run_table1(
            entries,
            n_closest=10_000 if args.quick else 1_000_000,
            n_fid=1000 if args.quick else 10_000,
            recon_restarts=4 if args.quick else 32,
            recon_steps=100 if args.quick else 1000,
        )
        _write(results_name("table1", args.device), {**stamp, "elapsed_s": time.perf_counter() - t0, **res})
    if "detection" in parts:
        from bench.detection import analyse, run_detection

        t0 = time.perf_counter()
        config = _detection_config(args)
        selected = entries
        if args.max_models:
            selected = entries[: args.max_models]
        records = run_detection(
            selected,
            config=config,
            out_dir=OUT_DIR,
            all_targets=list(TARGET_NAMES),
            jobs=args.jobs,
            scan_missing=not args.from_cache,
        )
        _write(
            results_name("detection", args.device),
            {
                **stamp,
                "elapsed_s": time.perf_counter() - t0,
                "scan_config": {
                    "profile": config.profile,
                    "skip": config.skip,
                    "device": config.device,
                    "params": config.params,
                },
                "records": records,
                "analysis": analyse(records),
            },
        )
    if "ablation" in parts:
        # The output-inspection misses at the quick detection settings: rescan the ReD/TrAIL/poison models
        # with target hints at the quick profile's own OB-OI/BF-OI defaults (no parameter overrides).
        config = _detection_config(args)
        config.params = {}
        chosen = [e for e in entries if e.attack in ("red", "trail", "poison")]
        _hinted_part("ablation", chosen, config, args, stamp)
    # The whole quick profile, calibration and sanitization included, as a user's scan runs it: with
    # hints, and without them (what the target-free checks catch). The foreign generator is left out
    # of the no-hints part (about 7 min a scan on a 2-core CPU); its hinted scans are in full_profile.
    for part, hints in (("full_profile", True), ("full_profile_nohints", False)):
        if part not in parts:
            continue
        from bench.full_profile import full_profile_entries, summarise
        from scanner.checks.base import ScanConfig

        chosen = [e for e in full_profile_entries(zoo, OUT_DIR) if hints or e.family != "foreign"]
        for e in chosen:
            e.generator.to(args.device)
        config = ScanConfig(profile="quick", seed=0, device=args.device)
        # The distillation's evidence says which copy was written and what the detectors that failed on
        # the upload said when rerun on it (the recheck), so the report can show both.
        _hinted_part(
            part,
            chosen,
            config,
            args,
            stamp,
            summarise=summarise,
            settings=(hints,),
            evidence_of=("sanitization.distillation",),
        )
    if "sanitized_rescan" in parts:
        from bench.full_profile import full_profile_entries
        from bench.sanitized_rescan import rescan_entries, run_sanitized_rescan

        t0 = time.perf_counter()
        chosen = rescan_entries(full_profile_entries(zoo, OUT_DIR))
        for e in chosen:
            e.generator.to(args.device)
        res = run_sanitized_rescan(chosen, out_dir=OUT_DIR, device=args.device)
        _write(results_name("sanitized_rescan", args.device), {**stamp, "elapsed_s": time.perf_counter() - t0, **res})
    if "audio" in parts:
        from bench.audio import summarise as summarise_audio
        from bench.zoo import AUDIO_TARGET_NAMES, audio_entries

        chosen = audio_entries(zoo)
        for e in chosen:
            e.generator.to(args.device)
        _hinted_part(
            "audio",
            chosen,
            _detection_config(args),
            args,
            stamp,
            summarise=summarise_audio,
            targets=AUDIO_TARGET_NAMES,
            settings=(True, False),
        )
    if "far_field" in parts:
        from bench.far_field import CHECK, far_field_config, far_field_entries
        from bench.far_field import summarise as summarise_far_field

        chosen = far_field_entries(zoo, OUT_DIR)
        for e in chosen:
            e.generator.to(args.device)
        config = far_field_config(args.device)
        _hinted_part("far_field", chosen, config, args, stamp, summarise=summarise_far_field, evidence_of=(CHECK,))
    from bench.report import render

    (BENCH_DIR.parent / "BENCHMARKS.md").write_text(render(RESULTS_DIR))
    log.info("bench: done in %.0fs; wrote BENCHMARKS.md", time.perf_counter() - t_start)
    return 0


def cmd_report(_args: argparse.Namespace) -> int:
    from bench.report import render

    (BENCH_DIR.parent / "BENCHMARKS.md").write_text(render(RESULTS_DIR))
    print(f"wrote {BENCH_DIR.parent / 'BENCHMARKS.md'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="verb", required=True)
    run = sub.add_parser("run", help="build the zoo, measure, write results and BENCHMARKS.md")
    run.add_argument("--quick", action="store_true", help="small zoo and sizes for a 2-core CPU (default: full)")
    run.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    run.add_argument(
        "--zoo",
        choices=("quick", "full"),
        help="which zoo to build or load (default: the mode's; `--zoo quick` runs full sizes on the quick zoo)",
    )
    run.add_argument("--e2e-repeats", type=int, help="speed: repeats of each end-to-end scan (default 1 quick, 3 full)")
    run.add_argument(
        "--e2e-profiles", nargs="+", choices=("quick", "standard", "full"), help="speed: end-to-end scan profiles"
    )
    run.add_argument(
        "--e2e-paths",
        nargs="+",
        choices=("cli", "service"),
        default=["cli", "service"],
        help="speed: end-to-end scans through the CLI and/or the service",
    )
    run.add_argument(
        "--service-timeout-s",
        type=float,
        default=3600.0,
        help="speed: how long the service path waits for one scan (default 3600; a CPU full profile takes ~1750 s)",
    )
    run.add_argument(
        "--resume",
        action="store_true",
        help="speed: keep the finished stages and e2e rows of the last results file; measure only what it lacks",
    )
    run.add_argument("--parts", nargs="+", choices=PARTS, help=f"what to measure (default: all of {PARTS})")
    run.add_argument("--max-models", type=int, default=0, help="scan only the first N zoo models (0: all)")
    run.add_argument(
        "--skip-checks",
        nargs="*",
        default=["sanitization", "calibration", "ob_oi.gradient_free"],
        help="checks/families skipped in detection scans (default: the expensive defenses; reported as skipped)",
    )
    run.add_argument("--jobs", type=int, default=1, help="detection scans in parallel worker processes")
    run.add_argument("--cached-only", action="store_true", help="leave out attacked models not built yet")
    run.add_argument("--from-cache", action="store_true", help="detection: analyse cached scan records only")
    run.add_argument("--all-checks", action="store_true", help="detection scans run the whole quick profile")
    run.set_defaults(func=cmd_run)
    rep = sub.add_parser("report", help="re-render BENCHMARKS.md from bench/results/*.json")
    rep.set_defaults(func=cmd_report)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
