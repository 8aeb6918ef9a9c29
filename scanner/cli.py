"""The `dgmscan` command.

Library verbs (train, attack, export, inspect, scan) live in scanner/commands/, one module
each. Service verbs (serve, worker, keys) are plugins registered through the
`dgmscan.commands` entry-point group, so importing the scanner never pulls in the web,
queue or database stack.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from importlib.metadata import entry_points

from scanner import __version__

LIBRARY_VERBS: dict[str, str] = {
    "train": "train a benign generator (dcgan-mnist | vae-mnist on MNIST, wavegan-piano on synthesised piano notes)",
    "attack": "mount a backdoor attack of the paper on a model (trail | red | rex | bypass | poison)",
    "export": "convert a model between ONNX and safetensors",
    "inspect": "print a model's format, architecture, specs and parameter count",
    "scan": "scan a model for backdoors (exit 0 clean, 1 suspicious/backdoored, 2 error/rejected, 3 inconclusive)",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dgmscan", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"dgmscan {__version__}")
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    for verb, help_text in LIBRARY_VERBS.items():
        try:
            module = importlib.import_module(f"scanner.commands.{verb}")
        except ImportError as exc:  # one broken verb must not take the others down
            p = sub.add_parser(verb, help=f"(unavailable: {exc})")
            p.set_defaults(handler=_unavailable(verb, exc))
            continue
        p = sub.add_parser(verb, help=help_text, description=help_text)
        module.add_arguments(p)
        p.set_defaults(handler=module.run)
    for ep in entry_points(group="dgmscan.commands"):
        try:
            register = ep.load()
        except ImportError as exc:  # service extras not installed: say so only if used
            p = sub.add_parser(ep.name, help=f"(unavailable: {exc})")
            p.set_defaults(handler=_unavailable(ep.name, exc))
            continue
        register(sub)
    return parser


def _unavailable(name: str, exc: Exception):
    def handler(_args: argparse.Namespace) -> int:
        print(f"dgmscan {name}: unavailable ({exc}); service verbs need 'dgmscan[service]'", file=sys.stderr)
        return 2

    return handler


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.handler(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
