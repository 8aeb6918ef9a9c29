"""JSON report schema, SARIF 2.1.0 validity (official schema, offline) and HTML safety."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import torch

from scanner.architectures import build
from scanner.checks.base import (
    CHECKS,
    Artifact,
    Check,
    CheckResult,
    ScanConfig,
    ScanContext,
    TargetHint,
    register_check,
)
from scanner.reports import dump_json, render_html, render_sarif, validate_report
from scanner.reports.media import image_png_bytes
from scanner.suite import execute_scan, open_scan_generator

SARIF_SCHEMA = Path(__file__).parent / "data" / "sarif-2.1.0-rtm.5.json"
EVIL = "<script>alert('x')</script>\"'&<img src=x onerror=alert(1)>"


class PicturePass(Check):
    name = "static.zz_report_picture"
    description = "test: writes a picture and passes"

    def run(self, ctx: ScanContext) -> CheckResult:
        path = ctx.artifact_path(f"{self.name}/weights.png")
        path.write_bytes(image_png_bytes(torch.zeros(1, 28, 28), ctx.generator.output))
        return self.result(
            "pass",
            "weights look dense",
            score=0.2,
            threshold=0.5,
            artifacts=[Artifact(path.relative_to(ctx.artifacts_dir).as_posix(), "image/png", "permuted |W|")],
        )


class EvilFail(Check):
    name = "ob_oi.zz_report_evil"
    description = f"test: a summary quoting attacker text {EVIL}"

    def run(self, ctx: ScanContext) -> CheckResult:
        fake_png = ctx.artifact_path(f"{self.name}/fake.png")
        fake_png.write_text("<svg onload=alert(1)></svg>")  # claims PNG, is not: must not be inlined
        outside = ctx.artifacts_dir.parent / "secret.png"
        outside.write_bytes(image_png_bytes(torch.ones(1, 28, 28), ctx.generator.output))
        z = ctx.generator.sample_latent(1, seed=1)
        ctx.shared["recovered_triggers"] = [
            {
                "source": self.name,
                "z": z,
                "output": ctx.generator.generate(z)[0],
                "target": ctx.targets[0].name,
                "tardis_mean": float("nan"),
            }
        ]
        return self.result(
            "fail",
            f"target {ctx.targets[0].name} reconstructed: {EVIL}",
            score=1e-4,
            threshold=1e-2,
            evidence={"note": EVIL, "recon": [float("inf"), 1.0]},
            artifacts=[
                Artifact(f"{self.name}/fake.png", "image/png", "a lying artifact"),
                Artifact("../secret.png", "image/png", "path traversal"),
                Artifact(f"{self.name}/missing.png", "image/png", EVIL),
            ],
        )


class WarnCheck(Check):
    name = "dynamic.zz_report_warn"

    def run(self, ctx: ScanContext) -> CheckResult:
        return self.result("warn", "a sleeper unit or two")


class ErrorCheck(Check):
    name = "bf_oi.zz_report_error"
    needed_for_clean = False

    def run(self, ctx: ScanContext) -> CheckResult:
        raise ValueError("no samples")


TEST_CHECKS = (PicturePass, EvilFail, WarnCheck, ErrorCheck)


@pytest.fixture
def report_and_dir(tmp_path: Path) -> Iterator[tuple[dict[str, Any], Path]]:
    for cls in TEST_CHECKS:
        register_check(cls)
    try:
        torch.manual_seed(0)
        gen = build("vae_mnist_decoder", {"latent_dim": 4, "hidden": 16})
        hint = TargetHint(name=EVIL + ".png", tensor=torch.rand(1, 28, 28))
        artifacts = tmp_path / "artifacts"
        config = ScanConfig(profile="quick", only=[c.name for c in TEST_CHECKS])
        session = open_scan_generator(gen, targets=[hint], config=config, artifacts_dir=artifacts, name=EVIL + ".onnx")
        yield execute_scan(session).to_dict(), artifacts
    finally:
        for cls in TEST_CHECKS:
            CHECKS.pop(cls.name, None)


def test_json_report_follows_its_schema_and_is_strict_json(report_and_dir: tuple[dict[str, Any], Path]) -> None:
    report, _ = report_and_dir
    validate_report(report)
    text = dump_json(report)
    assert "NaN" not in text and "Infinity" not in text
    again = json.loads(text)
    assert again["verdict"] == "backdoored"
    assert {c["name"]: c["status"] for c in again["checks"]} == {
        "static.zz_report_picture": "pass",
        "dynamic.zz_report_warn": "warn",
        "bf_oi.zz_report_error": "error",
        "ob_oi.zz_report_evil": "fail",
    }
    assert again["recovered_triggers"][0]["tardis_mean"] == "nan"
    broken = dict(report, verdict="maybe")
    with pytest.raises(jsonschema.ValidationError):
        validate_report(broken)


def _sarif_validator() -> jsonschema.protocols.Validator:
    schema = json.loads(SARIF_SCHEMA.read_text(encoding="utf-8"))
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def test_sarif_is_valid_against_the_official_schema(report_and_dir: tuple[dict[str, Any], Path]) -> None:
    report, _ = report_and_dir
    sarif = json.loads(dump_json(render_sarif(report)))
    _sarif_validator().validate(sarif)
    run = sarif["runs"][0]
    levels = {res["ruleId"]: res["level"] for res in run["results"]}
    # one result per non-pass check, levels by status
    assert levels == {
        "dynamic.zz_report_warn": "warning",
        "bf_oi.zz_report_error": "note",
        "ob_oi.zz_report_evil": "error",
    }
    rules = run["tool"]["driver"]["rules"]
    assert {rule["id"] for rule in rules} == {c["name"] for c in report["checks"]}
    for res in run["results"]:
        assert rules[res["ruleIndex"]]["id"] == res["ruleId"]
    assert (
        rules[[r["id"] for r in rules].index("ob_oi.zz_report_evil")]["fullDescription"]["text"] == EvilFail.description
    )
    uri = run["artifacts"][0]["location"]["uri"]
    assert "<" not in uri and "/" not in uri and " " not in uri  # percent-encoded attacker file name
    assert run["properties"]["verdict"] == "backdoored"


def test_sarif_for_a_rejected_model_is_valid(report_and_dir: tuple[dict[str, Any], Path]) -> None:
    report, _ = report_and_dir
    rejected = dict(
        report,
        verdict="rejected",
        load_error="rejected: raw pickle can run code",
        checks=[],
        findings=[{"code": "pickle.unsafe_import", "message": "os.system", "severity": "high", "detail": {}}],
    )
    validate_report(rejected)
    sarif = render_sarif(rejected)
    _sarif_validator().validate(sarif)
    (res,) = sarif["runs"][0]["results"]
    assert res["ruleId"] == "model.load" and res["level"] == "error"
    assert res["properties"]["findings"] == ["pickle.unsafe_import"]


def test_sarif_validator_rejects_broken_sarif(report_and_dir: tuple[dict[str, Any], Path]) -> None:
    report, _ = report_and_dir
    sarif = render_sarif(report)
    sarif["runs"][0]["results"][0]["level"] = "fatal"
    with pytest.raises(jsonschema.ValidationError):
        _sarif_validator().validate(sarif)


class _Collector(HTMLParser):
    """Collects tags and attributes, to check no attacker text became markup."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.srcs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        for key, value in attrs:
            assert not key.startswith("on"), f"event handler attribute {key} in the page"
            if key in ("src", "href") and value is not None:
                self.srcs.append(value)


