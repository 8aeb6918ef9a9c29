"""The suite runner: load a model safely, run the checks in order, decide the verdict.

One call does everything::

    report = run_scan(Path("model.safetensors"), targets=[Path("devil.png")],
                      config=ScanConfig(profile="quick"), artifacts_dir=Path("out"))
    report.verdict            # clean | suspicious | backdoored | rejected | inconclusive
    report.to_dict()          # the JSON report (schema: scanner/reports/report.schema.json)

It is also split in steps so a queue can fan out heavy, shardable checks (BF-OI's Closest-N,
the paper's Closest1M, Rawat et al. arXiv 2108.01644 Section V-C):

    session = open_scan(model_path, targets=..., config=..., artifacts_dir=...)   # load + select
    plan = plan_scan(session)                  # ordered steps; plan.fanout lists shardable checks
    # on any worker, each with its own open_scan(...) of the same inputs:
    partial = run_check_shard(session_w, "bf_oi.closest", shard)
    # back on the coordinating worker:
    merged = merge_shards(session, "bf_oi.closest", partials)
    report = execute_scan(session, precomputed={"bf_oi.closest": merged})

A check is fanned out only when it is shardable (``Check.shards(ctx)`` returns a list) and
requires no other check, so a shard worker needs nothing but the model, the targets and the
config. Shards are computed from the config and the model only and are therefore the same on
every worker. ``run_check_shard`` returns whatever the check's ``run_shard`` returns (check
authors keep it JSON-able or use a pickle-capable transport).

Selection (documented for users in docs/report-schema.md):
- the profile (quick | standard | full) picks the checks whose ``profiles`` contain it;
- ``config.only`` narrows the scan to those checks (names or whole families) plus, transitively,
  the checks they require; checks outside ``only`` are not part of the scan and not reported; a
  check named exactly runs even if the profile does not list it (opt-in checks have ``profiles = ()``);
- ``config.skip`` removes checks (names or families) but they ARE reported, as ``skipped``, so a
  skipped check that is needed for clean makes the verdict ``inconclusive`` (fail closed);
- order: topological by ``requires`` with ties broken by family (format, static, dynamic, bf_oi,
  calibration, sanitization, ob_oi, others) then name, so runs are deterministic. A check whose
  required check was skipped or errored still runs (it must cope with missing shared state).

Robustness: an exception inside a check becomes status ``error`` with the message (the suite
never crashes); a check that changes the model under scan (instead of working on
``Generator.copy()``) becomes ``error`` and the model is reloaded from the file; a broken check
module becomes an ``error`` result named ``suite.import_<module>``. Cancellation is checked
between checks (``ScanCanceled``) and offered to checks through ``ctx.should_cancel``, which also
turns true when a check passes its time budget (``config.budgets[name]`` seconds), so a check that
polls it stops early; the runner records ``budget_s`` / ``over_budget`` in its evidence.
"""

from __future__ import annotations

import hashlib
import heapq
import importlib
import math
import pkgutil
import re
import traceback
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

import scanner.checks as checks_pkg
from scanner import __version__
from scanner.checks.base import (
    CHECKS,
    PROFILES,
    Artifact,
    Check,
    CheckResult,
    ProgressCallback,
    ScanConfig,
    ScanContext,
    TargetHint,
    Timer,
    to_jsonable,
)
from scanner.errors import InvalidModelError, InvalidTargetError, RejectedModelError, ScannerError
from scanner.generator import Generator
from scanner.reports.media import write_output_media
from scanner.specs import LatentSpec, OutputSpec
from scanner.verdict import Verdict, decide_verdict

SCHEMA_VERSION = "1.0"
# Deterministic tie-break between checks that do not depend on each other: cheap, structural
# checks first so a failing file or a static finding shows up early in the progress bar.
FAMILY_ORDER: tuple[str, ...] = ("format", "static", "dynamic", "bf_oi", "calibration", "sanitization", "ob_oi")
_HASH_CHUNK = 1 << 20


