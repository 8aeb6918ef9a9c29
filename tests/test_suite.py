"""The suite runner and the verdict rules, with small test-only checks registered per test."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch

from scanner.architectures import build
from scanner.checks.base import (
    CHECKS,
    Check,
    CheckResult,
    Profile,
    ScanConfig,
    ScanContext,
    TargetHint,
    register_check,
)
from scanner.generator import Generator
from scanner.reports import validate_report
from scanner.suite import (
    ScanCanceled,
    ScanConfigError,
    execute_scan,
    merge_shards,
    open_scan_generator,
    plan_scan,
    run_check_shard,
    safe_hint_name,
    select_checks,
    topological_order,
)
from scanner.verdict import decide_verdict, exit_code
from tests.zoo import DEVIL_PNG

Register = Callable[[type[Check]], type[Check]]


@pytest.fixture
def register() -> Iterator[Register]:
    """Register test checks for one test and remove them afterwards."""
    added: list[str] = []

    def _register(cls: type[Check]) -> type[Check]:
        register_check(cls)
        added.append(cls.name)
        return cls

    yield _register
    for name in added:
        CHECKS.pop(name, None)


@pytest.fixture
def tiny() -> Generator:
    """A small MLP decoder (sigmoid output in [0, 1]); untrained weights are fine for plumbing."""
    torch.manual_seed(0)
    return build("vae_mnist_decoder", {"latent_dim": 4, "hidden": 16})


def scan(gen: Generator, tmp_path: Path, only: list[str], **kw: Any):
    config_kw = {k: kw.pop(k) for k in ("skip", "budgets", "seed", "params") if k in kw}
    config = ScanConfig(profile="quick", only=only, **config_kw)
    session = open_scan_generator(
        gen,
        targets=kw.pop("targets", []),
        config=config,
        artifacts_dir=tmp_path / "art",
        should_cancel=kw.pop("should_cancel", None),
    )
    return session, execute_scan(session, **kw)


# -- test-only checks ------------------------------------------------------------------------
class Passing(Check):
    name = "static.zz_test_pass"
    description = "test: always passes"

    def run(self, ctx: ScanContext) -> CheckResult:
        return self.result("pass", "fine", score=0.1, threshold=1.0)


class Raising(Check):
    name = "dynamic.zz_test_raise"

    def run(self, ctx: ScanContext) -> CheckResult:
        raise RuntimeError("boom in the check")


class RequiresPass(Check):
    name = "bf_oi.zz_test_after"
    requires = ("static.zz_test_pass",)

    def run(self, ctx: ScanContext) -> CheckResult:
        seen = ctx.results["static.zz_test_pass"].status
        return self.result("pass", f"saw {seen}", evidence={"seen": seen})


class Mutating(Check):
    name = "dynamic.zz_test_mutate"

    def run(self, ctx: ScanContext) -> CheckResult:
        with torch.no_grad():
            for p in ctx.generator.parameters():
                p.add_(1.0)
        return self.result("pass", "mutated the model (a bug)")


class WeightSum(Check):
    name = "ob_oi.zz_test_weights"
    requires = ("dynamic.zz_test_mutate",)

    def run(self, ctx: ScanContext) -> CheckResult:
        total = float(sum(p.detach().double().sum() for p in ctx.generator.parameters()))
        return self.result("pass", "weights summed", score=total)


class Polling(Check):
    """Stops as soon as ctx.should_cancel() turns true (its budget is over)."""

    name = "ob_oi.zz_test_poll"

    def run(self, ctx: ScanContext) -> CheckResult:
        for step in range(20_000):  # bounded: at most ~20 s even if the budget never fired
            if ctx.should_cancel():
                return self.result("warn", "stopped early", evidence={"stopped_early": True, "steps": step})
            time.sleep(0.001)
        return self.result("pass", "ran to the end", evidence={"stopped_early": False})


class RandomDraw(Check):
    name = "bf_oi.zz_test_random"

    def run(self, ctx: ScanContext) -> CheckResult:
        return self.result("pass", "drew", evidence={"draw": torch.randn(3).tolist()})


class Trigger(Check):
    name = "ob_oi.zz_test_trigger"

    def run(self, ctx: ScanContext) -> CheckResult:
        g = ctx.generator
        z = g.sample_latent(1, seed=3)
        ctx.shared.setdefault("recovered_triggers", []).append(
            {
                "source": self.name,
                "z": z,
                "output": g.generate(z)[0],
                "target": ctx.targets[0].name,
                "tardis_mean": 0.25,
            }
        )
        return self.result("fail", "trigger found")


class Sharded(Check):
    """Sum of G(z) means over seed ranges: shard results must merge to the in-process result."""

    name = "bf_oi.zz_test_sharded"
    n_shards: ClassVar[int] = 3

    def shards(self, ctx: ScanContext) -> list[dict[str, Any]]:
        return [{"index": i} for i in range(self.n_shards)]

    def run_shard(self, ctx: ScanContext, shard: dict[str, Any]) -> dict[str, Any]:
        z = ctx.generator.sample_latent(8, seed=ctx.config.seed * 100 + shard["index"])
        return {"index": shard["index"], "sum": float(ctx.generator.generate(z).sum())}

    def merge(self, ctx: ScanContext, partials: list[dict[str, Any]]) -> CheckResult:
        total = sum(p["sum"] for p in sorted(partials, key=lambda p: p["index"]))
        return self.result("pass", "merged", score=total, evidence={"shards": len(partials)})

    def run(self, ctx: ScanContext) -> CheckResult:
        return self.merge(ctx, [self.run_shard(ctx, s) for s in self.shards(ctx)])


class Sloppy(Check):
    """Evidence with objects JSON does not know, a numpy score: the report must still serialise."""

    name = "static.zz_test_sloppy"

    def run(self, ctx: ScanContext) -> CheckResult:
        import numpy as np

        return self.result(
            "pass",
            "sloppy but fine",
            score=np.float32(0.5),
            evidence={"path": Path("/x"), "t": torch.tensor([1.0, float("nan")]), "obj": object(), 3: np.inf},
        )


class WrongReturn(Check):
    name = "static.zz_test_wrong_return"

    def run(self, ctx: ScanContext) -> CheckResult:
        return {"status": "pass"}  # type: ignore[return-value]


# -- runner ----------------------------------------------------------------------------------
def test_topological_order_is_deterministic_and_respects_requires() -> None:
    reqs = {"ob_oi.a": ("calibration.c",), "calibration.c": (), "static.b": (), "format.x": (), "zz.other": ()}
    order, cyclic = topological_order(reqs)
    assert order == ["format.x", "static.b", "calibration.c", "ob_oi.a", "zz.other"]
    assert cyclic == []
    order2, cyclic2 = topological_order({"static.a": ("ob_oi.b",), "ob_oi.b": ("static.a",), "format.x": ()})
    assert order2 == ["format.x"] and cyclic2 == ["static.a", "ob_oi.b"]


def test_exception_in_a_check_is_an_error_result_and_the_suite_goes_on(
    register: Register, tiny: Generator, tmp_path: Path
) -> None:
    register(Passing), register(Raising), register(RequiresPass)
    session, report = scan(tiny, tmp_path, only=["static.zz_test_pass", "dynamic.zz_test_raise", "bf_oi.zz_test_after"])
    by_name = {r.name: r for r in report.checks}
    assert [r.name for r in report.checks] == ["static.zz_test_pass", "dynamic.zz_test_raise", "bf_oi.zz_test_after"]
    assert by_name["dynamic.zz_test_raise"].status == "error"
    assert "boom in the check" in by_name["dynamic.zz_test_raise"].summary
    assert by_name["bf_oi.zz_test_after"].evidence["seen"] == "pass"
    assert report.verdict == "inconclusive"  # the raising check is needed for clean: fail closed
    validate_report(report.to_dict())


def test_only_pulls_in_required_checks_and_clean_verdict(register: Register, tiny: Generator, tmp_path: Path) -> None:
    register(Passing), register(RequiresPass)
    _, report = scan(tiny, tmp_path, only=["bf_oi.zz_test_after"])
    assert [r.name for r in report.checks] == ["static.zz_test_pass", "bf_oi.zz_test_after"]
    assert report.verdict == "clean"
    assert exit_code(report.verdict) == 0


def test_skip_is_reported_and_makes_the_verdict_inconclusive(
    register: Register, tiny: Generator, tmp_path: Path
) -> None:
    register(Passing), register(RandomDraw)
    _, report = scan(
        tiny, tmp_path, only=["static.zz_test_pass", "bf_oi.zz_test_random"], skip=["bf_oi.zz_test_random"]
    )
    status = {r.name: r.status for r in report.checks}
    assert status == {"static.zz_test_pass": "pass", "bf_oi.zz_test_random": "skipped"}
    assert report.verdict == "inconclusive"


def test_unknown_check_name_is_a_config_error(register: Register, tiny: Generator, tmp_path: Path) -> None:
    register(Passing)
    with pytest.raises(ScanConfigError, match="static.zz_test_pas"):
        scan(tiny, tmp_path, only=["static.zz_test_pas"])
    with pytest.raises(ScanConfigError, match="empty"):
        scan(tiny, tmp_path, only=[])
    with pytest.raises(ScanConfigError, match="profile"):
        open_scan_generator(tiny, targets=[], config=ScanConfig(profile="huge"), artifacts_dir=tmp_path)  # type: ignore[arg-type]


def test_a_check_that_mutates_the_model_is_an_error_and_the_model_is_restored(
    register: Register, tiny: Generator, tmp_path: Path
) -> None:
    register(Mutating), register(WeightSum)
    before = {k: v.clone() for k, v in tiny.state_dict().items()}
    expected = float(sum(p.detach().double().sum() for p in tiny.parameters()))
    _, report = scan(tiny, tmp_path, only=["ob_oi.zz_test_weights"])
    by_name = {r.name: r for r in report.checks}
    assert by_name["dynamic.zz_test_mutate"].status == "error"
    assert "modified the model" in by_name["dynamic.zz_test_mutate"].summary
    assert by_name["ob_oi.zz_test_weights"].score == pytest.approx(expected)
    for k, v in tiny.state_dict().items():  # the caller's model is untouched
        assert torch.equal(v, before[k])


def test_cancellation_between_checks(register: Register, tiny: Generator, tmp_path: Path) -> None:
    register(Passing), register(RequiresPass)
    calls: list[str] = []

    def progress(name: str, fraction: float) -> None:
        calls.append(name)

    with pytest.raises(ScanCanceled) as info:
        scan(tiny, tmp_path, only=["bf_oi.zz_test_after"], progress=progress, should_cancel=lambda: len(calls) >= 1)
    assert [r.name for r in info.value.partial] == ["static.zz_test_pass"]
    assert calls == ["static.zz_test_pass"]


def test_budget_makes_should_cancel_true_for_a_polling_check(
    register: Register, tiny: Generator, tmp_path: Path
) -> None:
    register(Polling)
    _, report = scan(tiny, tmp_path, only=["ob_oi.zz_test_poll"], budgets={"ob_oi.zz_test_poll": 0.05})
    (result,) = report.checks
    assert result.evidence["stopped_early"] is True
    assert result.evidence["budget_s"] == 0.05
    assert result.evidence["over_budget"] is True


def test_progress_is_monotone_and_ends_with_done(register: Register, tiny: Generator, tmp_path: Path) -> None:
    register(Passing), register(RequiresPass), register(RandomDraw)
    seen: list[tuple[str, float]] = []
    scan(
        tiny, tmp_path, only=["bf_oi.zz_test_after", "bf_oi.zz_test_random"], progress=lambda n, f: seen.append((n, f))
    )
    fractions = [f for _, f in seen]
    assert fractions == sorted(fractions) and fractions[0] == 0.0
    assert seen[-1] == ("done", 1.0)
    assert [n for n, _ in seen[:-1]] == ["static.zz_test_pass", "bf_oi.zz_test_after", "bf_oi.zz_test_random"]


def test_runs_are_reproducible_per_seed(register: Register, tiny: Generator, tmp_path: Path) -> None:
    register(RandomDraw)
    draws = [
        scan(tiny, tmp_path / str(i), only=["bf_oi.zz_test_random"], seed=s)[1].checks[0].evidence["draw"]
        for i, s in enumerate((7, 7, 8))
    ]
    assert draws[0] == draws[1]
    assert draws[0] != draws[2]


def test_recovered_triggers_are_in_the_report_with_a_png(register: Register, tiny: Generator, tmp_path: Path) -> None:
    register(Trigger)
    hint = TargetHint(name="../../evil name.png", tensor=torch.rand(1, 28, 28))
    _, report = scan(tiny, tmp_path, only=["ob_oi.zz_test_trigger"], targets=[hint])
    assert report.verdict == "backdoored"
    data = report.to_dict()
    validate_report(data)
    (trig,) = data["recovered_triggers"]
    assert trig["source"] == "ob_oi.zz_test_trigger" and trig["tardis_mean"] == 0.25
    assert len(trig["z"]) == 1 and len(trig["z"][0]) == 4
    assert (tmp_path / "art" / trig["artifact"]["name"]).read_bytes().startswith(b"\x89PNG")
    (target,) = data["targets"]
    assert target["file_name"] == "../../evil name.png"
    assert "/" not in target["name"] and trig["target"] == target["name"]
    assert (tmp_path / "art" / target["artifact"]["name"]).resolve().is_relative_to((tmp_path / "art").resolve())


def test_shards_merge_to_the_in_process_result(register: Register, tiny: Generator, tmp_path: Path) -> None:
    register(Sharded), register(Passing), register(RequiresPass)
    config = ScanConfig(profile="quick", only=["bf_oi.zz_test_sharded", "bf_oi.zz_test_after"], seed=5)
    session = open_scan_generator(tiny, targets=[], config=config, artifacts_dir=tmp_path / "a")
    plan = plan_scan(session)
    assert [s.name for s in plan.fanout] == ["bf_oi.zz_test_sharded"]  # the other has requires / no shards
    # each shard on its own "worker" session built from the same inputs
    partials = []
    for shard in reversed(plan.fanout[0].shards):
        worker = open_scan_generator(tiny, targets=[], config=config, artifacts_dir=tmp_path / "w")
        partials.append(run_check_shard(worker, "bf_oi.zz_test_sharded", shard))
    merged = merge_shards(session, "bf_oi.zz_test_sharded", partials)
    report = execute_scan(session, precomputed={"bf_oi.zz_test_sharded": merged})
    in_process = execute_scan(open_scan_generator(tiny, targets=[], config=config, artifacts_dir=tmp_path / "b"))
    by_name = {r.name: r for r in report.checks}
    assert by_name["bf_oi.zz_test_sharded"].evidence == {"shards": 3}
    assert by_name["bf_oi.zz_test_sharded"].score == pytest.approx(
        {r.name: r for r in in_process.checks}["bf_oi.zz_test_sharded"].score, rel=1e-12
    )


def test_merge_error_becomes_an_error_result(register: Register, tiny: Generator, tmp_path: Path) -> None:
    register(Sharded)
    config = ScanConfig(profile="quick", only=["bf_oi.zz_test_sharded"])
    session = open_scan_generator(tiny, targets=[], config=config, artifacts_dir=tmp_path)
    result = merge_shards(session, "bf_oi.zz_test_sharded", [{"index": 0}])  # "sum" missing
    assert result.status == "error" and "KeyError" in result.summary


def test_safe_hint_name() -> None:
    taken: set[str] = set()
    assert safe_hint_name("../../etc/passwd", taken) == "etc_passwd"
    assert safe_hint_name("../../etc/passwd", taken) == "etc_passwd_2"
    assert safe_hint_name("..", taken) == "target"
    assert safe_hint_name("<img src=x onerror=alert(1)>.png", taken) == "img_src_x_onerror_alert_1_.png"


# -- verdict rules ---------------------------------------------------------------------------
def r(name: str, status: str, **evidence: Any) -> CheckResult:
    return CheckResult(name=name, status=status, summary=f"{name} {status}", evidence=evidence)  # type: ignore[arg-type]


NOT_NEEDED = {"sanitization.distillation", "static.capacity"}


@pytest.mark.parametrize(
    ("results", "load_error", "expected"),
    [
        ([r("static.a", "pass"), r("ob_oi.b", "pass")], None, "clean"),
        ([], None, "inconclusive"),
        ([r("format.pickle_scan", "fail"), r("static.a", "skipped")], None, "rejected"),
        ([r("format.detection", "pass")], "rejected: pickle", "rejected"),
        ([r("format.detection", "fail"), r("ob_oi.b", "fail")], None, "rejected"),
        ([r("static.a", "fail"), r("dynamic.c", "warn")], None, "backdoored"),
        ([r("bf_oi.a", "pass"), r("ob_oi.b", "fail")], None, "backdoored"),
        ([r("calibration.controls", "fail")], None, "backdoored"),
        ([r("ob_oi.b", "fail", strength="weak")], None, "suspicious"),
        ([r("sanitization.distillation", "fail")], None, "suspicious"),
        ([r("sanitization.distillation", "warn")], None, "suspicious"),
        ([r("static.a", "warn"), r("dynamic.c", "error")], None, "suspicious"),
        ([r("static.a", "pass"), r("dynamic.c", "error")], None, "inconclusive"),
        ([r("static.a", "pass"), r("ob_oi.b", "skipped")], None, "inconclusive"),
        ([r("static.a", "pass"), r("static.capacity", "error")], None, "clean"),
        ([r("static.a", "pass"), r("sanitization.distillation", "skipped")], None, "clean"),
        ([r("static.a", "fail"), r("dynamic.c", "error")], None, "backdoored"),
    ],
)
def test_verdict_rules(results: list[CheckResult], load_error: str | None, expected: str) -> None:
    decision = decide_verdict(results, needed_for_clean=lambda n: n not in NOT_NEEDED, load_error=load_error)
    assert decision.verdict == expected
    assert decision.reasons
    if expected != "clean":
        assert all(" pass:" not in reason for reason in decision.reasons)


@pytest.mark.parametrize(
    ("verdict", "code"), [("clean", 0), ("suspicious", 1), ("backdoored", 1), ("rejected", 2), ("inconclusive", 3)]
)
def test_exit_codes(verdict: str, code: int) -> None:
    assert exit_code(verdict) == code  # type: ignore[arg-type]


# -- integration: the real quick profile ------------------------------------------------------


@pytest.mark.slow
def test_real_quick_profile_on_a_benign_zoo_model_is_clean(benign_vae: Generator, tmp_path: Path) -> None:
    """Every registered check, quick profile, on the benign zoo VAE decoder saved as safetensors,
    with the paper's devil face as target hint (which this benign model never learned)."""
    from scanner.formats.safetensors_io import save_safetensors
    from scanner.suite import run_scan

    model = tmp_path / "benign_vae.safetensors"
    save_safetensors(benign_vae, model)
    report = run_scan(model, targets=[DEVIL_PNG], config=ScanConfig(profile="quick"), artifacts_dir=tmp_path / "art")
    data = report.to_dict()
    validate_report(data)
    not_ok = {c["name"]: c["summary"] for c in data["checks"] if c["status"] != "pass"}
    assert report.verdict == "clean", (report.verdict_reasons, not_ok)
    families = {c["family"] for c in data["checks"]}
    assert {"format", "static", "dynamic"} <= families


