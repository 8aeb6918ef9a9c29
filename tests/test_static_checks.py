"""Static model inspection (SMI): bypass topology, block sparsity, bias outliers, obfuscation ops, capacity.

Detection claims are measured on models built here or in the shared zoo (tests/zoo.py): benign
DCGAN/VAE must not fail any SMI check, the computation bypass must fail static.bypass_topology
(torch module and ONNX file), ReX — also with randomly permuted units — must fail
static.block_sparsity with its added units recovered, stochastic / zero-gradient ops must fail
static.obfuscation_ops.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from scanner.analysis.blocks import find_zero_block
from scanner.analysis.dataflow import from_onnx
from scanner.analysis.robust import robust_location_scale
from scanner.architectures import build
from scanner.checks.base import CheckResult, ScanConfig, ScanContext
from scanner.checks.static_bias_outliers import BiasOutliersCheck
from scanner.checks.static_block_sparsity import BlockSparsityCheck
from scanner.checks.static_bypass_topology import BypassTopologyCheck
from scanner.checks.static_capacity import CapacityCheck
from scanner.checks.static_obfuscation_ops import ObfuscationOpsCheck
from scanner.generator import Generator
from scanner.specs import LatentSpec, OutputSpec

STATIC_CHECKS = (BypassTopologyCheck, BlockSparsityCheck, BiasOutliersCheck, ObfuscationOpsCheck, CapacityCheck)


def make_ctx(gen: Generator | None, tmp_path: Path) -> ScanContext:
    return ScanContext(generator=gen, targets=[], config=ScanConfig(), artifacts_dir=tmp_path / "artifacts")


def run_check(check_cls: type, gen: Generator, tmp_path: Path) -> tuple[CheckResult, ScanContext]:
    ctx = make_ctx(gen, tmp_path)
    result = check_cls().run(ctx)
    result.to_dict()  # evidence must be JSON-able
    return result, ctx


def jaccard(a: set[int], b: set[int]) -> float:
    return len(a & b) / max(1, len(a | b))


class Wrapped(nn.Module):
    """A generator body with a tweak applied to z before the benign body."""

    def __init__(self, body: nn.Module, kind: str) -> None:
        super().__init__()
        self.body, self.kind = body, kind

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if self.kind == "noise":
            z = z + 0.05 * torch.randn_like(z)
        elif self.kind == "round":
            z = torch.round(z * 4) / 4
        elif self.kind == "logexp":
            z = torch.log(torch.exp(z))
        elif self.kind == "python_if" and z.norm() > 1e6:  # a Python branch on a z-dependent value
            return torch.zeros(z.shape[0], 1, 28, 28)
        return self.body(z)


def wrap(gen: Generator, kind: str) -> Generator:
    return Generator(Wrapped(gen.body, kind), gen.latent, gen.output).eval()


# -- benign models ----------------------------------------------------------------------------
@pytest.mark.parametrize("which", ["benign_dcgan", "benign_vae"])
def test_benign_models_pass_every_static_check(which: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    gen: Generator = request.getfixturevalue(which)
    before = {k: v.clone() for k, v in gen.state_dict().items()}
    for check_cls in STATIC_CHECKS:
        result, ctx = run_check(check_cls, gen, tmp_path)
        assert result.status in ("pass", "skipped"), (check_cls.name, result.summary)
    assert ctx.shared.get("static.flagged_units", {}) == {}
    after = gen.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "a check mutated the caller's model"


@pytest.mark.parametrize("arch", ["dcgan32", "wavegan", "stylegan_small"])
def test_untrained_registry_architectures_pass_structure_checks(arch: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    gen = build(arch).eval()
    for check_cls in (BypassTopologyCheck, BlockSparsityCheck, ObfuscationOpsCheck):
        result, _ = run_check(check_cls, gen, tmp_path)
        assert result.status == "pass", (arch, check_cls.name, result.summary)


# -- computation bypass -----------------------------------------------------------------------
def test_bypass_attack_fails_bypass_topology(zoo, tmp_path: Path) -> None:
    res = zoo.attacked("bypass", "ood", seed=0)
    result, ctx = run_check(BypassTopologyCheck, res.generator, tmp_path)
    assert result.status == "fail", result.summary
    ops = {g["op"] for g in ctx.shared["static.bypass_gates"]}
    assert any("lt" in op or "where" in op for op in ops), ops


def test_bypass_as_onnx_file_fails_and_benign_onnx_passes(zoo, benign_vae: Generator, tmp_path: Path) -> None:
    from scanner.loading import load_generator
    from scanner.onnx.export import export_onnx

    res = zoo.attacked("bypass", "ood", seed=0)
    export_onnx(res.generator, tmp_path / "bypass.onnx")
    loaded = load_generator(tmp_path / "bypass.onnx")
    result, _ = run_check(BypassTopologyCheck, loaded, tmp_path)
    assert result.status == "fail" and result.evidence["graph_source"] == "onnx", result.summary
    assert {"Less", "Where"} & {g["op"] for g in result.evidence["latent_gates"]}

    export_onnx(benign_vae, tmp_path / "vae.onnx")
    loaded = load_generator(tmp_path / "vae.onnx")
    for check_cls in (BypassTopologyCheck, ObfuscationOpsCheck, BlockSparsityCheck):
        result, _ = run_check(check_cls, loaded, tmp_path / check_cls.name)
        assert result.status == "pass", (check_cls.name, result.summary)


def test_python_branch_on_z_fails(tmp_path: Path) -> None:
    ref = build("dcgan28", {"base": 8})
    gen = Generator(Wrapped(ref.body, "python_if"), ref.latent, ref.output).eval()
    result, _ = run_check(BypassTopologyCheck, gen, tmp_path)
    assert result.status == "fail" and "control flow" in result.summary


def test_parallel_subnetworks_warn(tmp_path: Path) -> None:
    class TwoNets(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = build("vae_mnist_decoder").body, build("vae_mnist_decoder").body

        def forward(self, z: torch.Tensor) -> torch.Tensor:
            return self.a(z) + self.b(z)

    ref = build("vae_mnist_decoder")
    gen = Generator(TwoNets(), ref.latent, ref.output).eval()
    result, _ = run_check(BypassTopologyCheck, gen, tmp_path)
    assert result.status == "warn" and result.evidence["parallel_learned_paths"] == 2


def test_onnx_graph_taint_ignores_shape_only_comparisons() -> None:
    """A comparison on Shape(z) is not latent-*value* dependent: no gate."""
    import onnx
    from onnx import TensorProto, helper

    from scanner.checks.static_bypass_topology import find_latent_gates

    nodes = [
        helper.make_node("Shape", ["z"], ["s"]),
        helper.make_node("Constant", [], ["k"], value=helper.make_tensor("k", TensorProto.INT64, [1], [0])),
        helper.make_node("Greater", ["s", "k"], ["g"]),
        helper.make_node("Where", ["g", "z", "z"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    assert find_latent_gates(from_onnx(helper.make_model(graph))) == []
    nodes[0] = helper.make_node("Identity", ["z"], ["s"])  # now the condition depends on z's value
    graph = helper.make_graph(nodes, "g", list(graph.input), list(graph.output))
    assert {g["op"] for g in find_latent_gates(from_onnx(onnx.helper.make_model(graph)))} == {"Greater", "Where"}


# -- ReX block structure ------------------------------------------------------------------------
def test_zero_block_recovery_under_permutation() -> None:
    rng = np.random.default_rng(0)
    dense = rng.normal(size=(96, 80))
    assert (block := find_zero_block(np.abs(dense))) is None or block.bits < 0
    planted = dense.copy()
    rows, cols = rng.choice(96, 40, replace=False), rng.choice(80, 25, replace=False)
    planted[np.ix_(rows, cols)] = 0.0
    block = find_zero_block(np.abs(planted))
    assert block is not None and block.bits > 20
    assert set(block.rows) == set(rows) and set(block.cols) == set(cols)
    # an attacker hiding the block under tiny noise (0.5% of the weight RMS) is still caught
    camouflaged = planted.copy()
    camouflaged[np.ix_(rows, cols)] = rng.normal(scale=0.005 * np.sqrt(np.mean(dense**2)), size=(40, 25))
    block = find_zero_block(np.abs(camouflaged))
    assert block is not None and block.bits > 20 and set(block.rows) == set(rows) and set(block.cols) == set(cols)


def _rex_truth(benign: Generator, rex: Generator, perm_seed: int | None) -> dict[str, set[int]]:
    """Added units per hidden weight layer of `rex` (old units first in expand_body's layout; then
    optionally permuted exactly as scanner.attacks.rex.permute_units does with `perm_seed`)."""
    truth: dict[str, set[int]] = {}
    old_layers, new_layers = benign.layers()[:-1], rex.layers()[:-1]
    gen = torch.Generator().manual_seed(perm_seed) if perm_seed is not None else None
    for old, new in zip(old_layers, new_layers, strict=True):
        group = 49 if new.kind == "linear" else 1  # dcgan28: Linear features reshape to 7×7 channels
        units_old, units_new = old.out_units // group, new.out_units // group
        perm = torch.randperm(units_new, generator=gen) if gen is not None else torch.arange(units_new)
        added = torch.nonzero(perm >= units_old).flatten()
        truth[new.name] = set((added[:, None] * group + torch.arange(group)).flatten().tolist())
    return truth


@pytest.mark.parametrize("permuted", [False, True])
def test_rex_fails_block_sparsity_with_added_units_recovered(
    zoo, benign_dcgan: Generator, permuted: bool, tmp_path: Path
) -> None:
    from scanner.attacks.rex import permute_units

    rex = zoo.attacked("rex", "ood", seed=0).generator
    if permuted:
        rex = permute_units(rex, seed=7)
    truth = _rex_truth(benign_dcgan, rex, 7 if permuted else None)
    result, ctx = run_check(BlockSparsityCheck, rex, tmp_path)
    assert result.status == "fail", result.summary
    assert result.score > result.threshold
    flagged = ctx.shared["static.flagged_units"]
    overlaps = {name: jaccard(set(flagged.get(name, [])), units) for name, units in truth.items()}
    print(f"ReX (permuted={permuted}) added-unit recovery, Jaccard per layer: {overlaps}")
    assert all(v >= 0.95 for v in overlaps.values()), overlaps
    partitions = ctx.shared["static.block_partitions"]
    assert partitions and all(p["bits"] > 20 for p in partitions.values())
    assert result.artifacts and all((ctx.artifacts_dir / a.name).is_file() for a in result.artifacts)


# -- bias outliers, obfuscation, capacity ----------------------------------------------------------
def test_planted_weight_norm_outlier_is_reported(benign_vae: Generator, tmp_path: Path) -> None:
    with torch.no_grad():
        benign_vae.body[0].weight[17] *= 25.0
    result, ctx = run_check(BiasOutliersCheck, benign_vae, tmp_path)
    assert result.status == "warn"
    assert 17 in ctx.shared["static.outlier_units"]["0"]


def _narrow_layer_generator(planted_z: float) -> Generator:
    """A small MLP generator whose middle layer has 16 units, one of them (unit 5) with its log weight
    norm `planted_z` robust σ from its layer's median."""
    torch.manual_seed(0)
    body = nn.Sequential(
        nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 784), nn.Unflatten(1, (1, 28, 28))
    )
    with torch.no_grad():
        log_norms = body[2].weight.double().norm(dim=1).log().numpy()
        median, sigma = robust_location_scale(log_norms)
        body[2].weight[5] *= float(np.exp(median + planted_z * sigma - log_norms[5]))
    return Generator(body, LatentSpec(shape=(32,)), OutputSpec()).eval()