class ScanCanceled(ScannerError):
    """The caller asked to stop (``should_cancel()`` returned true). ``partial`` holds finished results."""

    def __init__(self, message: str, partial: list[CheckResult] | None = None) -> None:
        super().__init__(message)
        self.partial = list(partial or [])


class ScanConfigError(ScannerError):
    """The scan configuration is wrong: unknown profile, check name or device."""


# -- report objects ----------------------------------------------------------------------------
@dataclass
class ModelInfo:
    """What the report says about the uploaded file and the generator loaded from it."""

    file_name: str
    sha256: str
    size_bytes: int
    format: str | None = None
    architecture: str | None = None
    latent: dict[str, Any] | None = None
    output: dict[str, Any] | None = None
    parameters: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "file_name": self.file_name,
            "sha256": self.sha256,
            "size_bytes": self.size_bytes,
            "format": self.format,
            "architecture": self.architecture,
            "latent": self.latent,
            "output": self.output,
            "parameters": self.parameters,
        }


@dataclass
class ScanReport:
    """The outcome of a scan. ``to_dict()`` is the JSON report, the source of truth."""

    model: ModelInfo
    config: ScanConfig
    verdict: Verdict
    verdict_reasons: list[str]
    started_at: datetime
    finished_at: datetime
    checks: list[CheckResult]
    check_info: dict[str, dict[str, Any]]  # name -> {"description", "needed_for_clean"}
    targets: list[dict[str, Any]]
    recovered_triggers: list[dict[str, Any]]
    findings: list[dict[str, Any]]
    load_error: str | None = None

    @property
    def duration_s(self) -> float:
        return (self.finished_at - self.started_at).total_seconds()

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "tool": {"name": "dgmscan", "version": __version__},
            "model": self.model.to_dict(),
            "profile": self.config.profile,
            "seed": self.config.seed,
            "device": self.config.device,
            "scope": {
                "only": list(self.config.only) if self.config.only is not None else None,
                "skip": list(self.config.skip),
            },
            "verdict": self.verdict,
            "verdict_reasons": list(self.verdict_reasons),
            "started_at": _iso(self.started_at),
            "finished_at": _iso(self.finished_at),
            "duration_s": round(self.duration_s, 3),
            "load_error": self.load_error,
            "targets": to_jsonable(self.targets),
            "checks": [{**r.to_dict(), **self.check_info.get(r.name, {})} for r in self.checks],
            "recovered_triggers": to_jsonable(self.recovered_triggers),
            "findings": to_jsonable(self.findings),
        }


def _iso(t: datetime) -> str:
    return t.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# -- scan session ------------------------------------------------------------------------------
@dataclass
class _LoadRequest:
    """How the model was loaded, kept so a model a check damaged can be reloaded."""

    model_path: Path
    architecture: str | None
    architecture_config: dict[str, Any] | None
    latent: LatentSpec | None
    output: OutputSpec | None


@dataclass
class ScanSession:
    """A loaded model, its targets and the ordered checks: what ``execute_scan`` runs."""

    ctx: ScanContext
    model: ModelInfo
    order: list[str]  # check names in run order
    checks: dict[str, Check]  # instantiated checks that can run
    preset_results: dict[str, CheckResult]  # skipped by config, import errors, cycles
    targets: list[dict[str, Any]]
    started_at: datetime
    reload: Callable[[], Generator]  # a fresh copy of the model, if a check damaged it
    user_cancel: Callable[[], bool] = lambda: False


@dataclass
class PlanStep:
    name: str
    shards: list[dict[str, Any]] | None = None  # set for checks that can be fanned out

    @property
    def fanout(self) -> bool:
        return self.shards is not None


@dataclass
class ScanPlan:
    """The checks of a scan in run order; steps with ``shards`` may be run by ``run_check_shard``."""

    steps: list[PlanStep] = field(default_factory=list)

    @property
    def fanout(self) -> list[PlanStep]:
        return [s for s in self.steps if s.fanout]