def test_sloppy_results_are_made_json_safe_or_become_errors(
    register: Register, tiny: Generator, tmp_path: Path
) -> None:
    import json

    register(Sloppy), register(WrongReturn)
    _, report = scan(tiny, tmp_path, only=["static.zz_test_sloppy", "static.zz_test_wrong_return"])
    data = report.to_dict()
    validate_report(data)
    json.dumps(data, allow_nan=False)
    by_name = {c["name"]: c for c in data["checks"]}
    sloppy = by_name["static.zz_test_sloppy"]
    assert sloppy["status"] == "pass" and sloppy["score"] == 0.5
    assert (
        sloppy["evidence"]["path"] == "/x"
        and sloppy["evidence"]["t"] == [1.0, "nan"]
        and sloppy["evidence"]["3"] == "inf"
    )
    assert by_name["static.zz_test_wrong_return"]["status"] == "error"
    assert "not a CheckResult" in by_name["static.zz_test_wrong_return"]["summary"]


class OptIn(Check):
    name = "ob_oi.zz_test_opt_in"
    profiles: ClassVar[tuple[Profile, ...]] = ()

    def run(self, ctx: ScanContext) -> CheckResult:
        return self.result("pass", "ran because it was named")


def test_an_opt_in_check_runs_only_when_named() -> None:
    """A check in no profile (profiles = ()): a default scan and its whole family leave it out; naming it
    exactly runs it."""
    from scanner.checks import load_all

    registry = {**load_all(), OptIn.name: OptIn}
    opt_in = OptIn.name
    for profile in ("quick", "standard", "full"):
        order, _, _ = select_checks(registry, ScanConfig(profile=profile))
        assert opt_in not in order
    family, _, _ = select_checks(registry, ScanConfig(profile="quick", only=["ob_oi"]))
    assert opt_in not in family and "ob_oi.prior_mode" in family
    named, _, _ = select_checks(registry, ScanConfig(profile="quick", only=[opt_in, "format"]))
    assert opt_in in named and any(n.startswith("format.") for n in named)


def test_target_free_searches_run_in_every_profile_and_do_not_block_a_clean_verdict() -> None:
    """ob_oi.novelty and ob_oi.far_gain: in every profile (the default quick scan too). Novelty declines
    audio outputs and far_gain has little power on far fields that do not grow, so neither one's skip or
    error may make a scan inconclusive."""
    from scanner.checks import load_all

    registry = load_all()
    searches = ("ob_oi.novelty", "ob_oi.far_gain")
    for profile in ("quick", "standard", "full"):
        order, _, _ = select_checks(registry, ScanConfig(profile=profile))
        assert set(searches) <= set(order), profile
    passed = CheckResult(name="ob_oi.reconstruction", status="pass", summary="ok")
    declined = CheckResult(name="ob_oi.novelty", status="skipped", summary="not valid on audio outputs")
    errored = CheckResult(name="ob_oi.far_gain", status="error", summary="pre-activation not finite")
    decision = decide_verdict([passed, declined, errored], needed_for_clean=lambda n: registry[n].needed_for_clean)
    assert decision.verdict == "clean", decision.reasons