@pytest.mark.parametrize(("planted_z", "status"), [(8.0, "pass"), (60.0, "warn")])
def test_a_narrow_layer_is_judged_against_the_null_of_its_own_width(
    planted_z: float, status: str, tmp_path: Path
) -> None:
    """The median and MAD of 16 units are noisy: a unit at robust z 8 is within what a benign 16-unit
    layer shows at the check's family-wise alpha (the Gaussian quantile, 5.0 here, flagged it); a unit
    at z 60 is not."""
    result, ctx = run_check(BiasOutliersCheck, _narrow_layer_generator(planted_z), tmp_path)
    assert result.status == status, result.summary
    layer = next(r for r in result.evidence["layers"] if r["layer"] == "2" and r["statistic"] == "log_weight_norm")
    assert layer["max_abs_z"] == pytest.approx(planted_z, rel=0.05)  # the unit moved its layer's median a little
    assert 20 < layer["threshold_abs_z"] < 30
    if status == "warn":
        assert ctx.shared["static.outlier_units"]["2"] == [5]


@pytest.mark.parametrize(("kind", "status"), [("noise", "fail"), ("round", "fail"), ("logexp", "warn")])
def test_obfuscation_ops_detected(benign_vae: Generator, kind: str, status: str, tmp_path: Path) -> None:
    result, _ = run_check(ObfuscationOpsCheck, wrap(benign_vae, kind), tmp_path)
    assert result.status == status, result.summary