def sha256_file(path: Path) -> tuple[str, int]:
    """Streaming sha256 and size of a file (uploads can be large)."""
    h = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def safe_hint_name(file_name: str, taken: set[str]) -> str:
    """A target hint name safe to use in artifact paths (file names are attacker-controlled)."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", file_name).lstrip("._")[:64] or "target"
    name, i = stem, 1
    while name in taken:
        i += 1
        name = f"{stem}_{i}"
    taken.add(name)
    return name


def _validate_config(config: ScanConfig) -> None:
    if config.profile not in PROFILES:
        raise ScanConfigError(f"unknown profile {config.profile!r}; choose one of {', '.join(PROFILES)}")
    try:
        device = torch.device(config.device)
    except RuntimeError as exc:
        raise ScanConfigError(f"unknown device {config.device!r}: {exc}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ScanConfigError(f"device {config.device!r} requested but CUDA is not available on this machine")
    for name, budget in config.budgets.items():
        if not (isinstance(budget, (int, float)) and math.isfinite(budget) and budget > 0):
            raise ScanConfigError(f"budget for {name!r} must be a positive number of seconds, got {budget!r}")


def load_check_registry() -> tuple[dict[str, type[Check]], dict[str, CheckResult]]:
    """Import every check module (like ``scanner.checks.load_all``) but survive a broken one.

    A module that fails to import becomes an ``error`` result named ``suite.import_<module>``:
    a missing detector must make the verdict inconclusive, not crash the scan or pass silently.
    """
    broken: dict[str, CheckResult] = {}
    for mod in pkgutil.walk_packages(checks_pkg.__path__, prefix=checks_pkg.__name__ + "."):
        if mod.name.endswith(".base"):
            continue
        try:
            importlib.import_module(mod.name)
        except Exception as exc:  # a plugin bug must not stop the scan
            short = mod.name.rsplit(".", 1)[-1]
            name = f"suite.import_{short}"
            broken[name] = CheckResult(
                name=name,
                status="error",
                summary=f"check module {mod.name} failed to import: {type(exc).__name__}: {exc}",
            )
    return dict(CHECKS), broken


def _family_rank(name: str) -> tuple[int, str]:
    family = name.split(".", 1)[0]
    return (FAMILY_ORDER.index(family) if family in FAMILY_ORDER else len(FAMILY_ORDER), name)


def _match(names: set[str], selector: str) -> set[str]:
    """A selector is a check name or a family name."""
    return {n for n in names if n == selector or n.split(".", 1)[0] == selector}


def select_checks(registry: Mapping[str, type[Check]], config: ScanConfig) -> tuple[list[str], set[str], list[str]]:
    """Checks to run in order, the subset skipped by config, and any names caught in a cycle.

    Raises ScanConfigError for an unknown name in ``only`` / ``skip`` (a misspelt check must not
    silently narrow a scan).
    """
    in_profile = {n for n, cls in registry.items() if config.profile in cls.profiles}
    for selector in [*(config.only or []), *config.skip]:
        if not _match(set(registry), selector):
            raise ScanConfigError(f"unknown check or family {selector!r}; known checks: {', '.join(sorted(registry))}")
    for what, names in (("budget", config.budgets), ("parameters", config.params)):
        unknown = sorted(set(names) - set(registry))
        if unknown:
            raise ScanConfigError(
                f"{what} given for unknown check(s) {unknown}; known checks: {', '.join(sorted(registry))}"
            )
    if config.only is not None:
        if not config.only:
            raise ScanConfigError("`only` is empty: name at least one check or family (or leave it unset)")
        selected: set[str] = set()
        for selector in config.only:
            # a check named exactly runs even outside the profile: how opt-in checks (profiles = ()) are used
            hits = _match(in_profile, selector) or ({selector} if selector in registry else set())
            if not hits:
                raise ScanConfigError(f"{selector!r} is not part of the {config.profile!r} profile")
            selected |= hits
        frontier = list(selected)
        while frontier:  # pull in what the selected checks require
            for req in registry[frontier.pop()].requires:
                if req in in_profile and req not in selected:
                    selected.add(req)
                    frontier.append(req)
    else:
        selected = set(in_profile)
    skipped: set[str] = set()
    for selector in config.skip:
        skipped |= _match(selected, selector)
    order, cyclic = topological_order({n: registry[n].requires for n in selected})
    return order, skipped, cyclic


def topological_order(requires: Mapping[str, tuple[str, ...] | list[str]]) -> tuple[list[str], list[str]]:
    """Kahn's algorithm with a deterministic tie-break (family order, then name).

    Requirements outside ``requires``' keys are ignored. Returns (order, names left in a cycle).
    """
    deps = {n: {r for r in reqs if r in requires and r != n} for n, reqs in requires.items()}
    dependents: dict[str, list[str]] = {n: [] for n in deps}
    for n, reqs in deps.items():
        for r in reqs:
            dependents[r].append(n)
    indegree = {n: len(reqs) for n, reqs in deps.items()}
    ready = [_family_rank(n) for n, d in indegree.items() if d == 0]
    heapq.heapify(ready)
    order: list[str] = []
    while ready:
        _, name = heapq.heappop(ready)
        order.append(name)
        for m in dependents[name]:
            indegree[m] -= 1
            if indegree[m] == 0:
                heapq.heappush(ready, _family_rank(m))
    cyclic = sorted((n for n in deps if n not in order), key=_family_rank)
    return order, cyclic


def _load_model(req: _LoadRequest) -> Generator:
    from scanner.loading import load_generator  # the formats engineer's safe loader

    return load_generator(
        req.model_path,
        architecture=req.architecture,
        architecture_config=req.architecture_config,
        latent=req.latent,
        output=req.output,
    )


def _finding_dicts(findings: list[Any]) -> list[dict[str, Any]]:
    return [f.to_dict() if hasattr(f, "to_dict") else dict(f) for f in findings]


def open_scan(
    model_path: Path,
    *,
    targets: list[Path],
    config: ScanConfig,
    artifacts_dir: Path,
    should_cancel: Callable[[], bool] | None = None,
    architecture: str | None = None,
    architecture_config: dict[str, Any] | None = None,
    latent: LatentSpec | None = None,
    output: OutputSpec | None = None,
) -> ScanSession:
    """Hash, inspect and load the model, load the targets, select and order the checks.

    A rejected or invalid file does not raise: the session has no generator, ``ctx.load_error``
    says why and only ``format.*`` checks will run. Raises InvalidTargetError for a bad target
    hint and ScanConfigError for a bad configuration.
    """
    from scanner.loading import inspect_file

    _validate_config(config)
    started_at = datetime.now(timezone.utc)
    model_path = Path(model_path)
    artifacts_dir = Path(artifacts_dir)
    artifacts_dir.mkdir(parents=True, exist_ok=True)
    if not model_path.is_file():
        raise InvalidModelError(f"model file {model_path.name!r} does not exist or is not a regular file")
    sha256, size = sha256_file(model_path)
    model = ModelInfo(file_name=model_path.name, sha256=sha256, size_bytes=size)
    request = _LoadRequest(model_path, architecture, architecture_config, latent, output)

    generator: Generator | None = None
    load_error: str | None = None
    findings: list[dict[str, Any]] = []
    try:
        file_report = inspect_file(model_path)
        model.format = file_report.format
        findings += _finding_dicts(file_report.findings)
        generator = _load_model(request)
    except RejectedModelError as exc:
        load_error = f"rejected: {exc}"  # the loader's message already says how to convert the model
        findings += [f for f in _finding_dicts(exc.findings) if f not in findings]
    except InvalidModelError as exc:
        load_error = f"invalid: {exc}"

    if generator is not None:
        model.format = model.format or generator.source_format
        hints, target_entries = _load_targets(targets, generator.output, artifacts_dir)
    else:
        # without a model there is no output spec to convert targets to; list them only
        hints, target_entries = [], [{"file_name": Path(t).name, "name": None, "artifact": None} for t in targets]
    return _new_session(
        generator,
        model=model,
        hints=hints,
        target_entries=target_entries,
        config=config,
        artifacts_dir=artifacts_dir,
        model_path=model_path,
        load_error=load_error,
        findings=findings,
        started_at=started_at,
        reload=lambda: _load_model(request),
        should_cancel=should_cancel,
    )


def open_scan_generator(
    generator: Generator,
    *,
    targets: list[TargetHint],
    config: ScanConfig,
    artifacts_dir: Path,
    should_cancel: Callable[[], bool] | None = None,
    name: str = "<in-memory>",
) -> ScanSession:
    """Like ``open_scan`` for a model already in memory (trusted code, tests, notebooks).

    The scan works on a copy, so the caller's generator is never changed. Targets are hints
    already in the model's output space; only their names are sanitised.
    """
    _validate_config(config)
    started_at = datetime.now(timezone.utc)
    artifacts_dir = Path(artifacts_dir)
    artifacts_dir.mkdir(parents=True, exist_ok=True)
    pristine = generator.copy()
    digest = hashlib.sha256()
    for key, tensor in pristine.state_dict().items():
        digest.update(key.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    model = ModelInfo(file_name=name, sha256=digest.hexdigest(), size_bytes=0, format=pristine.source_format)
    hints: list[TargetHint] = []
    entries: list[dict[str, Any]] = []
    taken: set[str] = set()
    for i, hint in enumerate(targets):
        safe = safe_hint_name(hint.name, taken)
        hints.append(TargetHint(name=safe, tensor=hint.tensor))
        written, media_type = write_output_media(
            hint.tensor, pristine.output, artifacts_dir / "targets" / f"{i}_{safe}"
        )
        entries.append(
            {
                "file_name": hint.name,
                "name": safe,
                "artifact": _artifact(written, artifacts_dir, media_type, f"target hint {hint.name}"),
            }
        )
    return _new_session(
        pristine.copy(),
        model=model,
        hints=hints,
        target_entries=entries,
        config=config,
        artifacts_dir=artifacts_dir,
        model_path=None,
        load_error=None,
        findings=[],
        started_at=started_at,
        reload=pristine.copy,
        should_cancel=should_cancel,
    )


def _artifact(path: Path, artifacts_dir: Path, media_type: str, description: str) -> dict[str, str]:
    return {"name": path.relative_to(artifacts_dir).as_posix(), "media_type": media_type, "description": description}


def _new_session(
    generator: Generator | None,
    *,
    model: ModelInfo,
    hints: list[TargetHint],
    target_entries: list[dict[str, Any]],
    config: ScanConfig,
    artifacts_dir: Path,
    model_path: Path | None,
    load_error: str | None,
    findings: list[dict[str, Any]],
    started_at: datetime,
    reload: Callable[[], Generator],
    should_cancel: Callable[[], bool] | None,
) -> ScanSession:
    """Common tail of ``open_scan`` / ``open_scan_generator``: prepare the model, select the checks."""
    device = torch.device(config.device)
    if generator is not None:
        generator.eval()  # BatchNorm/Dropout in inference mode, as the model would be used
        generator.to(device)
        model.architecture = generator.architecture
        model.latent = generator.latent.to_dict()
        model.output = generator.output.to_dict()
        model.parameters = generator.num_parameters()

    registry, broken = load_check_registry()
    order, skipped, cyclic = select_checks(registry, config)
    preset: dict[str, CheckResult] = dict(broken)
    for name in skipped:
        preset[name] = CheckResult(name=name, status="skipped", summary="skipped by configuration")
    for name in cyclic:
        preset[name] = CheckResult(
            name=name, status="error", summary=f"dependency cycle among checks: {', '.join(cyclic)}"
        )
    order = [*sorted(broken), *order, *cyclic]
    instances: dict[str, Check] = {}
    for name in order:
        if name in preset:
            continue
        try:
            instances[name] = registry[name]()
        except Exception as exc:  # a plugin bug must not stop the scan
            preset[name] = CheckResult(name=name, status="error", summary=f"could not instantiate check: {exc}")

    user_cancel = should_cancel or (lambda: False)
    ctx = ScanContext(
        generator=generator,
        targets=hints,
        config=config,
        artifacts_dir=artifacts_dir,
        model_path=model_path,
        load_error=load_error,
        load_findings=findings,
        should_cancel=user_cancel,
    )

    def reload_model() -> Generator:
        return reload().eval().to(device)

    return ScanSession(
        ctx=ctx,
        model=model,
        order=order,
        checks=instances,
        preset_results=preset,
        targets=target_entries,
        started_at=started_at,
        reload=reload_model,
        user_cancel=user_cancel,
    )


def _load_targets(
    paths: list[Path], output: OutputSpec, artifacts_dir: Path
) -> tuple[list[TargetHint], list[dict[str, Any]]]:
    from scanner.targets import load_target  # the formats engineer's target reader

    hints: list[TargetHint] = []
    entries: list[dict[str, Any]] = []
    taken: set[str] = set()
    for i, path in enumerate(paths):
        path = Path(path)
        try:
            tensor = load_target(path, output)
        except InvalidTargetError as exc:
            raise InvalidTargetError(f"target hint {path.name!r}: {exc}") from exc
        name = safe_hint_name(path.name, taken)
        hints.append(TargetHint(name=name, tensor=tensor))
        written, media_type = write_output_media(tensor, output, artifacts_dir / "targets" / f"{i}_{name}")
        entries.append(
            {
                "file_name": path.name,
                "name": name,
                "artifact": _artifact(written, artifacts_dir, media_type, f"target hint {path.name}"),
            }
        )
    return hints, entries


def plan_scan(session: ScanSession) -> ScanPlan:
    """The steps ``execute_scan`` will take; shardable checks that require nothing carry their shards."""
    steps: list[PlanStep] = []
    for name in session.order:
        check = session.checks.get(name)
        shards = None
        if check is not None and session.ctx.generator is not None and not check.requires:
            try:
                shards = check.shards(session.ctx)
            except Exception:  # the check will run (and report its error) in-process instead
                shards = None
        steps.append(PlanStep(name=name, shards=shards))
    return ScanPlan(steps)


def run_check_shard(session: ScanSession, check_name: str, shard: dict[str, Any]) -> dict[str, Any]:
    """Run one shard of a fanned-out check (exceptions propagate to the queue, which reports them)."""
    check = _runnable(session, check_name)
    with _seeded(session.ctx.config.seed, f"{check_name}#{to_jsonable(shard)!r}"):
        return check.run_shard(session.ctx, shard)


def merge_shards(session: ScanSession, check_name: str, partials: list[dict[str, Any]]) -> CheckResult:
    """Merge shard outputs into the check's result; an exception becomes an ``error`` result."""
    check = _runnable(session, check_name)
    timer = Timer()
    try:
        result = check.merge(session.ctx, partials)
        _validate_result(result, check_name)
    except Exception as exc:
        result = error_result(check_name, exc)
    result.duration_s = max(result.duration_s, timer.elapsed)
    return result


