"""The check plugin interface.

A check is one module under scanner/checks/ defining a `Check` subclass with a unique
`name` ("family.name") and registering it with `@register_check`. The suite runner orders
checks by `requires`, gives each a `ScanContext`, and aggregates `CheckResult`s into a
verdict. Heavy checks may split their work into shards (`shards` / `run_shard` / `merge`)
so a queue can fan them out; the default runs them in-process.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch

from scanner.generator import Generator

Status = Literal["pass", "warn", "fail", "error", "skipped"]
Profile = Literal["quick", "standard", "full"]
PROFILES: tuple[Profile, ...] = ("quick", "standard", "full")


@dataclass
class Artifact:
    """A file a check wrote under the scan's artifacts directory."""

    name: str  # file name relative to the artifacts dir, e.g. "ob_oi.reconstruction/target0.png"
    media_type: str
    description: str = ""

    def to_dict(self) -> dict[str, str]:
        return {"name": self.name, "media_type": self.media_type, "description": self.description}


@dataclass
class CheckResult:
    name: str
    status: Status
    summary: str
    score: float | None = None
    threshold: float | None = None
    evidence: dict[str, Any] = field(default_factory=dict)  # JSON-serialisable
    artifacts: list[Artifact] = field(default_factory=list)
    duration_s: float = 0.0

    @property
    def family(self) -> str:
        return self.name.split(".", 1)[0]

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "family": self.family,
            "status": self.status,
            "score": _finite_or_none(self.score),
            "threshold": _finite_or_none(self.threshold),
            "summary": self.summary,
            "evidence": to_jsonable(self.evidence),
            "artifacts": [a.to_dict() for a in self.artifacts],
            "duration_s": round(self.duration_s, 3),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CheckResult:
        return cls(
            name=d["name"],
            status=d["status"],
            summary=d["summary"],
            score=d.get("score"),
            threshold=d.get("threshold"),
            evidence=d.get("evidence", {}),
            artifacts=[Artifact(**a) for a in d.get("artifacts", [])],
            duration_s=d.get("duration_s", 0.0),
        )


def _finite_or_none(x: float | None) -> float | None:
    if x is None:
        return None
    x = float(x)
    return x if np.isfinite(x) else None


def to_jsonable(obj: Any) -> Any:
    """Tensors / arrays / numpy scalars -> lists and floats; NaN/Inf -> strings."""
    if isinstance(obj, torch.Tensor):
        obj = obj.detach().cpu().numpy()
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        f = float(obj)
        return f if np.isfinite(f) else str(f)
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    return obj


@dataclass
class TargetHint:
    """A target the user suspects is embedded, already converted to the model's output
    shape and value range (see scanner.targets)."""

    name: str
    tensor: torch.Tensor  # shape == generator.output.shape, values in output.value_range


@dataclass
class ScanConfig:
    profile: Profile = "quick"
    seed: int = 0
    device: str = "cpu"
    # per-check parameter overrides: {"bf_oi.closest": {"n_samples": 100000}}
    params: dict[str, dict[str, Any]] = field(default_factory=dict)
    # per-check wall-clock budgets in seconds (a check past its budget stops early and says so)
    budgets: dict[str, float] = field(default_factory=dict)
    only: list[str] | None = None  # run just these checks (and what they require)
    skip: list[str] = field(default_factory=list)


ProgressCallback = Callable[[str, float], None]  # (current check name, overall fraction 0..1)


@dataclass
class ScanContext:
    """Everything a check may read, plus a scratch space for results later checks use."""

    generator: Generator | None
    targets: list[TargetHint]
    config: ScanConfig
    artifacts_dir: Path
    model_path: Path | None = None
    load_error: str | None = None  # why `generator` is None
    load_findings: list[dict[str, Any]] = field(default_factory=list)
    results: dict[str, CheckResult] = field(default_factory=dict)
    # objects later checks consume: e.g. "static.flagged_units", "sanitization.model"
    shared: dict[str, Any] = field(default_factory=dict)
    should_cancel: Callable[[], bool] = lambda: False

    @property
    def device(self) -> torch.device:
        return torch.device(self.config.device)

    def rng(self, salt: str) -> torch.Generator:
        """A CPU generator seeded from the scan seed and a per-check salt (reproducible)."""
        h = int.from_bytes(salt.encode()[:8].ljust(8, b"\0"), "little") % (2**31)
        return torch.Generator().manual_seed(self.config.seed * 1_000_003 + h)

    def artifact_path(self, name: str) -> Path:
        p = self.artifacts_dir / name
        p.parent.mkdir(parents=True, exist_ok=True)
        return p


class Check:
    """Base class of every check. Subclasses set the class variables and implement `run`."""

    name: ClassVar[str]
    description: ClassVar[str] = ""
    # a check needed for a "clean" verdict: if it errors or is skipped, the verdict is inconclusive
    needed_for_clean: ClassVar[bool] = True
    profiles: ClassVar[tuple[Profile, ...]] = PROFILES
    requires: ClassVar[tuple[str, ...]] = ()  # checks whose results/shared state this one reads
    # default parameters per profile; `ScanConfig.params[name]` overrides them
    defaults: ClassVar[dict[Profile, dict[str, Any]]] = {}

    @property
    def family(self) -> str:
        return self.name.split(".", 1)[0]

    def params(self, ctx: ScanContext) -> dict[str, Any]:
        base = dict(self.defaults.get(ctx.config.profile, {}))
        override = ctx.config.params.get(self.name, {})
        unknown = set(override) - set(base)
        if unknown:
            raise ValueError(f"{self.name}: unknown parameter(s) {sorted(unknown)}")
        base.update(override)
        return base

    def budget(self, ctx: ScanContext) -> float | None:
        return ctx.config.budgets.get(self.name)

    def stopper(self, ctx: ScanContext, timer: Timer) -> Callable[[], bool]:
        """The `should_stop` a search polls: the scan was cancelled or this check ran past its budget."""
        budget = self.budget(ctx)
        return lambda: ctx.should_cancel() or (budget is not None and timer.elapsed > budget)

    def run(self, ctx: ScanContext) -> CheckResult:  # pragma: no cover - interface
        raise NotImplementedError

    # -- optional sharding ------------------------------------------------------------------
    def shards(self, ctx: ScanContext) -> list[dict[str, Any]] | None:
        """Split the work (e.g. BF-OI seed ranges). None means: not shardable."""
        return None

    def run_shard(self, ctx: ScanContext, shard: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError(f"{self.name} is not shardable")

    def merge(self, ctx: ScanContext, partials: list[dict[str, Any]]) -> CheckResult:
        raise NotImplementedError(f"{self.name} is not shardable")

    # -- helpers for subclasses -------------------------------------------------------------
    def result(self, status: Status, summary: str, **kw: Any) -> CheckResult:
        return CheckResult(name=self.name, status=status, summary=summary, **kw)

    def skipped(self, summary: str) -> CheckResult:
        return self.result("skipped", summary)


CHECKS: dict[str, type[Check]] = {}


def register_check(cls: type[Check]) -> type[Check]:
    if cls.name in CHECKS:
        raise ValueError(f"check {cls.name!r} registered twice")
    if "." not in cls.name:
        raise ValueError(f"check name {cls.name!r} must be family.name")
    CHECKS[cls.name] = cls
    return cls


class Timer:
    def __init__(self) -> None:
        self.t0 = time.perf_counter()

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.t0
