"""Dynamic model inspection (DMI): sleeper units, gradient health, sensitivity.

Benign zoo DCGAN/VAE must not fail; NaN/Inf weights, a stochastic forward pass, zero-gradient
rounding and a detached latent must fail dynamic.gradient_health; a unit cut off from z must be
flagged by dynamic.sleeper_units with its index; a generator that is steep everywhere must warn
in dynamic.sensitivity. No check may modify the caller's model.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from scanner.checks.base import CheckResult, ScanConfig, ScanContext
from scanner.checks.dynamic_gradient_health import GradientHealthCheck
from scanner.checks.dynamic_sensitivity import SensitivityCheck
from scanner.checks.dynamic_sleeper_units import SleeperUnitsCheck
from scanner.generator import Generator

DYNAMIC_CHECKS = (SleeperUnitsCheck, GradientHealthCheck, SensitivityCheck)


def run_check(check_cls: type, gen: Generator, tmp_path: Path) -> tuple[CheckResult, ScanContext]:
    ctx = ScanContext(generator=gen, targets=[], config=ScanConfig(), artifacts_dir=tmp_path / "artifacts")
    result = check_cls().run(ctx)
    result.to_dict()  # evidence must be JSON-able
    return result, ctx


class Tweaked(nn.Module):
    """The benign body with a tweak that obfuscates gradients or makes G steep."""

    def __init__(self, body: nn.Module, kind: str) -> None:
        super().__init__()
        self.body, self.kind = body, kind

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if self.kind == "noise":
            return self.body(z + 0.05 * torch.randn_like(z))
        if self.kind == "round":
            return self.body(torch.round(z * 4) / 4)
        if self.kind == "detach":
            return self.body(z.detach())
        if self.kind == "steep":  # ripples of wavelength ~1e-3 on top of G: locally enormous slope
            out = self.body(z)
            return out + 0.5 * torch.sin(1e4 * z.sum(1)).reshape(-1, *[1] * (out.dim() - 1))
        raise ValueError(self.kind)


def tweak(gen: Generator, kind: str) -> Generator:
    return Generator(Tweaked(gen.body, kind), gen.latent, gen.output).eval()


@pytest.mark.parametrize("which", ["benign_dcgan", "benign_vae"])
def test_benign_models_do_not_fail_dynamic_checks(which: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    gen: Generator = request.getfixturevalue(which)
    before = {k: v.clone() for k, v in gen.state_dict().items()}
    training_flags = [m.training for m in gen.modules()]
    statuses = {}
    for check_cls in DYNAMIC_CHECKS:
        result, _ = run_check(check_cls, gen, tmp_path)
        statuses[check_cls.name] = (result.status, result.summary)
        assert result.status != "fail" and result.status != "error", (check_cls.name, result.summary)
    print(which, statuses)
    assert statuses["dynamic.gradient_health"][0] == "pass"
    after = gen.state_dict()
    assert all(torch.equal(before[k], after[k]) and before[k].dtype == after[k].dtype for k in before)
    assert [m.training for m in gen.modules()] == training_flags


def test_nan_weights_fail_gradient_health(benign_vae: Generator, tmp_path: Path) -> None:
    with torch.no_grad():
        benign_vae.body[0].weight[3, 2] = float("nan")
    result, _ = run_check(GradientHealthCheck, benign_vae, tmp_path)
    assert result.status == "fail" and "NaN" in result.summary


def test_inf_weights_fail_gradient_health(benign_dcgan: Generator, tmp_path: Path) -> None:
    with torch.no_grad():
        benign_dcgan.layers()[1].weight[0, 0, 0, 0] = float("inf")
    result, _ = run_check(GradientHealthCheck, benign_dcgan, tmp_path)
    assert result.status == "fail" and "NaN/Inf" in result.summary


@pytest.mark.parametrize(
    ("kind", "expected"), [("noise", "stochastic"), ("round", "vanishing"), ("detach", "finite differences")]
)
def test_obfuscated_gradients_fail(benign_vae: Generator, kind: str, expected: str, tmp_path: Path) -> None:
    result, _ = run_check(GradientHealthCheck, tweak(benign_vae, kind), tmp_path)
    assert result.status == "fail" and expected in result.summary, result.summary


def test_unit_cut_off_from_z_is_a_sleeper(benign_vae: Generator, tmp_path: Path) -> None:
    with torch.no_grad():
        benign_vae.body[0].weight[42].zero_()  # hidden unit 42 now outputs its bias for every z
    result, ctx = run_check(SleeperUnitsCheck, benign_vae, tmp_path)
    assert result.status == "warn", result.summary
    assert 42 in ctx.shared["dynamic.sleeper_units"]["0"]


def test_steep_generator_warns_in_sensitivity(benign_vae: Generator, tmp_path: Path) -> None:
    result, _ = run_check(SensitivityCheck, tweak(benign_vae, "steep"), tmp_path)
    assert result.status == "warn" and result.evidence["input_ratio_median"] > 100, result.summary
    benign, _ = run_check(SensitivityCheck, benign_vae, tmp_path)
    assert benign.status == "pass" and 0.1 < benign.evidence["input_ratio_median"] < 10


def test_rex_sleeper_and_gradient_measurements(zoo, tmp_path: Path) -> None:
    """ReX keeps gradients healthy (it is no gradient-obfuscation attack); what DMI sees is recorded."""
    rex = zoo.attacked("rex", "ood", seed=0).generator
    grad, _ = run_check(GradientHealthCheck, rex, tmp_path)
    assert grad.status == "pass", grad.summary
    sleep, ctx = run_check(SleeperUnitsCheck, rex, tmp_path)
    assert sleep.status in ("pass", "warn")
    print("ReX sleeper units:", sleep.summary, {k: len(v) for k, v in ctx.shared["dynamic.sleeper_units"].items()})