def _runnable(session: ScanSession, check_name: str) -> Check:
    check = session.checks.get(check_name)
    if check is None or session.ctx.generator is None:
        raise ScanConfigError(f"check {check_name!r} is not runnable in this scan")
    return check


def error_result(check_name: str, exc: BaseException) -> CheckResult:
    """The result recorded when a check raised: status error with the message and a short traceback."""
    tb = traceback.format_exception(type(exc), exc, exc.__traceback__, limit=-5)
    return CheckResult(
        name=check_name,
        status="error",
        summary=f"{type(exc).__name__}: {exc}"[:500],
        evidence={"exception": type(exc).__name__, "traceback": "".join(tb)[-4000:]},
    )


def _validate_result(result: Any, check_name: str) -> None:
    if not isinstance(result, CheckResult):
        raise TypeError(f"check returned {type(result).__name__}, not a CheckResult")
    if result.name != check_name:
        raise ValueError(f"check returned a result named {result.name!r}")
    if result.status not in ("pass", "warn", "fail", "error", "skipped"):
        raise ValueError(f"check returned unknown status {result.status!r}")
    if not isinstance(result.evidence, dict):
        raise TypeError(f"check returned evidence of type {type(result.evidence).__name__}, not a dict")
    if not all(isinstance(a, Artifact) for a in result.artifacts):
        raise TypeError("check returned artifacts that are not scanner.checks.base.Artifact")
    for attr in ("score", "threshold"):
        value = getattr(result, attr)
        if value is not None and not isinstance(value, (int, float)):
            try:
                setattr(result, attr, float(value))  # numpy / 0-d tensor scores are fine
            except (TypeError, ValueError):
                raise TypeError(f"check returned a non-numeric {attr}: {type(value).__name__}") from None
    result.summary = str(result.summary)
    # the report must always serialise: anything to_jsonable does not know becomes its str()
    result.evidence = json_safe(to_jsonable(result.evidence))


