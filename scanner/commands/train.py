"""`dgmscan train`: train a benign generator and save it: dcgan-mnist and vae-mnist on the shipped
MNIST digits, wavegan-piano (16384-sample audio) on piano notes the project synthesises.

The suffix of --out picks the format: .safetensors (registry architecture in the metadata) or .onnx.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from scanner.errors import ScannerError
from scanner.generator import Generator

MODELS = ("dcgan-mnist", "vae-mnist", "wavegan-piano")
SUFFIXES = (".safetensors", ".onnx")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "model",
        choices=MODELS,
        help="dcgan-mnist: registry dcgan28; vae-mnist: vae_mnist_decoder; wavegan-piano: registry wavegan",
    )
    parser.add_argument("--out", type=Path, required=True, metavar="PATH", help="output file (.safetensors or .onnx)")
    parser.add_argument(
        "--epochs", type=int, default=None, metavar="N", help="epochs (default 5 DCGAN, 10 VAE, 16 WaveGAN)"
    )
    parser.add_argument("--seed", type=int, default=0, metavar="S")
    parser.add_argument(
        "--base", type=int, default=None, metavar="B", help="width: DCGAN base (default 64), WaveGAN d (default 8)"
    )
    parser.add_argument("--batch-size", type=int, default=None, metavar="N")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")


def save_generator(generator: Generator, out: Path) -> None:
    """Write `generator` in the format the suffix of `out` names (.onnx or .safetensors)."""
    suffix = out.suffix.lower()
    if suffix == ".onnx":
        from scanner.onnx.export import export_onnx

        export_onnx(generator.to("cpu").eval(), out)
    elif suffix == ".safetensors":
        from scanner.formats.safetensors_io import save_safetensors

        save_safetensors(generator.to("cpu").eval(), out)
    else:
        raise ValueError(f"--out must end in {' or '.join(SUFFIXES)}, got {out.name!r}")


def run(args: argparse.Namespace) -> int:
    from scanner.training import train_dcgan, train_vae, train_wavegan

    if args.out.suffix.lower() not in SUFFIXES:
        print(f"dgmscan train: --out must end in {' or '.join(SUFFIXES)}", file=sys.stderr)
        return 2
    if args.epochs is not None and args.epochs < 1:
        print("dgmscan train: --epochs must be at least 1", file=sys.stderr)
        return 2

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    try:
        if args.model == "dcgan-mnist":
            generator = train_dcgan(
                epochs=args.epochs or 5, seed=args.seed, base=args.base or 64, batch_size=args.batch_size or 64,
                lr=5e-4, device=args.device, log=log,
            )  # fmt: skip
        elif args.model == "wavegan-piano":
            generator = train_wavegan(
                epochs=args.epochs or 16, seed=args.seed, d=args.base or 8, batch_size=args.batch_size or 32,
                device=args.device, log=log,
            )  # fmt: skip
        else:
            generator = train_vae(
                epochs=args.epochs or 10, seed=args.seed, batch_size=args.batch_size or 128, device=args.device, log=log
            )
        save_generator(generator, args.out)
    except (ScannerError, ValueError, OSError) as exc:
        print(f"dgmscan train: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"model": args.model, "out": str(args.out), "parameters": generator.num_parameters()}))
    return 0
