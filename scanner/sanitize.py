"""Sanitization of a (possibly backdoored) generator, after Rawat et al. (arXiv 2108.01644, Sec. V).

The paper's defenses section argues that the one thing a defender can trust about a delivered
generator G* is its behaviour on P_sample (that is what stealth guarantees, and what the user
checked). Sanitization keeps exactly that and nothing else:

- **Distillation** (`distill`): train a student on the teacher's outputs at z ~ P_sample only,
  E_z ||G_s(z) − G*(z)||². Behaviour that P_sample never exercises — the trigger region of a
  ReD/TrAIL/ReX backdoor — is not supervised, so it is not carried over. The student is the
  same architecture, either re-initialised ("reinit", the paper's distillation into a fresh
  model), the teacher's weights with multiplicative weight noise ("perturb": cheap, knocks the
  precise trigger fit out of the weights, then distillation restores P_sample behaviour), or the
  teacher's weights as they are ("finetune", weakest: a ReD backdoor survives it).
  With `rounds` > 1 the last student is perturbed again and re-distilled from the same teacher:
  P_sample behaviour is pulled back every round, the unsupervised trigger region is knocked
  further each time. One round of "perturb" left a ReD in-sample backdoor half there (TarDis at
  the trigger 0.35/pixel, benign 2.8) and the sanitized model did not rescan clean; three rounds
  reach 2.1 on the torch body, five reach 1.76 on the same model loaded from ONNX (figures in
  .notes/sanitization.md; sanitization.distillation runs five).
- **Fine-pruning** (`fine_prune`, Liu et al. RAID 2018, as adapted in the paper's Sec. V): units
  that are dormant on P_sample (a ReX attack's extra units, sleeper neurons) are pruned, then
  the pruned model is fine-tuned with the same distillation loss.

- **Unlearning** (`TargetUnlearning`, a `penalty` for `distill`): where a scan has recovered a planted
  target, the student is also kept from drawing it wherever a reconstruction search on the student finds
  it — P_sample alone supervises an in-sample trigger's target back into any student.

Metrics follow the paper (Sec. IV): ExpDis = E_z ||G_s(z) − G*(z)||² over P_sample and
TarDis = ||G(z_trig) − x_target||². Both are returned as a sum over output elements and as a
per-element mean (`*_sum`, `*_mean`). The caller's model is never modified (`Generator.copy()`).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from scanner.analysis.robust import MIN_UNITS, robust_location_scale
from scanner.generator import WEIGHT_LAYER_TYPES, Generator, weight_layers
from scanner.search.recond import reconstruct

StudentInit = Literal["reinit", "perturb", "finetune"]
ShouldStop = Callable[[], bool]
# An extra training loss on the student at a step (e.g. TargetUnlearning); added to the distillation loss.
Penalty = Callable[[Generator, int], torch.Tensor]

_PER_CHANNEL_AFFINE = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.InstanceNorm1d, nn.InstanceNorm2d)


# -- metrics -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Distance:
    """A squared L2 distance between outputs, as a sum over elements and a per-element mean."""

    sum: float
    mean: float

    def to_dict(self) -> dict[str, float]:
        return {"sum": self.sum, "mean": self.mean}


@torch.no_grad()
def expected_distance(a: Generator, b: Generator, z: torch.Tensor, *, batch_size: int = 512) -> Distance:
    """ExpDis (paper Sec. IV): E_z ||a(z) − b(z)||² over the given latents (both in eval mode).

    `sum` is the expectation of the per-sample sum of squares; `mean` divides it by the number
    of output elements.
    """
    total = 0.0
    for i in range(0, z.shape[0], batch_size):
        chunk = z[i : i + batch_size]
        diff = a(chunk.to(a.device)).double().cpu() - b(chunk.to(b.device)).double().cpu()
        total += float(diff.pow(2).flatten(1).sum(1).sum())
    per_sample = total / max(z.shape[0], 1)
    return Distance(per_sample, per_sample / a.output.numel)


@torch.no_grad()
def target_distance(generator: Generator, z: torch.Tensor, target: torch.Tensor) -> Distance:
    """TarDis (paper Sec. IV): ||G(z_trig) − x_target||² for one latent (1, *latent) and one target."""
    out = generator(z.reshape(1, *generator.latent.shape).to(generator.device)).double().cpu()
    diff = out.reshape(-1) - target.reshape(-1).double().cpu()
    total = float(diff.pow(2).sum())
    return Distance(total, total / generator.output.numel)


@torch.no_grad()
def output_variance(generator: Generator, z: torch.Tensor, *, batch_size: int = 512) -> float:
    """Per-element variance of G(z) over the latents, averaged over elements.

    E_z ||G(z) − E G||² / numel: the scale against which an ExpDis is small or large (two
    independent samples of G are 2× this apart on average)."""
    outs = generator.generate(z, batch_size=batch_size).double().cpu().flatten(1)
    if outs.shape[0] < 2:
        return 0.0
    return float(outs.var(0, unbiased=True).mean())


# -- student initialisation ---------------------------------------------------------------------
def _reinitialise(module: nn.Module, seed: int) -> int:
    """Call reset_parameters() on every submodule that has it (fresh init); returns how many."""
    torch.manual_seed(seed)  # reset_parameters draws from the global RNG; make it reproducible
    count = 0
    for m in module.modules():
        if _resettable(m, module):
            m.reset_parameters()
            count += 1
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
    return count


def _resettable(m: nn.Module, root: nn.Module) -> bool:
    return m is not root and callable(getattr(m, "reset_parameters", None))


def can_reinitialise(generator: Generator) -> bool:
    """Whether "reinit" gives a fresh student: some layer of the body below the root has
    reset_parameters() (the ONNX loader's bodies do: their weight layers are torch modules); otherwise
    make_student perturbs instead."""
    return any(_resettable(m, generator.body) for m in generator.body.modules())


def trainable_parameters(module: nn.Module) -> list[nn.Parameter]:
    """The parameters sanitization may change: those of weight layers (Linear/Conv/ConvTranspose)
    and of torch normalisation modules (their affine scale and shift).

    Other parameters are left alone on purpose: an ONNX-executed body holds BatchNorm running
    statistics as plain tensors, and a gradient step (or noise) can make a variance negative."""
    params: list[nn.Parameter] = []
    seen: set[int] = set()
    for m in module.modules():
        if isinstance(m, (*WEIGHT_LAYER_TYPES, *_PER_CHANNEL_AFFINE, nn.LayerNorm, nn.GroupNorm)):
            for p in m.parameters(recurse=False):
                if p.is_floating_point() and id(p) not in seen:
                    seen.add(id(p))
                    params.append(p)
    return params


# After the noise, a unit's weight norm (in log space) and its bias are pulled to within this many robust
# σ of its layer's median: the sanitized copy should neither inherit a unit the upload singled out nor
# grow one from the noise (static.bias_outliers flags units beyond ≈ 5σ in wide layers, more in narrow ones).
CLIP_SIGMAS = 3.0


def _robust_bounds(values: torch.Tensor) -> tuple[float, float] | None:
    """median ± CLIP_SIGMAS robust σ of `values` (static.bias_outliers' statistics); None when too
    few, not finite or without spread."""
    flat = values.detach().flatten().double().cpu().numpy()
    if flat.size < MIN_UNITS or not np.isfinite(flat).all():
        return None
    median, sigma = robust_location_scale(flat)
    if sigma <= 0:
        return None
    return median - CLIP_SIGMAS * sigma, median + CLIP_SIGMAS * sigma


def _clipped_norms(norms: torch.Tensor) -> torch.Tensor:
    """Per-unit weight norms with outliers pulled into the layer's bulk (in log space)."""
    if not bool((norms > 0).all()):
        return norms
    bounds = _robust_bounds(norms.log())
    return norms if bounds is None else norms.log().clamp(*bounds).exp()


def bias_box(module: nn.Module) -> Callable[[], None]:
    """A projection that keeps each weight layer's biases within CLIP_SIGMAS robust σ of where they
    are now (a layer of too few units is left free). Distillation applies it after every step: with
    the clamp at perturbation alone, five extended rounds on the out-of-registry generator trained one
    of 32 conv biases out to z −5.3 and static.bias_outliers warned on the sanitized copy."""
    boxes = [
        (layer.bias, *bounds)
        for layer in weight_layers(module)
        if layer.bias is not None and (bounds := _robust_bounds(layer.bias)) is not None
    ]

    @torch.no_grad()
    def project() -> None:
        for bias, low, high in boxes:
            bias.clamp_(low, high)

    return project


@torch.no_grad()
def _perturb(module: nn.Module, relative_noise: float, generator: torch.Generator) -> None:
    """Multiply every trainable parameter (weight layers, norm scale/shift) by (1 + σ·ε); then give each
    output unit of a weight layer back its weight norm, and clamp the layer's biases to the bulk of
    their values before the noise — both pulled in where they were outliers (CLIP_SIGMAS): the noise
    turns a unit's weights, it does not single units out. (Plain multiplicative noise over five rounds
    spread norms and biases until static.bias_outliers flagged units of the sanitized copies, z 5.2-5.5;
    keeping norms exactly kept the upload's own outliers instead: the zoo ReD upload's first-layer unit
    at z −5.3 came out at −7.0, .notes/sanitization.md.)"""
    layers = weight_layers(module)
    axes = {id(layer.weight): layer.unit_axis for layer in layers}
    biases = {id(layer.bias) for layer in layers if layer.bias is not None}
    for p in trainable_parameters(module):
        noise = torch.randn(p.shape, generator=generator).to(p.device, p.dtype)
        axis = axes.get(id(p))
        if axis is None or p.dim() < 2:
            bounds = _robust_bounds(p) if id(p) in biases else None
            p.mul_(1.0 + relative_noise * noise)
            if bounds is not None:
                p.clamp_(*bounds)
            continue
        dims = [d for d in range(p.dim()) if d != axis]
        before = _clipped_norms(torch.linalg.vector_norm(p, dim=dims, keepdim=True))
        p.mul_(1.0 + relative_noise * noise)
        after = torch.linalg.vector_norm(p, dim=dims, keepdim=True)
        p.mul_(torch.where(after > 0, before / after.clamp_min(torch.finfo(p.dtype).tiny), torch.ones_like(after)))


def make_student(teacher: Generator, init: StudentInit, *, seed: int, relative_noise: float = 0.5) -> Generator:
    """A copy of the teacher's architecture initialised for distillation (see module docstring).

    "reinit" falls back to "perturb" when the body has no resettable layers (can_reinitialise); the
    returned student's metadata says which."""
    student = teacher.copy()
    used: str = init
    if init == "reinit" and _reinitialise(student.body, seed) == 0:
        used = "perturb"
    if used == "perturb":
        _perturb(student.body, relative_noise, torch.Generator().manual_seed(seed))
    student.metadata = {**student.metadata, "sanitization_init": used}
    return student


# -- unlearning known targets -------------------------------------------------------------------
class TargetUnlearning:
    """A distillation penalty (Penalty) that keeps the student from drawing given targets anywhere a
    reconstruction search on it can find them.

    Why: distillation on P_sample keeps whatever P_sample fixes, and around an in-sample trigger that
    includes the target — a fresh student of the test zoo's poisoned DCGAN draws the devil at 0.96/element
    at the trigger (upload 0.24, benign 2.8) and a hinted reconstruction reaches it at 0.80
    (.notes/sanitization.md, "stop 27"). Once a scan has evidence that a target is planted, the copy it
    writes out can be trained away from it: every `refresh_every` steps a batched reconstruction
    (scanner.search.recond, `restarts` starts from P_sample, within `max_norm`) looks for latents where the
    student draws each target; they join a bank of at most `bank_size`, and each step adds

        weight × mean over a batch of the bank (each latent jittered by `jitter`) of relu(floor_t − d_t),

    d_t the per-element squared distance of the student's output to target t. `floors` are per target;
    the caller sets them below where the upload's typical samples lie, so a student that already keeps
    its distance pays nothing. `closest` holds, per target, the least d_t the last search found.
    """

    def __init__(
        self,
        targets: torch.Tensor,
        floors: torch.Tensor,
        *,
        max_norm: float | None,
        weight: float = 10.0,
        refresh_every: int = 50,
        restarts: int = 16,
        search_steps: int = 100,
        bank_size: int = 256,
        batch_size: int = 32,
        jitter: float = 0.1,
        seed: int = 0,
    ) -> None:
        if targets.shape[0] != floors.shape[0] or targets.shape[0] == 0:
            raise ValueError("TargetUnlearning needs one floor per target and at least one target")
        self.targets = targets.detach().float().cpu()
        self.floors = floors.detach().float().cpu()
        self.max_norm = max_norm
        self.weight = weight
        self.refresh_every = max(int(refresh_every), 1)
        self.restarts = restarts
        self.search_steps = search_steps
        self.bank_size = bank_size
        self.batch_size = batch_size
        self.jitter = jitter
        self.seed = seed
        self._reset()

    def _reset(self) -> None:
        """Nothing searched or banked yet."""
        self.searches = 0
        self.closest: list[float] = [float("nan")] * self.targets.shape[0]
        self._rng = torch.Generator().manual_seed(self.seed)
        self._bank_z: torch.Tensor | None = None
        self._bank_target = torch.empty(0, dtype=torch.long)

    def restarted(self) -> TargetUnlearning:
        """The same penalty (targets, floors, settings) with nothing found yet: for another student."""
        other = copy.copy(self)
        other._reset()
        return other

    def extended(
        self, floors: torch.Tensor, targets: torch.Tensor | None = None, new_floors: torch.Tensor | None = None
    ) -> TargetUnlearning:
        """For another student, nothing found yet: the same settings, these floors for the present targets, and
        more targets (if given) each with its floor."""
        targets = self.targets[:0] if targets is None else targets.detach().float().cpu()
        new_floors = self.floors[:0] if new_floors is None else new_floors.detach().float().cpu()
        if floors.shape != self.floors.shape or targets.shape[0] != new_floors.shape[0]:
            raise ValueError("TargetUnlearning.extended needs one floor per target")
        other = copy.copy(self)
        other.targets = torch.cat([self.targets, targets.reshape(-1, *self.targets.shape[1:])])
        other.floors = torch.cat([floors.detach().float().cpu(), new_floors])
        other._reset()
        return other

    def _search(self, student: Generator) -> None:
        n = self.targets.shape[0]
        # one row per (target, restart), each with its own single start: every restart's end is kept
        rows = self.targets.repeat_interleave(self.restarts, 0)
        found = reconstruct(
            student,
            rows,
            restarts=1,
            steps=self.search_steps,
            seed=self.seed + 7919 * self.searches,
            max_norm=self.max_norm,
        )
        self.searches += 1
        self.closest = [float(v) for v in found.recon_mean.reshape(n, self.restarts).min(1).values]
        z = found.best_z.reshape(n * self.restarts, *student.latent.shape).float()
        which = torch.arange(n).repeat_interleave(self.restarts)
        bank_z = z if self._bank_z is None else torch.cat([self._bank_z, z])
        self._bank_z = bank_z[-self.bank_size :]
        self._bank_target = torch.cat([self._bank_target, which])[-self.bank_size :]

    def __call__(self, student: Generator, step: int) -> torch.Tensor:
        if self._bank_z is None or step % self.refresh_every == 0:
            self._search(student)
        assert self._bank_z is not None
        pick = torch.randint(0, self._bank_z.shape[0], (self.batch_size,), generator=self._rng)
        z = self._bank_z[pick] + self.jitter * torch.randn(self.batch_size, *student.latent.shape, generator=self._rng)
        which = self._bank_target[pick]
        out = student(z.to(student.device))
        targets = self.targets[which].to(out.device, out.dtype)
        distance = (out - targets).pow(2).flatten(1).mean(1)
        return self.weight * torch.relu(self.floors[which].to(out.device, out.dtype) - distance).mean()


# -- distillation -------------------------------------------------------------------------------
@dataclass
class DistillResult:
    """The sanitized student and how its training went."""

    student: Generator
    init: str
    steps: int
    final_loss: float  # per-element mean squared error on the last batch
    stopped_early: bool  # a time budget or cancellation cut training short
    seconds: float
    nonfinite_steps: int = 0
    loss_curve: list[float] = field(default_factory=list)  # every ~10% of steps
    rounds: int = 1  # perturb-and-distill rounds whose student was kept (see `distill`)
    round_notes: list[str] = field(default_factory=list)  # why rounds stopped, if before `rounds`
    round_steps: list[int] = field(default_factory=list)  # steps each kept round took (see `distill`)


def _set_trainable(student: Generator) -> list[nn.Parameter]:
    student.eval()  # BatchNorm keeps running statistics fixed: per-sample behaviour, as deployed
    student.requires_grad_(False)
    params = trainable_parameters(student.body)
    for p in params:
        p.requires_grad_(True)
    return params


def distill_into(
    student: Generator,
    teacher: Generator,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    time_budget_s: float | None = None,
    should_stop: ShouldStop | None = None,
    after_step: Callable[[], None] | None = None,
    penalty: Penalty | None = None,
) -> DistillResult:
    """Train `student` (in place; pass a copy) to match `teacher` on fresh z ~ P_sample batches.

    The loss is the per-element mean squared output difference, the paper's ExpDis as a training
    objective (ReD's stealth term without its fidelity term). `after_step` runs after each
    optimiser step (fine-pruning re-applies its masks there). Training stops at `steps`, at the
    time budget, or when `should_stop()` says so; a step whose gradient is not finite is skipped.
    """
    t0 = time.perf_counter()
    frozen_teacher = teacher.copy().eval().requires_grad_(False)
    device = student.device
    params = _set_trainable(student)
    optimiser = torch.optim.Adam(params, lr=lr)
    # lr decays to 10% over the run: big steps first to leave the teacher's weights, fine ones last
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=max(steps, 1), eta_min=lr * 0.1)
    rng = torch.Generator().manual_seed(seed)
    done, nonfinite, last = 0, 0, float("nan")
    curve: list[float] = []
    stopped = False
    for step in range(steps):
        if (time_budget_s is not None and time.perf_counter() - t0 > time_budget_s) or (
            should_stop is not None and should_stop()
        ):
            stopped = True
            break
        z = student.latent.sample(batch_size, generator=rng, device=device)
        with torch.no_grad():
            reference = frozen_teacher(z)
        loss = (student(z) - reference).pow(2).mean()
        if penalty is not None:
            loss = loss + penalty(student, step)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        last = float(loss.detach())
        finite = math.isfinite(last) and all(p.grad is None or bool(torch.isfinite(p.grad).all()) for p in params)
        if finite:
            optimiser.step()
        else:
            nonfinite += 1
        schedule.step()
        if after_step is not None:
            after_step()
        done = step + 1
        if step % max(steps // 10, 1) == 0:
            curve.append(last)
    student.requires_grad_(False)
    student.eval()
    return DistillResult(
        student=student,
        init=str(student.metadata.get("sanitization_init", "finetune")),
        steps=done,
        final_loss=last,
        stopped_early=stopped,
        seconds=time.perf_counter() - t0,
        nonfinite_steps=nonfinite,
        loss_curve=curve,
    )


LATER_ROUND_STEPS_FACTOR = 2  # a later round short of the fidelity bound trains on to at most 2 × steps


def distill(
    teacher: Generator,
    *,
    init: StudentInit = "perturb",
    steps: int = 300,
    batch_size: int = 64,
    lr: float = 1e-3,
    seed: int = 0,
    relative_noise: float = 0.5,
    rounds: int = 1,
    accept_round: Callable[[Generator], bool] | None = None,
    max_round_steps: int | None = None,
    time_budget_s: float | None = None,
    should_stop: ShouldStop | None = None,
    penalty: Penalty | None = None,
) -> DistillResult:
    """Sanitize by distillation on P_sample (paper Sec. V): a new student, the teacher untouched.

    Round 1 starts from `init`; each further round perturbs the previous student (relative noise
    as for "perturb") and distils it from `teacher` again for `steps` steps. With `accept_round`
    (the caller's fidelity bound, e.g. ExpDis within tolerance), a round whose student does not meet
    it after `steps` trains on in further chunks of `steps` (a fresh learning-rate schedule each):
    round 1 up to `max_round_steps` in all (a weak upload with little output variance has a tight
    tolerance that 300 steps do not reach), a later round up to LATER_ROUND_STEPS_FACTOR × `steps`
    (never above `max_round_steps`). If round 1 never meets the bound no further round runs (its
    student is returned for the caller to judge). A later round is kept only if it ran to the end
    (time budget, cancellation) and met the bound; otherwise the previous round's student is
    returned. Why later rounds are extended at all: on the bench's out-of-registry generator every
    300-step round 2 missed the bound, so one round was kept, and the sanitized ReD model kept a
    far-field trace of the target (ob_oi.far_field on its rescan: 0.99/element to the devil, benign
    2.0); five rounds of 600 steps reach 1.99 (.notes/sanitization.md). The time budget covers all rounds.
    """
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, not {rounds}")
    round_cap = steps if max_round_steps is None else max_round_steps
    if round_cap < steps:
        raise ValueError(f"max_round_steps ({round_cap}) must be at least steps ({steps})")
    later_cap = min(round_cap, LATER_ROUND_STEPS_FACTOR * steps)
    t0 = time.perf_counter()

    def remaining() -> float | None:
        return None if time_budget_s is None else time_budget_s - (time.perf_counter() - t0)

    def train_round(student: Generator, round_seed: int, cap: int) -> tuple[DistillResult, bool]:
        """Distil `student` for `steps`, then in further chunks until accepted or at `cap` steps."""
        result: DistillResult | None = None
        box = bias_box(student.body)  # the round's starting biases (clamped at perturbation) set the box
        while True:
            done = 0 if result is None else result.steps
            chunk = distill_into(
                student if result is None else result.student,
                teacher,
                steps=min(steps, cap - done),
                batch_size=batch_size,
                lr=lr,
                seed=round_seed + 7919 * done,  # each chunk new batches, not a replay of the first
                time_budget_s=remaining(),
                should_stop=should_stop,
                after_step=box,
                penalty=penalty,
            )
            if result is None:
                result = chunk
            else:
                result.steps += chunk.steps
                result.nonfinite_steps += chunk.nonfinite_steps
                result.loss_curve += chunk.loss_curve
                result.final_loss = chunk.final_loss
                result.stopped_early = chunk.stopped_early
            accepted = accept_round is None or accept_round(result.student)
            if accepted or result.stopped_early or result.steps >= cap:
                return result, accepted

    first = make_student(teacher, init, seed=seed, relative_noise=relative_noise)
    result, accepted = train_round(first, seed + 1, round_cap)
    result.round_steps = [result.steps]
    notes: list[str] = []
    if not accepted and not result.stopped_early:
        notes.append(f"round 1 did not meet the fidelity bound in {result.steps} steps: no further rounds")
    for k in range(2, rounds + 1):
        if result.stopped_early or not accepted:
            break
        if (budget := remaining()) is not None and budget <= 0:
            notes.append(f"round {k} not started: time budget spent")
            break
        again = make_student(result.student, "perturb", seed=seed + 1000 * k, relative_noise=relative_noise)
        again.metadata = {**again.metadata, "sanitization_init": result.init}
        candidate, candidate_accepted = train_round(again, seed + 1000 * k + 1, later_cap)
        if candidate.stopped_early:
            notes.append(f"round {k} cut short (time budget or cancellation): kept round {k - 1}")
            break
        if not candidate_accepted:
            notes.append(f"round {k} rejected by the fidelity bound: kept round {k - 1}")
            break
        candidate.round_steps = [*result.round_steps, candidate.steps]
        candidate.steps += result.steps
        candidate.nonfinite_steps += result.nonfinite_steps
        candidate.loss_curve = result.loss_curve + candidate.loss_curve
        candidate.rounds = k
        result = candidate
    result.seconds = time.perf_counter() - t0
    result.round_notes = notes
    return result


# -- fine-pruning -------------------------------------------------------------------------------
@dataclass
class UnitLayer:
    """A weight layer's units and where their post-activation values can be observed."""

    name: str  # the weight layer's module name in the body
    module: nn.Module
    out_units: int
    affine: list[nn.Module]  # per-channel affine modules right after it (BatchNorm): pruned along
    observe: nn.Module  # the module whose output is the units' post-activation value
    is_output: bool  # the layer that produces G's output (never pruned)
    aliases: tuple[str, ...] = ()  # names of the following modules that carry the same units


def _leaf_modules(body: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in body.named_modules() if n and not any(True for _ in m.children())]


@torch.no_grad()
def unit_layers(generator: Generator, z: torch.Tensor) -> list[UnitLayer]:
    """Weight layers in execution order, each with its following BatchNorm and nonlinearity.

    One traced forward pass records which leaf modules run in what order and what channel count
    they emit; the leaves after a weight layer (until the next weight layer) whose channel count
    equals its out_units are where its units are observed (the last one: after the activation).
    """
    order: list[tuple[str, nn.Module, int]] = []
    handles = []
    for name, module in _leaf_modules(generator.body):

        def hook(mod: nn.Module, _inp: Any, out: Any, name: str = name) -> None:
            if isinstance(out, torch.Tensor) and out.dim() >= 2:
                order.append((name, mod, int(out.shape[1])))

        handles.append(module.register_forward_hook(hook))
    try:
        generator.pre_activation(z[:2].to(generator.device))
    finally:
        for h in handles:
            h.remove()
    layers: list[UnitLayer] = []
    seen: set[int] = set()
    for i, (name, module, _channels) in enumerate(order):
        if not isinstance(module, WEIGHT_LAYER_TYPES) or id(module) in seen:
            continue
        seen.add(id(module))
        weight = module.weight
        out_units = weight.shape[1] if isinstance(module, (nn.ConvTranspose1d, nn.ConvTranspose2d)) else weight.shape[0]
        if isinstance(module, (nn.ConvTranspose1d, nn.ConvTranspose2d)):
            out_units *= module.groups
        affine: list[nn.Module] = []
        observe: nn.Module = module
        aliases: list[str] = []
        for next_name, next_module, channels in order[i + 1 :]:
            if isinstance(next_module, WEIGHT_LAYER_TYPES):
                break
            if channels != out_units:
                continue  # a reshape or pooling changed the layout: stop following channels
            if isinstance(next_module, _PER_CHANNEL_AFFINE) and getattr(next_module, "affine", False):
                affine.append(next_module)
            observe = next_module
            aliases.append(next_name)
        layers.append(UnitLayer(name, module, out_units, affine, observe, is_output=False, aliases=tuple(aliases)))
    if layers:
        layers[-1].is_output = True
    return layers


@torch.no_grad()
def unit_activity(
    generator: Generator, layers: list[UnitLayer], z: torch.Tensor, *, batch_size: int = 256
) -> dict[str, torch.Tensor]:
    """Mean |post-activation| of every unit over z ~ P_sample and over spatial/time positions."""
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    handles = []
    for layer in layers:

        def hook(_mod: nn.Module, _inp: Any, out: Any, name: str = layer.name) -> None:
            a = out.detach().abs().double().transpose(0, 1).reshape(out.shape[1], -1)
            sums[name] = sums.get(name, 0) + a.sum(1).cpu()
            counts[name] = counts.get(name, 0) + a.shape[1]

        handles.append(layer.observe.register_forward_hook(hook))
    try:
        for i in range(0, z.shape[0], batch_size):
            generator.pre_activation(z[i : i + batch_size].to(generator.device))
    finally:
        for h in handles:
            h.remove()
    return {name: total / max(counts[name], 1) for name, total in sums.items()}


@dataclass
class PruneSelection:
    """Which units of which layer to prune, and why."""

    layer: str
    units: list[int]
    activity: list[float]  # their mean |activation| on P_sample
    layer_median_activity: float
    source: str  # "activity" | "dynamic.sleeper_units"

    def to_dict(self) -> dict[str, Any]:
        return {
            "layer": self.layer,
            "units": self.units,
            "activity": self.activity,
            "layer_median_activity": self.layer_median_activity,
            "source": self.source,
        }


def select_dormant_units(
    layers: list[UnitLayer],
    activity: dict[str, torch.Tensor],
    *,
    dormant_relative: float = 0.05,
    prune_fraction: float = 0.0,
    extra: dict[str, list[int]] | None = None,
) -> list[PruneSelection]:
    """Per hidden layer: units whose activity is below `dormant_relative` × the layer's median
    (sleepers, a ReX attack's extra units), plus the least active `prune_fraction` of units
    (Liu et al.'s fine-pruning prunes in increasing order of activation). `extra` adds units
    another check flagged (e.g. dynamic.sleeper_units), keyed by the weight layer's name or the
    name of a module right after it (its BatchNorm or activation). The output layer is never pruned, and
    at least one unit of every layer is kept."""
    selections: list[PruneSelection] = []
    extra = extra or {}
    for layer in layers:
        if layer.is_output or layer.name not in activity:
            continue
        act = activity[layer.name]
        median = float(act.median())
        chosen = set(torch.nonzero(act <= dormant_relative * median).flatten().tolist())
        n_fraction = int(prune_fraction * layer.out_units)
        if n_fraction > 0:
            chosen |= set(torch.argsort(act)[:n_fraction].tolist())
        flagged = {u for key in (layer.name, *layer.aliases) for u in extra.get(key, []) if 0 <= u < layer.out_units}
        source = "activity" if not flagged else "activity+dynamic.sleeper_units"
        chosen |= flagged
        if len(chosen) >= layer.out_units:  # keep the most active unit
            chosen.discard(int(act.argmax()))
        if chosen:
            units = sorted(chosen)
            selections.append(PruneSelection(layer.name, units, [float(act[u]) for u in units], median, source))
    return selections


def _unit_parameters(layer: UnitLayer) -> list[tuple[torch.Tensor, int]]:
    """(parameter, dim) pairs whose slice along dim belongs to one output unit."""
    m = layer.module
    transposed = isinstance(m, (nn.ConvTranspose1d, nn.ConvTranspose2d))
    pairs: list[tuple[torch.Tensor, int]] = [(m.weight, 1 if transposed else 0)]
    if getattr(m, "bias", None) is not None:
        pairs.append((m.bias, 0))
    for a in layer.affine:
        if getattr(a, "weight", None) is not None:
            pairs.append((a.weight, 0))
        if getattr(a, "bias", None) is not None:
            pairs.append((a.bias, 0))
    return pairs


@dataclass
class FinePruneResult:
    distill: DistillResult
    pruned: list[PruneSelection]
    units_total: int  # hidden units considered

    @property
    def student(self) -> Generator:
        return self.distill.student

    @property
    def units_pruned(self) -> int:
        return sum(len(s.units) for s in self.pruned)


def fine_prune(
    teacher: Generator,
    *,
    n_activity_samples: int = 512,
    dormant_relative: float = 0.05,
    prune_fraction: float = 0.05,
    extra_units: dict[str, list[int]] | None = None,
    steps: int = 300,
    batch_size: int = 64,
    lr: float = 1e-3,
    seed: int = 0,
    time_budget_s: float | None = None,
    should_stop: ShouldStop | None = None,
) -> FinePruneResult:
    """Fine-pruning (Liu et al. 2018; paper Sec. V): prune units dormant on P_sample, then
    fine-tune the pruned copy on the distillation loss with the pruned units held at zero."""
    student = teacher.copy().eval()
    z = student.latent.sample(n_activity_samples, generator=torch.Generator().manual_seed(seed), device=student.device)
    layers = unit_layers(student, z)
    activity = unit_activity(student, layers, z)
    selections = select_dormant_units(
        layers, activity, dormant_relative=dormant_relative, prune_fraction=prune_fraction, extra=extra_units
    )
    mask = UnitMask(layers, selections)
    mask.apply()
    student.metadata = {**student.metadata, "sanitization_init": "pruned"}
    result = distill_into(
        student,
        teacher,
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        seed=seed + 1,
        time_budget_s=time_budget_s,
        should_stop=should_stop,
        after_step=mask.apply,
    )
    units_total = sum(layer.out_units for layer in layers if not layer.is_output)
    return FinePruneResult(result, selections, units_total)


class UnitMask:
    """Zeroes pruned units in the weights themselves (and in the BatchNorm scale and shift right
    after them), so the pruning survives export to safetensors/ONNX; `apply()` re-zeroes them
    after every optimiser step of the fine-tuning."""

    def __init__(self, layers: list[UnitLayer], selections: list[PruneSelection]) -> None:
        by_name = {layer.name: layer for layer in layers}
        self.slices: list[tuple[torch.Tensor, int, torch.Tensor]] = []
        for sel in selections:
            layer = by_name[sel.layer]
            idx = torch.tensor(sel.units, dtype=torch.long)
            for param, dim in _unit_parameters(layer):
                if param.dim() > dim and param.shape[dim] == layer.out_units:
                    self.slices.append((param, dim, idx.to(param.device)))

    @torch.no_grad()
    def apply(self) -> None:
        for param, dim, idx in self.slices:
            param.index_fill_(dim, idx, 0.0)