def json_safe(obj: Any) -> Any:
    """Strict-JSON version of an already ``to_jsonable`` value: unknown objects become strings."""
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else str(obj)
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return str(obj)


class _seeded:
    """Seed torch's global RNG per check (reproducible whatever the order) and restore it after."""

    def __init__(self, seed: int, salt: str) -> None:
        self.seed = (seed * 1_000_003 + zlib.crc32(salt.encode())) % (2**63)
        self._fork = torch.random.fork_rng(devices=[])

    def __enter__(self) -> None:
        self._fork.__enter__()
        torch.manual_seed(self.seed)

    def __exit__(self, *exc: object) -> None:
        self._fork.__exit__(*exc)


def _fingerprint(generator: Generator) -> tuple[Any, ...]:
    """Cheap digest of every parameter and buffer (sum and sum of squares) and the train flag."""
    parts: list[Any] = [generator.training]
    with torch.no_grad():
        for name, t in [*generator.named_parameters(), *generator.named_buffers()]:
            d = t.detach().double()
            parts.append((name, tuple(t.shape), float(d.sum()), float((d * d).sum())))
    return tuple(parts)


def run_check(session: ScanSession, name: str) -> CheckResult:
    """Run one check in-process with its budget, seeded RNG and error capture."""
    ctx = session.ctx
    check = session.checks[name]
    budget = check.budget(ctx)
    timer = Timer()

    def should_stop() -> bool:  # cooperative: the scan was canceled, or this check is over budget
        return session.user_cancel() or (budget is not None and timer.elapsed > budget)

    before = _fingerprint(ctx.generator) if ctx.generator is not None else None
    ctx.should_cancel = should_stop
    try:
        with _seeded(ctx.config.seed, name):
            result = check.run(ctx)
        _validate_result(result, name)
    except Exception as exc:  # never crash the suite
        result = error_result(name, exc)
        if ctx.device.type == "cuda":
            torch.cuda.empty_cache()  # e.g. after an out-of-memory error, for the next checks
    finally:
        ctx.should_cancel = session.user_cancel
    result.duration_s = timer.elapsed
    if budget is not None:
        result.evidence = {**result.evidence, "budget_s": budget, "over_budget": timer.elapsed > budget}
    if before is not None and ctx.generator is not None and _fingerprint(ctx.generator) != before:
        # the check broke the rule "never mutate the model under scan": its result and anything
        # later checks would compute on the changed model cannot be trusted, so reload it
        result = CheckResult(
            name=name,
            status="error",
            summary="check modified the model under scan (checks must work on generator.copy()); model reloaded",
            duration_s=result.duration_s,
        )
        ctx.generator = session.reload()
    return result


