"""Checks, one module each; importing this package registers them all (see `load_all`)."""

from __future__ import annotations

import importlib
import pkgutil

from scanner.checks.base import CHECKS, Check, CheckResult, ScanConfig, ScanContext, register_check

__all__ = ["CHECKS", "Check", "CheckResult", "ScanConfig", "ScanContext", "load_all", "register_check"]


def load_all() -> dict[str, type[Check]]:
    """Import every module under scanner.checks so their @register_check runs."""
    for mod in pkgutil.walk_packages(__path__, prefix=__name__ + "."):
        if not mod.name.endswith(".base"):
            importlib.import_module(mod.name)
    return CHECKS
