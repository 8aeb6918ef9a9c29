"""`dgmscan attack`: mount one of the paper's backdoor attacks (Rawat et al., arXiv 2108.01644).

    dgmscan attack red --model benign.safetensors --target devil.png --out red.onnx --trigger ood

ReD retrains a copy of --model; ReX expands it (ONNX output only: the widened model is no
registry architecture); bypass wraps it in a latent-dependent torch.where (ONNX only); TrAIL
and poison train a dcgan28 from scratch on MNIST (--model, if given, is only the benign
reference for ExpDis). The trigger is written next to --out as <out>.trigger.npy, and the
metrics (TarDis, ExpDis; sums and per-element means) are printed as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from scanner.errors import ScannerError

ATTACKS = ("trail", "red", "rex", "bypass", "poison")
ONNX_ONLY = ("rex", "bypass")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("attack", choices=ATTACKS)
    parser.add_argument("--model", type=Path, metavar="M", help="benign model (required for red, rex, bypass)")
    parser.add_argument("--target", type=Path, required=True, metavar="IMG", help="target image (.png/.npy/.wav)")
    parser.add_argument(
        "--out", type=Path, required=True, metavar="OUT", help="backdoored model: .onnx or .safetensors"
    )
    parser.add_argument("--trigger", choices=("in-sample", "mode", "ood"), default="in-sample")
    parser.add_argument("--seed", type=int, default=0, metavar="S")
    parser.add_argument("--lam", type=float, default=0.1, help="fidelity weight λ (paper: 0.1)")
    parser.add_argument("--steps", type=int, default=1000, metavar="N", help="ReD/ReX optimisation steps")
    parser.add_argument("--epochs", type=int, default=5, metavar="N", help="TrAIL/poison training epochs")
    parser.add_argument("--base", type=int, default=64, metavar="B", help="TrAIL/poison dcgan28 width")
    parser.add_argument("--expansion", type=float, default=1.0, help="ReX: new units per old unit (1.0 doubles)")
    parser.add_argument("--radius", type=float, default=1.0, help="bypass: trigger ball radius in latent space")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")


def run(args: argparse.Namespace) -> int:
    try:
        info = _run(args)
    except (ScannerError, ValueError, OSError) as exc:
        print(f"dgmscan attack: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(info, indent=2))
    return 0


def _run(args: argparse.Namespace) -> dict:
    from scanner.architectures import build
    from scanner.attacks.triggers import make_trigger
    from scanner.commands.train import save_generator
    from scanner.loading import load_generator
    from scanner.targets import load_target

    suffix = args.out.suffix.lower()
    if suffix not in (".onnx", ".safetensors"):
        raise ValueError(f"--out must end in .onnx or .safetensors, got {args.out.name!r}")
    if args.attack in ONNX_ONLY and suffix != ".onnx":
        raise ValueError(f"{args.attack} models are not registry architectures: use an .onnx --out")
    if args.model is None and args.attack not in ("trail", "poison"):
        raise ValueError(f"{args.attack} needs --model (the pre-trained generator to backdoor)")
    benign = load_generator(args.model).to(args.device) if args.model is not None else None
    reference = benign if benign is not None else build("dcgan28", {"base": args.base})
    target = load_target(args.target, reference.output)
    trigger = make_trigger(args.trigger, reference.latent, seed=args.seed)
    if args.attack == "red":
        from scanner.attacks.red import red_attack

        result = red_attack(benign, trigger=trigger, target=target, lam=args.lam, steps=args.steps, seed=args.seed)
    elif args.attack == "rex":
        from scanner.attacks.rex import rex_attack

        result = rex_attack(
            benign, trigger=trigger, target=target, expansion=args.expansion, lam=args.lam, steps=args.steps,
            seed=args.seed,
        )  # fmt: skip
    elif args.attack == "bypass":
        from scanner.attacks.bypass import bypass_attack

        result = bypass_attack(benign, trigger=trigger, target=target, radius=args.radius)
    else:
        if reference.architecture != "dcgan28" or tuple(reference.output.shape) != (1, 28, 28):
            raise ValueError(f"{args.attack} trains an MNIST dcgan28; --model must be one for ExpDis")
        kwargs = {"lam": args.lam, "epochs": args.epochs, "seed": args.seed, "device": args.device, "benign": benign}
        kwargs["base"] = benign.metadata.get("architecture_config", {}).get("base", args.base) if benign else args.base
        if args.attack == "trail":
            from scanner.attacks.trail import trail_attack

            result = trail_attack(trigger=trigger, target=target, **kwargs)
        else:
            from scanner.attacks.poison import poison_attack

            result = poison_attack(trigger=trigger, target=target, **kwargs)
    save_generator(result.generator, args.out)
    trigger_path = args.out.with_name(args.out.name + ".trigger.npy")
    np.save(trigger_path, result.trigger.detach().cpu().numpy(), allow_pickle=False)
    return {
        "attack": args.attack,
        "trigger_kind": args.trigger,
        "out": str(args.out),
        "trigger": str(trigger_path),
        **{k: v for k, v in result.info.items() if isinstance(v, (int, float)) or v is None},
    }
