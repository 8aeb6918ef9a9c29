"""`dgmscan scan` end to end on real files: exit codes, reports written, rejected files."""

from __future__ import annotations

import argparse
import json
import pickle
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import torch
from PIL import Image

from scanner.architectures import build
from scanner.checks.base import CHECKS, Check, CheckResult, ScanConfig, ScanContext, register_check
from scanner.commands import scan as scan_cmd
from scanner.formats.safetensors_io import save_safetensors
from scanner.reports import validate_report
from scanner.suite import run_scan

SARIF_SCHEMA = Path(__file__).parent / "data" / "sarif-2.1.0-rtm.5.json"


def dgmscan_scan(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="dgmscan scan")
    scan_cmd.add_arguments(parser)
    return scan_cmd.run(parser.parse_args(argv))


class Outcome(Check):
    """Its status comes from the scan's params, so one registered check covers every exit code."""

    name = "static.zz_cli_outcome"
    defaults = {"quick": {"status": "pass"}}

    def run(self, ctx: ScanContext) -> CheckResult:
        status = self.params(ctx)["status"]
        if status == "raise":
            raise RuntimeError("check crashed")
        return self.result(status, f"told to {status}", score=1.0, threshold=2.0)


class SeesTarget(Check):
    name = "ob_oi.zz_cli_target"

    def run(self, ctx: ScanContext) -> CheckResult:
        (hint,) = ctx.targets
        assert tuple(hint.tensor.shape) == ctx.generator.output.shape
        lo, hi = ctx.generator.output.value_range
        assert lo <= float(hint.tensor.min()) and float(hint.tensor.max()) <= hi
        return self.result("pass", f"target {hint.name} in range")


@pytest.fixture
def cli_checks() -> Iterator[None]:
    for cls in (Outcome, SeesTarget):
        register_check(cls)
    yield
    for cls in (Outcome, SeesTarget):
        CHECKS.pop(cls.name, None)


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    gen = build("vae_mnist_decoder", {"latent_dim": 4, "hidden": 16})
    path = tmp_path / "decoder.safetensors"
    save_safetensors(gen, path)
    return path


@pytest.fixture
def target_png(tmp_path: Path) -> Path:
    path = tmp_path / "devil face <1>.png"
    Image.fromarray((np.arange(28 * 28, dtype=np.uint32).reshape(28, 28) % 256).astype(np.uint8)).save(path)
    return path