def test_html_escapes_everything_and_inlines_only_safe_artifacts(report_and_dir: tuple[dict[str, Any], Path]) -> None:
    report, artifacts = report_and_dir
    page = render_html(report, artifacts_dir=artifacts)
    parser = _Collector()
    parser.feed(page)
    assert "script" not in parser.tags and "svg" not in parser.tags
    assert "<script>" not in page and "onerror=alert" not in page.replace("onerror=alert(1)&gt;", "")
    assert "&lt;script&gt;alert(" in page  # the text is there, escaped
    # every resource is inline (self-contained page) or an in-page anchor
    assert all(s.startswith(("data:image/png;base64,", "#")) for s in parser.srcs)
    images = [base64.b64decode(s.split(",", 1)[1]) for s in parser.srcs if s.startswith("data:")]
    assert all(img.startswith(b"\x89PNG") for img in images)
    # inlined: the check's picture, the target hint, G(z*) shown next to the target (twice for the target)
    assert len(images) == 4
    secret = (artifacts.parent / "secret.png").read_bytes()
    assert secret not in images  # the path-traversal artifact was not read
    assert "Content-Security-Policy" in page and "default-src 'none'" in page
    assert re.search(r"class='banner'[^>]*>\s*<h2>backdoored</h2>", page)


def test_html_without_artifacts_dir_still_renders(report_and_dir: tuple[dict[str, Any], Path]) -> None:
    report, _ = report_and_dir
    page = render_html(report)
    assert "data:image" not in page
    assert "static.zz_report_picture/weights.png" in page