def execute_scan(
    session: ScanSession,
    *,
    progress: ProgressCallback | None = None,
    precomputed: Mapping[str, CheckResult] | None = None,
) -> ScanReport:
    """Run the session's checks in order (``precomputed`` results, e.g. merged shards, are used as
    they are) and build the report. Raises ScanCanceled between checks when asked to stop."""
    ctx = session.ctx
    precomputed = dict(precomputed or {})
    total = max(len(session.order), 1)
    finished: list[CheckResult] = []
    for i, name in enumerate(session.order):
        if session.user_cancel():
            raise ScanCanceled(f"scan canceled before {name}", finished)
        if progress is not None:
            progress(name, i / total)
        if name in session.preset_results:
            result = session.preset_results[name]
        elif ctx.generator is None and not name.startswith("format."):
            result = CheckResult(name=name, status="skipped", summary="model not loaded (see load_error)")
        elif name in precomputed:
            result = precomputed[name]
        else:
            result = run_check(session, name)
        ctx.results[name] = result
        finished.append(result)
    if session.user_cancel():
        raise ScanCanceled("scan canceled", finished)
    if progress is not None:
        progress("done", 1.0)
    return _build_report(session, finished)


def _needed_for_clean(name: str) -> bool:
    cls = CHECKS.get(name)
    return True if cls is None else bool(cls.needed_for_clean)