def test_clean_model_exit_0_and_all_reports(
    cli_checks: None, model_file: Path, target_png: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    code = dgmscan_scan(
        [
            str(model_file),
            "--budget",
            "static.zz_cli_outcome=30",
            "--target",
            str(target_png),
            "--only",
            "static.zz_cli_outcome",
            "--only",
            "ob_oi.zz_cli_target",
            "--json",
            str(out / "r.json"),
            "--sarif",
            str(out / "r.sarif"),
            "--html",
            str(out / "r.html"),
            "--artifacts",
            str(out / "art"),
            "--seed",
            "3",
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured
    assert "verdict: CLEAN" in captured.out and "static.zz_cli_outcome" in captured.out
    assert "ob_oi.zz_cli_target" in captured.err  # progress on stderr
    report = json.loads((out / "r.json").read_text())
    validate_report(report)
    assert report["model"]["format"] == "safetensors" and report["model"]["architecture"] == "vae_mnist_decoder"
    assert report["model"]["parameters"] == sum(
        p.numel() for p in build("vae_mnist_decoder", {"latent_dim": 4, "hidden": 16}).parameters()
    )
    assert report["checks"][0]["evidence"] == {"budget_s": 30.0, "over_budget": False}
    assert report["seed"] == 3 and report["targets"][0]["file_name"] == "devil face <1>.png"
    assert (out / "art" / report["targets"][0]["artifact"]["name"]).is_file()
    sarif = json.loads((out / "r.sarif").read_text())
    schema = json.loads(SARIF_SCHEMA.read_text())
    jsonschema.validators.validator_for(schema)(schema).validate(sarif)
    assert sarif["runs"][0]["results"] == []  # nothing but passes
    html = (out / "r.html").read_text()
    assert "devil face &lt;1&gt;.png" in html and "data:image/png;base64," in html


@pytest.mark.parametrize(("status", "expected"), [("warn", 1), ("fail", 1), ("raise", 3), ("skipped", 3)])
def test_exit_codes_follow_the_verdict(
    cli_checks: None, model_file: Path, tmp_path: Path, status: str, expected: int
) -> None:
    config = ScanConfig(
        profile="quick", only=["static.zz_cli_outcome"], params={"static.zz_cli_outcome": {"status": status}}
    )
    report = run_scan(model_file, targets=[], config=config, artifacts_dir=tmp_path / "a")
    from scanner.verdict import exit_code

    assert exit_code(report.verdict) == expected
    assert (
        report.verdict
        == {"warn": "suspicious", "fail": "backdoored", "raise": "inconclusive", "skipped": "inconclusive"}[status]
    )


class _Payload:
    """Unpickling this would create a canary file: the scanner must never do it."""

    def __init__(self, canary: Path) -> None:
        self.canary = canary

    def __reduce__(self):  # noqa: ANN204 - pickle protocol
        return (Path.touch, (self.canary,))


def test_pickle_is_rejected_exit_2_and_never_executed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    canary = tmp_path / "canary"
    model = tmp_path / "model.pt"
    model.write_bytes(pickle.dumps(_Payload(canary)))
    code = dgmscan_scan([str(model), "--json", str(tmp_path / "r.json"), "--html", str(tmp_path / "r.html"), "--quiet"])
    assert code == 2
    assert not canary.exists()
    report = json.loads((tmp_path / "r.json").read_text())
    validate_report(report)
    assert report["verdict"] == "rejected" and report["load_error"].startswith("rejected")
    assert report["findings"], "the pickle findings are in the report"
    statuses = {c["name"]: c["status"] for c in report["checks"]}
    assert any(n.startswith("format.") and s == "fail" for n, s in statuses.items())
    assert all(s == "skipped" for n, s in statuses.items() if not n.startswith(("format.", "suite.")))
    assert "verdict: REJECTED" in capsys.readouterr().out


def test_corrupt_safetensors_is_rejected(model_file: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(model_file.read_bytes()[:100])
    report = run_scan(broken, targets=[], config=ScanConfig(profile="quick"), artifacts_dir=tmp_path / "a")
    assert report.verdict == "rejected" and report.load_error and report.load_error.startswith("invalid")


def test_bad_target_is_a_clear_error_exit_2(
    cli_checks: None, model_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "not an image.png"
    bad.write_bytes(b"definitely not a picture")
    code = dgmscan_scan([str(model_file), "--target", str(bad), "--only", "static.zz_cli_outcome", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2
    assert "not an image.png" in err and "error" in err


def test_usage_errors_exit_2(
    cli_checks: None, model_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert dgmscan_scan([str(tmp_path / "missing.onnx"), "--quiet"]) == 2
    assert dgmscan_scan([str(model_file), "--only", "static.no_such_check", "--quiet"]) == 2
    assert "no_such_check" in capsys.readouterr().err
    assert dgmscan_scan([str(model_file), "--budget", "static.no_such_check=5", "--quiet"]) == 2
    assert "budget given for unknown check" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        dgmscan_scan([str(model_file), "--budget", "static.zz_cli_outcome=-1"])
    if not torch.cuda.is_available():
        assert dgmscan_scan([str(model_file), "--device", "cuda", "--quiet"]) == 2
        assert "CUDA is not available" in capsys.readouterr().err


def test_help_documents_the_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        dgmscan_scan(["--help"])
    text = capsys.readouterr().out
    for line in ("0  clean", "1  suspicious or backdoored", "2  error", "3  inconclusive"):
        assert line in text


def test_through_the_dgmscan_dispatcher(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from scanner.cli import main

    model = tmp_path / "model.pkl"
    model.write_bytes(pickle.dumps({"weights": [1.0, 2.0]}))  # a raw pickle: never loaded, whatever it holds
    assert main(["scan", str(model), "--quiet"]) == 2
    assert "verdict: REJECTED" in capsys.readouterr().out