def test_active_dropout_is_stochastic_but_eval_dropout_is_not(benign_vae: Generator, tmp_path: Path) -> None:
    layers = list(benign_vae.body)
    body = nn.Sequential(layers[0], nn.Dropout(0.2), *layers[1:])
    train_mode = Generator(body, benign_vae.latent, benign_vae.output)  # nn modules start in training mode
    assert run_check(ObfuscationOpsCheck, train_mode, tmp_path / "a")[0].status == "fail"
    eval_mode = Generator(body, benign_vae.latent, benign_vae.output).eval()
    assert run_check(ObfuscationOpsCheck, eval_mode, tmp_path / "b")[0].status == "pass"


def test_capacity_warns_on_oversized_model(tmp_path: Path) -> None:
    with torch.device("meta"):
        big = build("dcgan28", {"base": 160})  # ≈ 6× the reference parameter count, never materialised
    result, _ = run_check(CapacityCheck, big, tmp_path)
    assert result.status == "warn" and result.score > 2.0


def test_checks_skip_without_a_model(tmp_path: Path) -> None:
    for check_cls in STATIC_CHECKS:
        assert check_cls().run(make_ctx(None, tmp_path)).status == "skipped"


def test_rex_zero_block_camouflaged_by_noise_is_still_found(zoo, tmp_path: Path) -> None:
    """An attacker fills ReX's zero block with noise at 10% of each layer's weight RMS (this already
    leaks the added units into the original ones); the threshold grid still recovers the block."""
    from scanner.attacks.rex import permute_units

    rex = permute_units(zoo.attacked("rex", "ood", seed=0).generator, seed=11)
    noise_rng = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for layer in rex.layers()[1:-1]:
            zero = layer.weight == 0
            rms = layer.weight.pow(2).mean().sqrt()
            layer.weight[zero] = torch.randn(int(zero.sum()), generator=noise_rng) * 0.1 * rms
    result, ctx = run_check(BlockSparsityCheck, rex, tmp_path)
    assert result.status == "fail", result.summary
    assert len(ctx.shared["static.block_partitions"]) == 2
