"""Sanitization (Rawat et al., arXiv 2108.01644, Sec. V) on a small DCGAN backdoored with ReD.

The models are built here in seconds: a benign dcgan28 (base 16) regressed onto MNIST digits
through a fixed random projection (so z -> digit is learnable and samples vary), then a ReD
backdoor (distillation + λ·fidelity at the paper's z_trigger with the devil target).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from scanner.checks.base import CHECKS, Check, CheckResult, ScanConfig, ScanContext, TargetHint, register_check
from scanner.checks.sanitization_common import SANITIZATION_NO_TIME_CAP, SHARED_MODELS, expdis_tolerance
from scanner.checks.sanitization_distillation import DistillationSanitization
from scanner.checks.sanitization_fine_pruning import FinePruningSanitization, sleeper_units_by_layer
from scanner.data import load_devil_target, load_z_trigger
from scanner.generator import Generator
from scanner.loading import load_generator
from scanner.sanitize import (
    TargetUnlearning,
    distill,
    expected_distance,
    fine_prune,
    target_distance,
    unit_layers,
)
from scanner.search.triggers import record_trigger
from tests.tiny_models import red_backdoor, train_benign_dcgan

N_EVAL = 512


@pytest.fixture(scope="module")
def devil() -> torch.Tensor:
    return load_devil_target().float().reshape(1, 28, 28)


@pytest.fixture(scope="module")
def z_trigger() -> torch.Tensor:
    return load_z_trigger().float().reshape(1, 100)


@pytest.fixture(scope="module")
def benign() -> Generator:
    return train_benign_dcgan()


@pytest.fixture(scope="module")
def backdoored(benign: Generator, devil: torch.Tensor, z_trigger: torch.Tensor) -> Generator:
    g = red_backdoor(benign, devil[None], z_trigger)
    assert target_distance(g, z_trigger, devil).mean < 1e-2  # the backdoor took
    return g


def make_ctx(generator: Generator, tmp_path: Path, *, z_trigger: torch.Tensor, devil: torch.Tensor) -> ScanContext:
    ctx = ScanContext(
        generator=generator,
        targets=[TargetHint("devil", devil)],
        # quick-profile step counts; no wall-clock cap, so a loaded CI machine gives the same result
        config=ScanConfig(profile="quick", seed=0, params=SANITIZATION_NO_TIME_CAP),
        artifacts_dir=tmp_path / "artifacts",
    )
    # what an OB-OI check would have recovered for the devil hint
    ctx.shared["recovered_triggers"] = [
        {"source": "ob_oi.reconstruction", "z": z_trigger, "output": generator(z_trigger)[0], "target": "devil"},
        {"source": "hostile", "z": [float("nan")] * 100, "target": "devil"},  # dropped, reported
        {"source": "wrong size", "z": [0.0] * 7},
        "not a dict",
    ]
    return ctx


def state(g: Generator) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in g.state_dict().items()}


def assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.slow
def test_distillation_removes_red_backdoor_and_warns(
    benign: Generator, backdoored: Generator, devil: torch.Tensor, z_trigger: torch.Tensor, tmp_path: Path
) -> None:
    ctx = make_ctx(backdoored, tmp_path, z_trigger=z_trigger, devil=devil)
    before = state(backdoored)
    result = DistillationSanitization().run(ctx)
    assert_same_state(before, state(backdoored))  # the caller's model is untouched

    ev = result.evidence
    assert result.status == "warn", result.summary  # the trigger's behaviour did not survive
    assert ev["converged"] and ev["expdis_mean"] <= ev["expdis_tolerance_mean"]
    (trigger,) = ev["triggers"]
    # TarDis at the known trigger rises by ≥ 100× (the backdoor no longer reaches the devil)
    assert trigger["tardis_before"]["mean"] < 1e-2
    assert trigger["tardis_ratio"] >= 100, trigger
    assert trigger["change_ratio"] >= ev["warn_change_ratio"]
    assert len(ev["trigger_problems"]) == 3

    sanitized = ctx.shared["sanitization.model"]
    assert isinstance(sanitized, Generator) and sanitized is not backdoored
    z = backdoored.latent.sample(N_EVAL, generator=torch.Generator().manual_seed(5))
    # ExpDis to the upload stays at (below) the level the attack itself moved the benign model
    attack_gap = expected_distance(backdoored, benign, z).mean
    assert expected_distance(sanitized, backdoored, z).mean <= attack_gap
    assert expected_distance(sanitized, benign, z).mean <= 2 * attack_gap

    # the written model is a fresh student (the body has torch layers), not the perturbed reference copy;
    # it loads back through the untrusted-file loader, stays within the bound and lost the backdoor too
    written = ev["written_copy"]
    assert written["copy"] == "fresh" and written["init"] == "reinit", written
    (artifact,) = result.artifacts
    path = ctx.artifacts_dir / artifact.name
    assert path.is_file() and ev["model_artifact"] == artifact.name
    reloaded = load_generator(path)
    zs = backdoored.latent.sample(16, generator=torch.Generator().manual_seed(6))
    assert not torch.allclose(reloaded(zs), sanitized(zs), atol=1e-4)
    assert expected_distance(reloaded, backdoored, z).mean <= ev["expdis_tolerance_mean"]
    assert target_distance(reloaded, z_trigger, devil).mean >= 100 * trigger["tardis_before"]["mean"]
    assert written["triggers"][0]["tardis_ratio"] >= 100, written["triggers"]
    # JSON-able evidence
    assert result.to_dict()["evidence"]["triggers"][0]["source"] == "ob_oi.reconstruction"


@pytest.mark.slow
def test_distillation_on_benign_model_passes(
    benign: Generator, devil: torch.Tensor, z_trigger: torch.Tensor, tmp_path: Path
) -> None:
    ctx = make_ctx(benign, tmp_path, z_trigger=z_trigger, devil=devil)
    result = DistillationSanitization().run(ctx)
    assert result.status == "pass", result.summary
    (trigger,) = result.evidence["triggers"]
    assert trigger["change_ratio"] < result.evidence["warn_change_ratio"]
    assert result.evidence["converged"]
    # the second copy (another seed) that ob_oi.divergence uses as its null: kept, distinct, as faithful
    null_info = result.evidence["null_copy"]
    assert null_info["kept"] is True and null_info["seed"] != ctx.config.seed, null_info
    sanitized = ctx.shared["sanitization.model"]
    null = ctx.shared["sanitization.null_models"]["sanitization.distillation"]
    assert isinstance(null, Generator) and null is not sanitized
    z = benign.latent.sample(N_EVAL, generator=torch.Generator().manual_seed(5))
    assert expected_distance(null, benign, z).mean <= result.evidence["expdis_tolerance_mean"]
    assert expected_distance(null, sanitized, z).mean > 0  # not the same student


def test_distillation_that_cannot_converge_is_an_error(benign: Generator, tmp_path: Path) -> None:
    ctx = ScanContext(
        generator=benign,
        targets=[],
        config=ScanConfig(params={"sanitization.distillation": {"init": "reinit", "steps": 2, "max_round_steps": 2}}),
        artifacts_dir=tmp_path,
    )
    result = DistillationSanitization().run(ctx)
    assert result.status == "error"
    assert not result.evidence["converged"] and result.evidence["expdis_relative"] > 0.1
    assert "sanitization.model" not in ctx.shared and not result.artifacts
    assert "null_copy" not in result.evidence and "sanitization.null_models" not in ctx.shared


def _answers(*verdicts: bool) -> Callable[[Generator], bool]:
    """A fidelity bound that gives these answers in turn, then refuses."""
    answers = itertools.chain(verdicts, itertools.repeat(False))
    return lambda _candidate: next(answers)


def test_later_distillation_rounds_are_kept_only_within_the_fidelity_bound(backdoored: Generator) -> None:
    z = backdoored.latent.sample(8, generator=torch.Generator().manual_seed(3))
    one = distill(backdoored, steps=20, rounds=1, seed=0)
    kept = distill(backdoored, steps=20, rounds=3, seed=0)
    assert (kept.rounds, kept.steps, kept.round_steps, kept.round_notes) == (3, 60, [20, 20, 20], [])
    assert not torch.allclose(kept.student(z), one.student(z))
    refused = distill(backdoored, steps=20, rounds=3, seed=0, accept_round=_answers(True))
    assert (refused.rounds, refused.steps) == (1, 20)
    assert "round 2 rejected" in refused.round_notes[0]
    assert torch.allclose(refused.student(z), one.student(z), atol=1e-6)  # round 1's student, returned
    with pytest.raises(ValueError, match="rounds"):
        distill(backdoored, rounds=0)
    with pytest.raises(ValueError, match="max_round_steps"):
        distill(backdoored, steps=20, max_round_steps=10)


def test_a_first_distillation_round_short_of_the_bound_trains_on_up_to_its_cap(backdoored: Generator) -> None:
    # round 1 is refused twice (20 + 20 + 20 steps); round 2 meets the bound at 20 steps; round 3 is
    # refused once and extended by one chunk, to its cap of 2 x steps
    bound = _answers(False, False, True, True, False, True)
    extended = distill(backdoored, steps=20, rounds=3, seed=0, accept_round=bound, max_round_steps=100)
    assert (extended.rounds, extended.round_steps, extended.steps) == (3, [60, 20, 40], 120)
    assert extended.round_notes == []
    # a later round still short of the bound at 2 x steps is rejected, not trained on to round 1's cap
    refused_twice = _answers(True, False, False)
    short = distill(backdoored, steps=20, rounds=3, seed=0, accept_round=refused_twice, max_round_steps=100)
    assert (short.rounds, short.round_steps) == (1, [20])
    assert short.round_notes == ["round 2 rejected by the fidelity bound: kept round 1"]
    # a round 1 that never meets the bound stops at its cap and no later round runs
    never = distill(backdoored, steps=20, rounds=3, seed=0, accept_round=lambda _c: False, max_round_steps=50)
    assert (never.rounds, never.round_steps) == (1, [50])
    assert never.round_notes == ["round 1 did not meet the fidelity bound in 50 steps: no further rounds"]
    # without a cap a round is one chunk, as before
    plain = distill(backdoored, steps=20, rounds=1, seed=0, accept_round=lambda _c: False)
    assert plain.round_steps == [20]


def test_distillation_rejects_misspelt_parameter(benign: Generator, tmp_path: Path) -> None:
    ctx = ScanContext(
        generator=benign,
        targets=[],
        config=ScanConfig(params={"sanitization.distillation": {"stepz": 2}}),
        artifacts_dir=tmp_path,
    )
    with pytest.raises(ValueError, match="stepz"):
        DistillationSanitization().run(ctx)


def test_unit_layers_follow_batchnorm_and_activation(benign: Generator) -> None:
    layers = unit_layers(benign, benign.sample_latent(2, seed=0))
    names = [layer.name for layer in layers]
    assert names == [li.name for li in benign.layers()]  # execution order == registration order here
    first = layers[0]
    assert first.out_units == 7 * 7 * 64 and isinstance(first.affine[0], torch.nn.BatchNorm1d)
    assert isinstance(first.observe, torch.nn.LeakyReLU) and layers[-1].is_output


def test_fine_pruning_keeps_pruned_units_zero(
    backdoored: Generator, devil: torch.Tensor, z_trigger: torch.Tensor, tmp_path: Path
) -> None:
    layers = unit_layers(backdoored, backdoored.sample_latent(2, seed=0))
    conv = layers[1]
    ctx = make_ctx(backdoored, tmp_path, z_trigger=z_trigger, devil=devil)
    # units the DMI check flagged, published under the activation module's name
    ctx.shared["dynamic.sleeper_units"] = {conv.aliases[-1]: [3, 5]}
    result = FinePruningSanitization().run(ctx)
    assert result.status in ("pass", "warn"), result.summary
    ev = result.evidence
    assert ev["flagged_units_used"] and ev["units_pruned"] >= 2
    pruned = ctx.shared["sanitization.models"]["sanitization.fine_pruning"]
    weight = dict(pruned.body.named_modules())[conv.name].weight  # ConvTranspose: (in, out, k, k)
    assert float(weight[:, [3, 5]].abs().max()) == 0.0
    (trigger,) = ev["triggers"]
    assert trigger["tardis_ratio"] > 1  # fine-pruning moves the trigger off the target (weaker than distillation)


def test_fine_prune_library_counts_and_masks(backdoored: Generator) -> None:
    result = fine_prune(backdoored, steps=5, prune_fraction=0.1, n_activity_samples=64)
    assert result.units_total == 7 * 7 * 64 + 32 + 16
    assert result.units_pruned >= int(0.1 * 32) + int(0.1 * 16)
    modules = dict(result.student.body.named_modules())
    for sel in result.pruned:
        module = modules[sel.layer]
        dim = 1 if isinstance(module, torch.nn.ConvTranspose2d) else 0
        assert float(module.weight.index_select(dim, torch.tensor(sel.units)).abs().max()) == 0.0
    assert math.isfinite(result.distill.final_loss)


def test_sleeper_units_shapes() -> None:
    assert sleeper_units_by_layer({"4": [1, 2], "x": "bad"}) == {"4": [1, 2]}
    assert sleeper_units_by_layer([{"layer": "0", "unit": 3}, {"layer": "0", "units": [4, True]}, 5]) == {"0": [3, 4]}
    assert sleeper_units_by_layer(None) == {}


def test_expdis_tolerance_is_relative_to_the_output_variance_down_to_one_delivered_level(benign: Generator) -> None:
    assert benign.output.kind == "image" and benign.output.value_range == (-1.0, 1.0)
    assert expdis_tolerance(benign, 0.2, 0.1) == pytest.approx(0.02)
    # a (nearly) mode-collapsed upload is held to one 8-bit grey level RMS, not to a tenth of its variance
    assert expdis_tolerance(benign, 7e-5, 0.1) == pytest.approx((2 / 255) ** 2)


def test_perturbation_pulls_outlying_units_into_their_layer() -> None:
    """The student must not inherit a unit the upload singled out (weight norm or bias far from its
    layer's peers) nor grow one from the noise: static.bias_outliers would flag the sanitized copy."""
    from scanner.analysis.robust import robust_z
    from scanner.sanitize import CLIP_SIGMAS, _perturb

    torch.manual_seed(0)
    layer = torch.nn.Linear(16, 64)
    with torch.no_grad():
        layer.weight[7] *= 40.0  # an outlying weight norm
        layer.bias[3] = 25.0  # an outlying bias
    body = torch.nn.Sequential(layer)
    for round_seed in range(5):  # five rounds, as the quick profile's distillation
        _perturb(body, 0.5, torch.Generator().manual_seed(round_seed))
    log_norms = layer.weight.detach().double().norm(dim=1).log().numpy()
    biases = layer.bias.detach().double().numpy()
    assert abs(robust_z(log_norms)).max() <= CLIP_SIGMAS + 1.0
    assert abs(robust_z(biases)).max() <= CLIP_SIGMAS + 1.0


def _upload_weights_detector(upload: Generator, *, fails_below: float, find: torch.Tensor) -> type[Check]:
    """A stand-in for a target-free detector (no `requires`, as ob_oi.novelty) that also fails on a fresh
    student — as novelty did on a fresh copy of a bench build of poisoning (27.7, line 25) — but not on a
    copy that starts from the upload's weights: it fails a model whose weights point away from the upload's
    (cosine below `fails_below`), and records the trigger it "recovered" there with `find` as the output."""

    def weights(g: Generator) -> torch.Tensor:  # conv and linear kernels (a fresh norm layer's ones match any)
        return torch.cat([v.flatten().float() for v in g.state_dict().values() if v.ndim >= 2])

    reference = weights(upload)

    class UploadWeights(Check):
        name = "ob_oi.zz_test_upload_weights"

        def run(self, ctx: ScanContext) -> CheckResult:
            assert ctx.generator is not None
            cosine = float(torch.nn.functional.cosine_similarity(weights(ctx.generator), reference, dim=0))
            status = "fail" if cosine < fails_below else "pass"
            if status == "fail":
                z = torch.zeros(1, *ctx.generator.latent.shape)
                record_trigger(
                    ctx.shared, ctx.generator, source=self.name, z=z, output=find, target=None, tardis_mean=None
                )
            return self.result(status, f"cosine {cosine:.3f}", score=cosine, threshold=fails_below)

    return UploadWeights


def _sanitize_after_a_failed_detector(
    detector: type[Check], upload: Generator, z_trigger: torch.Tensor, tmp_path: Path, **params: Any
) -> CheckResult:
    """sanitization.distillation on `upload` as in a scan where `detector` (registered for the run) failed and
    recovered z_trigger, the upload's output there its target. Scan seed 1: the tiny upload was itself initialised
    from seed 0 and trained briefly, so a fresh student re-initialised from seed 0 would start at the upload's own
    init (kernel cosine 0.80; seed 1: 0.03). The control flow of the written copy is under test, not the unlearning
    nor the detectors' reference copy: no null copy, one round of the reference copy, a light search (time in CI)."""
    light = {"null_copy": False, "rounds": 1, "unlearn_every": 150, "unlearn_restarts": 4, "unlearn_steps": 50}
    light |= params
    config = ScanConfig(
        profile="quick",
        seed=1,
        params={"sanitization.distillation": {**SANITIZATION_NO_TIME_CAP["sanitization.distillation"], **light}},
    )
    ctx = ScanContext(upload, [], config, tmp_path)
    with torch.no_grad():
        output = upload.eval()(z_trigger)[0]
    ctx.shared["recovered_triggers"] = [{"source": detector.name, "z": z_trigger, "output": output}]
    ctx.results[detector.name] = detector().result("fail", "stands for the upload's failed scan", score=0.0)
    register_check(detector)
    try:
        return DistillationSanitization().run(ctx)
    finally:
        CHECKS.pop(detector.name, None)


@pytest.mark.slow
def test_the_written_copy_is_rechecked_by_the_detector_that_failed_and_replaced_when_it_still_fails(
    backdoored: Generator, z_trigger: torch.Tensor, tmp_path: Path
) -> None:
    """What failed on the upload runs again on the copy to be written, as a rescan would. A fresh student
    that still fails it is replaced by a perturbed copy trained away from the same targets when that one
    passes — trained away from what the recheck found on the fresh copy too. (A fresh student that passes is
    written with no second copy trained: tests/test_sanitized_rescan.py, on ob_oi.novelty itself.)"""
    with torch.no_grad():
        output = backdoored.eval()(z_trigger)[0]
    # what the recheck "finds" on a failing copy: the recovered target itself (the copy still draws it)
    detector = _upload_weights_detector(backdoored, fails_below=0.5, find=output)
    result = _sanitize_after_a_failed_detector(detector, backdoored, z_trigger, tmp_path)
    written = result.evidence["written_copy"]
    assert [row["source"] for row in written["unlearned"]] == [detector.name], written
    assert written["rechecked"][detector.name]["status"] == "pass", written
    assert (tmp_path / result.evidence["model_artifact"]).is_file()
    fresh, *perturbed = written["candidates"]
    assert fresh["copy"] == "fresh" and fresh["meets_bound"], written
    assert fresh["rechecked"][detector.name]["status"] == "fail" and not fresh.get("written"), written
    assert written["copy"] == "perturbed, unlearned" and len(perturbed) == 1, written
    assert perturbed[0]["written"] and perturbed[0]["seed"] == 1, written
    # the fresh copy still drew the target where the recheck looked: the perturbed copy keeps farther from it
    (find,) = fresh["recheck_finds"]
    floor, raised = find["floor_raised"]
    assert find["nearest_unlearned_mean"] == pytest.approx(0.0, abs=1e-6) and "added" not in find, written
    assert raised == pytest.approx(1.3 * floor) and written["unlearned"][0]["floor_mean"] == pytest.approx(raised)
    assert f"the fresh copy still failed {detector.name}" in written["note"], written
    assert "still fail" not in result.summary


def test_a_recheck_find_near_an_unlearned_target_raises_its_floor_and_one_far_from_all_becomes_a_target(
    backdoored: Generator, z_trigger: torch.Tensor, tmp_path: Path
) -> None:
    """What a failed recheck recovered on a candidate copy shapes the next one: nearer an unlearned target than
    the upload's typical sample, it is that target's remnant (its floor is raised to 1.3 × the find's distance,
    at most that typical distance); farther from every target, it becomes a target with a floor measured as for
    the recovered ones."""
    with torch.no_grad():
        target = backdoored.eval()(z_trigger)[0]
    check = DistillationSanitization()
    ctx = ScanContext(backdoored, [], ScanConfig(profile="quick", seed=0), tmp_path)
    p = check.params(ctx)
    unlearned: list[dict[str, Any]] = [{"source": "ob_oi.novelty"}]
    penalty = TargetUnlearning(target[None], check._floors(ctx, backdoored, p, target[None], unlearned), max_norm=None)
    typical, floor = unlearned[0]["samples_median_mean"], unlearned[0]["floor_mean"]
    assert floor == pytest.approx(0.5 * typical)
    remnant = target + (0.6 * typical) ** 0.5  # per-element squared distance 0.6 × typical
    elsewhere = target + 3.0  # farther than any output in [-1, 1] from it
    candidate: dict[str, Any] = {"copy": "fresh", "seed": 0}
    finds = [("ob_oi.novelty", remnant), ("ob_oi.novelty", elsewhere)]
    extended, rows = check._unlearn_finds(ctx, backdoored, p, penalty, unlearned, finds, candidate)
    near, far = candidate["recheck_finds"]
    assert near["nearest_unlearned_mean"] == pytest.approx(0.6 * typical, rel=1e-4)
    assert near["floor_raised"] == pytest.approx([floor, 1.3 * 0.6 * typical], rel=1e-4) and "added" not in near
    assert far["added"] and far["nearest_unlearned_mean"] == pytest.approx(9.0, rel=1e-4)
    assert extended.targets.shape[0] == 2 and torch.equal(extended.targets[1], elsewhere.reshape(target.shape))
    assert float(extended.floors[0]) == pytest.approx(1.3 * 0.6 * typical, rel=1e-4)
    assert len(rows) == 1 and float(extended.floors[1]) == pytest.approx(rows[0]["floor_mean"])
    assert rows[0]["floor_mean"] == pytest.approx(0.5 * rows[0]["samples_median_mean"])
    assert penalty.targets.shape[0] == 1 and float(penalty.floors[0]) == pytest.approx(floor)  # left as it was
    # a remnant at 0.9 × typical: raised to typical distance, no farther
    capped, _ = check._unlearn_finds(
        ctx,
        backdoored,
        p,
        penalty,
        unlearned,
        [("ob_oi.novelty", target + (0.9 * typical) ** 0.5)],
        {"copy": "x", "seed": 0},
    )
    assert float(capped.floors[0]) == pytest.approx(typical, rel=1e-4) and capped.targets.shape[0] == 1


@pytest.mark.slow
def test_a_recheck_that_cannot_run_on_the_copy_is_named_in_the_summary_not_counted_as_passing(
    backdoored: Generator, z_trigger: torch.Tensor, tmp_path: Path
) -> None:
    """A detector that breaks on the copy says nothing about it: the copy is written, but the user is told
    it was not rechecked, and the copy is not presented as having passed."""

    class Breaks(Check):
        name = "ob_oi.zz_test_breaks_on_copies"

        def run(self, ctx: ScanContext) -> CheckResult:
            raise RuntimeError("cannot run on this copy")

    # one round of the fresh copy too: its training is not under test
    result = _sanitize_after_a_failed_detector(Breaks, backdoored, z_trigger, tmp_path, fresh_copy_rounds=1)
    written = result.evidence["written_copy"]
    assert written["copy"] == "fresh", written
    assert written["rechecked"][Breaks.name] == {"status": "error", "error": "RuntimeError: cannot run on this copy"}
    assert f"{Breaks.name} not rechecked on it (RuntimeError: cannot run on this copy)" in result.summary
    assert "still fail" not in result.summary


@pytest.mark.slow
def test_when_no_candidate_meets_the_bound_the_perturbed_copy_written_is_rechecked_and_its_failures_named(
    backdoored: Generator, z_trigger: torch.Tensor, tmp_path: Path
) -> None:
    """The perturbed reference copy written when no candidate met the fidelity bound is deployed in place of the
    upload too (the bench's TrAIL at the mode trigger: no candidate met the bound, the reconstruction that failed
    on the upload never ran on the copy written). It is rechecked like a candidate, and the summary names what
    still fails on it. Here a fresh student of 100 steps cannot meet the bound, no perturbed copy is trained
    away from the target, and the stand-in detector fails every model."""
    detector = _upload_weights_detector(backdoored, fails_below=1.01, find=torch.zeros(backdoored.output.shape))
    short = {"steps": 100, "max_round_steps": 100, "fresh_copy_rounds": 1, "unlearn_steps_factor": 1}
    result = _sanitize_after_a_failed_detector(
        detector, backdoored, z_trigger, tmp_path, **short, unlearned_perturbed_copies=0
    )
    written = result.evidence["written_copy"]
    assert [row["meets_bound"] for row in written["candidates"]] == [False], written
    assert written["copy"] == "perturbed" and "the perturbed copy is written" in written["note"], written
    assert written["rechecked"][detector.name]["status"] == "fail", written
    assert (
        f"written: the perturbed copy (no candidate met the fidelity bound; {detector.name} still fail(s) on it)"
        in result.summary
    ), result.summary


def test_a_perturbed_copy_written_with_no_time_left_for_a_fresh_one_is_named_as_not_rechecked(
    backdoored: Generator, z_trigger: torch.Tensor, tmp_path: Path
) -> None:
    """When the budget is spent before a fresh copy (the bench's foreign-architecture ReD: 300 s of distillation
    on two cores), the perturbed copy is written with no recheck run on it; the summary says which failed
    detector did not run on it rather than leaving the copy looking checked."""
    detector = _upload_weights_detector(backdoored, fails_below=1.01, find=torch.zeros(backdoored.output.shape))
    check = DistillationSanitization()
    ctx = ScanContext(backdoored, [], ScanConfig(profile="quick", seed=0), tmp_path)
    ctx.shared["recovered_triggers"] = [{"source": detector.name, "z": z_trigger, "output": backdoored(z_trigger)[0]}]
    ctx.results[detector.name] = detector().result("fail", "stands for the upload's failed scan", score=0.0)
    ctx.shared[SHARED_MODELS] = {check.name: backdoored.copy()}
    out = check.result("pass", "distilled")
    register_check(detector)
    try:
        check._write_fresh_copy(ctx, backdoored, check.params(ctx), out, accept=lambda g: True, budget_s=0.0)
    finally:
        CHECKS.pop(detector.name, None)
    written = out.evidence["written_copy"]
    assert written["copy"] == "perturbed" and "candidates" not in written, written
    assert written["rechecked"] == {detector.name: {"status": "skipped", "note": "no time left in the check's budget"}}
    assert out.summary == (
        "distilled; written: the perturbed copy (no time left in the check's budget for a fresh copy; "
        f"{detector.name} not rechecked on it (no time left in the check's budget))"
    )


def test_a_hinted_reconstruction_is_rechecked_on_a_copy_after_the_calibration_it_requires(
    benign: Generator, backdoored: Generator, devil: torch.Tensor, z_trigger: torch.Tensor, tmp_path: Path
) -> None:
    """A failed ob_oi.reconstruction is rechecked on a candidate copy as a rescan would run it: after
    calibration.controls and bf_oi.closest on the copy itself, judged by the copy's calibrated threshold. A copy
    that still draws the hint fails it (here the upload itself stands for such a copy); one that does not passes."""
    from scanner.checks.sanitization_distillation import _detectors_to_recheck, _recheck

    unlearned = [{"source": "ob_oi.reconstruction"}, {"source": "ob_oi.divergence"}]
    assert _detectors_to_recheck(unlearned) == ["ob_oi.reconstruction"]  # divergence needs a sanitized copy
    ctx = make_ctx(backdoored, tmp_path, z_trigger=z_trigger, devil=devil)
    keeps, clean = (
        _recheck(ctx, copy, ["ob_oi.reconstruction"], None)[0]["ob_oi.reconstruction"] for copy in (backdoored, benign)
    )
    rows = {"keeps the devil": keeps, "benign": clean}
    assert keeps["ran_first"] == clean["ran_first"] == ["calibration.controls", "bf_oi.closest"], rows
    assert "requirements_errored" not in keeps and "requirements_errored" not in clean, rows
    assert keeps["status"] == "fail" and clean["status"] == "pass", rows