def _build_report(session: ScanSession, results: list[CheckResult]) -> ScanReport:
    ctx = session.ctx
    decision = decide_verdict(results, needed_for_clean=_needed_for_clean, load_error=ctx.load_error)
    check_info = {
        r.name: {
            "description": CHECKS[r.name].description if r.name in CHECKS else "",
            "needed_for_clean": _needed_for_clean(r.name),
        }
        for r in results
    }
    return ScanReport(
        model=session.model,
        config=ctx.config,
        verdict=decision.verdict,
        verdict_reasons=decision.reasons,
        started_at=session.started_at,
        finished_at=datetime.now(timezone.utc),
        checks=results,
        check_info=check_info,
        targets=session.targets,
        recovered_triggers=_recovered_triggers(ctx),
        findings=list(ctx.load_findings),
        load_error=ctx.load_error,
    )


def _recovered_triggers(ctx: ScanContext) -> list[dict[str, Any]]:
    """Triggers OB-OI checks put in ``ctx.shared["recovered_triggers"]``: z as a list, G(z) as a file."""
    raw = ctx.shared.get("recovered_triggers") or []
    out: list[dict[str, Any]] = []
    if ctx.generator is None:
        return out
    for i, trig in enumerate(raw if isinstance(raw, list) else []):
        if not isinstance(trig, dict):
            continue
        entry: dict[str, Any] = {
            "source": str(trig.get("source", "")),
            "target": trig.get("target"),
            "tardis_mean": to_jsonable(trig.get("tardis_mean")),
            "z": to_jsonable(trig.get("z")),
            "artifact": None,
        }
        output = trig.get("output")
        if isinstance(output, torch.Tensor) and output.numel() == ctx.generator.output.numel:
            written, media_type = write_output_media(
                output, ctx.generator.output, ctx.artifacts_dir / "recovered_triggers" / str(i)
            )
            entry["artifact"] = _artifact(
                written, ctx.artifacts_dir, media_type, f"G(z*) of the trigger recovered by {entry['source']}"
            )
        out.append(entry)
    return out


def run_scan(
    model_path: Path,
    *,
    targets: list[Path],
    config: ScanConfig,
    artifacts_dir: Path,
    progress: ProgressCallback | None = None,
    should_cancel: Callable[[], bool] | None = None,
    architecture: str | None = None,
    architecture_config: dict[str, Any] | None = None,
    latent: LatentSpec | None = None,
    output: OutputSpec | None = None,
) -> ScanReport:
    """Scan a model file: ``open_scan`` then ``execute_scan`` (see the module docstring)."""
    session = open_scan(
        model_path,
        targets=targets,
        config=config,
        artifacts_dir=artifacts_dir,
        should_cancel=should_cancel,
        architecture=architecture,
        architecture_config=architecture_config,
        latent=latent,
        output=output,
    )
    return execute_scan(session, progress=progress)
