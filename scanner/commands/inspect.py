"""`dgmscan inspect MODEL [--architecture A] [--json]`: format, architecture, specs, parameters, findings.

Never runs code from the file. Exit 0 when the model loads, 2 when it is rejected or invalid.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from scanner.errors import InvalidModelError, RejectedModelError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", type=Path, help="model file (.onnx, .safetensors, torch state-dict zip, ...)")
    parser.add_argument("--architecture", help="registry architecture for weights-only files (e.g. dcgan28)")
    parser.add_argument(
        "--architecture-config",
        type=json.loads,
        default=None,
        help="architecture parameters as JSON, e.g. '{\"base\": 32}'",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def inspect_model(
    path: Path, *, architecture: str | None = None, architecture_config: dict | None = None
) -> dict[str, Any]:
    """Everything `dgmscan inspect` prints, as a dict (status: ok | rejected | invalid)."""
    from scanner.loading import inspect_file, load_generator

    try:
        report = inspect_file(path)
    except InvalidModelError as exc:
        return {"path": str(path), "status": "invalid", "problem": str(exc), "findings": []}
    out: dict[str, Any] = report.to_dict()
    if report.status != "ok":
        return out
    try:
        generator = load_generator(path, architecture=architecture, architecture_config=architecture_config)
    except RejectedModelError as exc:
        out.update(status="rejected", problem=str(exc), advice=exc.advice)
        out["findings"] = [f.to_dict() for f in exc.findings]
        return out
    except InvalidModelError as exc:
        out.update(status="invalid", problem=str(exc))
        return out
    described = generator.describe()
    out.update(
        architecture=described["architecture"],
        architecture_config=(generator.metadata or {}).get("architecture_config"),
        latent=described["latent"],
        output=described["output"],
        parameters=described["parameters"],
        layers=described["layers"],
    )
    return out


def _print_text(info: dict[str, Any]) -> None:
    print(f"file:         {info.get('path')}")
    print(f"format:       {info.get('format', '?')} ({info.get('size_bytes', '?')} bytes)")
    print(f"status:       {info['status']}")
    if info.get("problem"):
        print(f"problem:      {info['problem']}")
    if info.get("architecture") or "parameters" in info:
        print(f"architecture: {info.get('architecture') or '(graph)'} {info.get('architecture_config') or ''}".rstrip())
        latent, output = info["latent"], info["output"]
        print(f"latent:       shape {tuple(latent['shape'])}, {latent['distribution']}")
        print(
            f"output:       {output['kind']} {tuple(output['shape'])}, range {tuple(output['value_range'])}, "
            f"final activation {output['final_activation']}"
        )
        print(f"parameters:   {info['parameters']:,}")
    findings = info.get("findings") or []
    print(f"findings:     {len(findings)}")
    for f in findings:
        print(f"  [{f.get('severity', '?')}] {f.get('code')}: {f.get('message')}")
    if info.get("advice"):
        print(f"advice:       {info['advice']}")


def run(args: argparse.Namespace) -> int:
    info = inspect_model(args.model, architecture=args.architecture, architecture_config=args.architecture_config)
    if args.json:
        json.dump(info, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
    else:
        _print_text(info)
    return 0 if info["status"] == "ok" else 2
