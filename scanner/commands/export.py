"""`dgmscan export`: convert a model between ONNX and safetensors.

The suffix of --out picks the format. The input is loaded the way a scan loads it (never
running code from the file), so `export` is also how an owner turns a checkpoint into a file
the service accepts: ONNX keeps the graph (any topology the executor runs); safetensors needs
a registry architecture (from the ONNX metadata or --architecture) and is verified to
reproduce the ONNX outputs before it is written.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from scanner.errors import ScannerError
from scanner.generator import Generator

FORMATS = {".onnx": "onnx", ".safetensors": "safetensors"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, required=True, metavar="M", help="input model (.onnx, .safetensors, .pt)")
    parser.add_argument("--out", type=Path, required=True, metavar="OUT", help="output file: .onnx or .safetensors")
    parser.add_argument(
        "--architecture", metavar="A", help="registry architecture (weights-only inputs; ONNX → safetensors)"
    )
    parser.add_argument(
        "--architecture-config", metavar="JSON", help="architecture parameters as JSON, e.g. '{\"base\": 32}'"
    )
    parser.add_argument("--opset", type=int, default=17, metavar="N", help="ONNX opset when tracing (default 17)")


def _load(path: Path, architecture: str | None, config: dict | None) -> Generator:
    from scanner.loading import load_generator

    return load_generator(path, architecture=architecture, architecture_config=config)


def convert(model: Path, out: Path, *, architecture: str | None = None, config: dict | None = None, opset: int = 17):
    """Load `model` safely and write it to `out` in the format its suffix names. Returns the
    generator that was written. Raises ScannerError / ValueError with a message for people."""
    fmt = FORMATS.get(out.suffix.lower())
    if fmt is None:
        raise ValueError(f"--out must end in {' or '.join(FORMATS)}, got {out.name!r}")
    generator = _load(model, architecture, config)
    if fmt == "onnx":
        from scanner.onnx.export import export_onnx

        export_onnx(generator, out, opset=opset)
        return generator
    from scanner.formats.safetensors_io import save_safetensors

    if generator.source_format == "onnx":
        from scanner.onnx.export import registry_generator_from_onnx

        generator = registry_generator_from_onnx(generator, architecture=architecture, architecture_config=config)
    save_safetensors(generator, out)
    return generator


def run(args: argparse.Namespace) -> int:
    config = None
    if args.architecture_config:
        try:
            config = json.loads(args.architecture_config)
        except ValueError as exc:
            print(f"dgmscan export: --architecture-config is not JSON: {exc}", file=sys.stderr)
            return 2
        if not isinstance(config, dict):
            print("dgmscan export: --architecture-config must be a JSON object", file=sys.stderr)
            return 2
    try:
        generator = convert(args.model, args.out, architecture=args.architecture, config=config, opset=args.opset)
    except (ScannerError, ValueError, OSError) as exc:
        print(f"dgmscan export: {exc}", file=sys.stderr)
        return 2
    print(
        f"wrote {args.out} ({FORMATS[args.out.suffix.lower()]}; architecture {generator.architecture or 'graph'}; "
        f"latent {list(generator.latent.shape)} {generator.latent.distribution}; "
        f"output {generator.output.kind} {list(generator.output.shape)} {generator.output.final_activation})"
    )
    return 0
