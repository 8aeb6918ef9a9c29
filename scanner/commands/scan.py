"""`dgmscan scan`: scan a generator file for backdoors and print a verdict table."""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import TextIO

from scanner.checks.base import PROFILES, ScanConfig

EPILOG = """exit status:
  0  clean
  1  suspicious or backdoored
  2  error (bad arguments, unreadable target, ...) or rejected model file (unsafe or invalid)
  3  inconclusive (a check needed for a clean verdict errored or was skipped)

With no hints the architecture comes from the file (safetensors metadata or ONNX graph) and
the checks that need a target hint search without one."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    parser.add_argument("model", type=Path, metavar="MODEL", help="model file (.onnx, .safetensors, state-dict zip)")
    parser.add_argument(
        "--target",
        dest="targets",
        type=Path,
        action="append",
        default=[],
        metavar="IMG",
        help="suspected target output (PNG/JPEG, WAV or .npy); repeat for several",
    )
    parser.add_argument(
        "--profile", choices=PROFILES, default="quick", help="quick (CPU, ~1 min), standard, full (GPU)"
    )
    parser.add_argument("--architecture", metavar="A", help="registry architecture when the file does not name one")
    parser.add_argument("--json", dest="json_out", type=Path, metavar="F", help="write the JSON report here")
    parser.add_argument("--sarif", dest="sarif_out", type=Path, metavar="F", help="write a SARIF 2.1.0 log here")
    parser.add_argument("--html", dest="html_out", type=Path, metavar="F", help="write a self-contained HTML report")
    parser.add_argument(
        "--artifacts", type=Path, metavar="DIR", help="keep pictures and other artifacts here (default: temporary)"
    )
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where checks run (default cpu)")
    parser.add_argument("--seed", type=int, default=0, metavar="S", help="seed of every random draw (default 0)")
    parser.add_argument(
        "--only",
        action="append",
        metavar="CHECK",
        help="run only this check or family (repeatable); a check named exactly runs even if the profile leaves it out",
    )
    parser.add_argument("--skip", action="append", default=[], metavar="CHECK", help="skip a check or family")
    parser.add_argument(
        "--budget",
        action="append",
        default=[],
        type=_budget,
        metavar="CHECK=SECONDS",
        help="time budget of a check; a check past it stops early and says so (repeatable)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _budget(text: str) -> tuple[str, float]:
    name, sep, seconds = text.partition("=")
    try:
        value = float(seconds)
    except ValueError:
        value = -1.0
    if not sep or not name or not value > 0:
        raise argparse.ArgumentTypeError(f"expected CHECK=SECONDS with SECONDS > 0, got {text!r}")
    return name, value


class _Progress:
    """tqdm on stderr when installed, else a one-line text bar (a line per check when not a TTY)."""

    def __init__(self, stream: TextIO, enabled: bool) -> None:
        self.stream = stream
        self.enabled = enabled
        self.bar = None
        if enabled:
            try:
                from tqdm import tqdm
            except ImportError:
                tqdm = None
            if tqdm is not None:
                self.bar = tqdm(total=100, file=stream, unit="%", bar_format="{l_bar}{bar}| {elapsed}")

    def __call__(self, check_name: str, fraction: float) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.set_description_str(check_name)
            self.bar.n = round(100 * fraction)
            self.bar.refresh()
            return
        width = 30
        filled = round(width * fraction)
        line = f"[{'#' * filled}{'.' * (width - filled)}] {100 * fraction:3.0f}% {check_name}"
        if self.stream.isatty():
            self.stream.write("\r" + line.ljust(80))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.enabled and self.stream.isatty():
            self.stream.write("\n")


def _cell(x: object, width: int) -> str:
    text = "—" if x is None else (f"{x:.4g}" if isinstance(x, float) else str(x))
    text = text.replace("\n", " ")
    return text if len(text) <= width else text[: width - 1] + "…"


def print_table(report: dict, out: TextIO) -> None:
    """The verdict table: one row per check, then the verdict and its reasons."""
    model = report["model"]
    out.write(
        f"model:   {model['file_name']!r}  format={model.get('format')}  architecture={model.get('architecture')}\n"
    )
    out.write(f"sha256:  {model['sha256']}\n")
    out.write(f"profile: {report['profile']}  seed={report['seed']}  device={report['device']}\n\n")
    header = f"{'check':<34} {'status':<8} {'score':>10} {'threshold':>10}  summary"
    out.write(header + "\n" + "-" * len(header) + "\n")
    for c in report["checks"]:
        out.write(
            f"{_cell(c['name'], 34):<34} {c['status']:<8} {_cell(c.get('score'), 10):>10} "
            f"{_cell(c.get('threshold'), 10):>10}  {_cell(c['summary'], 90)}\n"
        )
    out.write(f"\nverdict: {report['verdict'].upper()}  ({report['duration_s']} s)\n")
    for reason in report["verdict_reasons"]:
        out.write(f"  - {_cell(reason, 160)}\n")


def run(args: argparse.Namespace) -> int:
    # heavy imports here so `dgmscan --help` stays fast
    from scanner.errors import ScannerError
    from scanner.reports import dump_json, render_html, render_sarif
    from scanner.suite import run_scan
    from scanner.verdict import EXIT_ERROR, exit_code

    config = ScanConfig(
        profile=args.profile,
        seed=args.seed,
        device=args.device,
        only=args.only,
        skip=args.skip,
        budgets=dict(args.budget),
    )
    with tempfile.TemporaryDirectory(prefix="dgmscan-artifacts-") as tmp:
        artifacts_dir = args.artifacts if args.artifacts is not None else Path(tmp)
        progress = _Progress(sys.stderr, enabled=not args.quiet)
        try:
            report = run_scan(
                args.model,
                targets=list(args.targets),
                config=config,
                artifacts_dir=artifacts_dir,
                progress=progress,
                architecture=args.architecture,
            )
        except ScannerError as exc:
            progress.close()
            print(f"dgmscan scan: error: {exc}", file=sys.stderr)
            return EXIT_ERROR
        except (OSError, ValueError) as exc:  # unreadable paths, bad architecture names, ...
            progress.close()
            print(f"dgmscan scan: error: {type(exc).__name__}: {exc}", file=sys.stderr)
            return EXIT_ERROR
        progress.close()
        data = report.to_dict()
        try:
            if args.json_out is not None:
                args.json_out.write_text(dump_json(data), encoding="utf-8")
            if args.sarif_out is not None:
                args.sarif_out.write_text(dump_json(render_sarif(data)), encoding="utf-8")
            if args.html_out is not None:
                args.html_out.write_text(render_html(data, artifacts_dir=artifacts_dir), encoding="utf-8")
        except OSError as exc:
            print(f"dgmscan scan: error writing a report: {exc}", file=sys.stderr)
            return EXIT_ERROR
    print_table(data, sys.stdout)
    return exit_code(report.verdict)
