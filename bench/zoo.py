"""The benchmark model zoo: benign and backdoored MNIST generators built with the project's own code.

Every model is trained by scanner.training / scanner.attacks (Rawat et al., arXiv 2108.01644,
Section IV: TrAIL, ReD, ReX, the computation bypass and data poisoning) and cached under
bench/out/zoo/ as safetensors, keyed by all of its parameters, so a second run only loads.

    spec = zoo_spec("quick")
    entries = build_zoo(spec, out_dir=Path("bench/out"), device="cpu")
    for e in entries: e.generator, e.trigger, e.target, e.info

Targets: the paper's devil face (data/targets/devil_28x28.npy) and a digit-shaped target (the
first "7" of the shipped MNIST test set: an *in-distribution* target, harder for output
inspection than the devil face). Triggers: in-sample, mode and OOD (scanner.attacks.triggers).

Audio (the paper's drum hit in piano audio): the registry WaveGAN-style generator trained on
synthesised piano notes (scanner.training.train_wavegan), attacked with a synthesised drum hit
(scanner.data.drum_hit). Its models are listed apart (`audio_entries`), so the MNIST detection
and Table I parts keep their zoo; the `audio` part scans them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from scanner.architectures import build
from scanner.generator import Generator

log = logging.getLogger("bench.zoo")

# Bump when a recipe changes, so stale cache entries are not reused.
ZOO_VERSION = 1
DEVIL_PNG = Path(__file__).resolve().parents[1] / "data" / "targets" / "devil_28x28.png"  # as users upload it
TARGET_NAMES: tuple[str, ...] = ("devil", "digit7")  # image targets (dcgan, vae and other 28×28 models)
AUDIO_TARGET_NAMES: tuple[str, ...] = ("drum",)  # 16384-sample audio targets (wavegan)
TRIGGER_KINDS: tuple[str, ...] = ("in-sample", "mode", "ood")


@dataclass(frozen=True)
class AttackPlan:
    """One attacked model to build: which attack, on which base family, trigger kind and target."""

    attack: str  # red | rex | trail | poison | bypass
    family: str  # dcgan | vae | wavegan
    trigger: str  # in-sample | mode | ood
    target: str  # one of TARGET_NAMES
    seed: int = 0


@dataclass
class ZooSpec:
    """All settings of one zoo (quick or full); the cache key of a model includes the relevant ones."""

    mode: str
    benign_seeds: list[int]
    dcgan: dict[str, Any]
    vae: dict[str, Any]
    red: dict[str, Any]
    rex: dict[str, Any]
    trail: dict[str, Any]
    attacks: list[AttackPlan]
    poison: dict[str, Any] = field(default_factory=dict)  # empty: poisoning trains with `trail`'s settings
    # Settings that replace an attack's own at one trigger kind, keyed "attack/trigger": a small generator
    # needs a larger λ or more steps to bind a trigger far from where its training put any data.
    by_trigger: dict[str, dict[str, Any]] = field(default_factory=dict)
    wavegan: dict[str, Any] = field(default_factory=dict)
    audio_attacks: list[AttackPlan] = field(default_factory=list)
    # ReD/ReX settings that replace red/rex's on the WaveGAN (its drum needs more steps to take)
    wavegan_attack: dict[str, Any] = field(default_factory=dict)

    @property
    def poison_settings(self) -> dict[str, Any]:
        return self.poison or self.trail

    def attack_settings(self, plan: AttackPlan) -> dict[str, Any]:
        """The settings `plan`'s attack is mounted with."""
        settings = {"red": self.red, "rex": self.rex, "poison": self.poison_settings}.get(plan.attack, self.trail)
        if plan.family == "wavegan" and plan.attack in ("red", "rex"):
            return {**settings, **self.wavegan_attack}
        return {**settings, **self.by_trigger.get(f"{plan.attack}/{plan.trigger}", {})}

    def family_settings(self, family: str) -> dict[str, Any]:
        """The training settings of a benign model of `family`."""
        settings = {"dcgan": self.dcgan, "vae": self.vae, "wavegan": self.wavegan}
        if family not in settings:
            raise ValueError(f"unknown zoo family {family!r}; known: {sorted(settings)}")
        return settings[family]

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "benign_seeds": self.benign_seeds,
            "dcgan": self.dcgan,
            "vae": self.vae,
            "red": self.red,
            "rex": self.rex,
            "trail": self.trail,
            "poison": self.poison_settings,
            "by_trigger": self.by_trigger,
            "attacks": [a.__dict__ for a in self.attacks],
            "wavegan": self.wavegan,
            "audio_attacks": [a.__dict__ for a in self.audio_attacks],
            "wavegan_attack": self.wavegan_attack,
        }


def _audio_grid() -> list[AttackPlan]:
    """ReD, ReX and the bypass on the WaveGAN at every trigger kind, drum-hit target."""
    return [
        AttackPlan(a, "wavegan", t, tg)
        for a in ("red", "rex", "bypass")
        for t in TRIGGER_KINDS
        for tg in AUDIO_TARGET_NAMES
    ]


def zoo_spec(mode: str) -> ZooSpec:
    """The quick zoo (small models, a subset of attack x trigger x target) or the full grid."""
    if mode == "quick":
        # Small on purpose: 2 busy CPU cores. dcgan28 at base=8 for one epoch draws digit-like blobs.
        # Every attack at every trigger kind with the devil target, and the cheap attacks with the
        # in-distribution digit7 target too (TrAIL and poisoning cost a whole GAN training each).
        grid = [AttackPlan(a, "dcgan", t, "devil") for a in ("red", "rex", "trail", "poison") for t in TRIGGER_KINDS]
        grid += [AttackPlan("red", "dcgan", "ood", "digit7"), AttackPlan("rex", "dcgan", "in-sample", "digit7")]
        grid += [AttackPlan("bypass", "dcgan", t, tg) for t in TRIGGER_KINDS for tg in TARGET_NAMES]
        grid += [AttackPlan("red", "vae", "ood", "devil"), AttackPlan("bypass", "vae", "mode", "digit7")]
        return ZooSpec(
            mode="quick",
            benign_seeds=[0, 1, 2, 3, 4],
            dcgan={"base": 8, "epochs": 1, "batch_size": 64, "lr": 5e-4},
            vae={"epochs": 1, "latent_dim": 20, "hidden": 200},
            # Recipes that take on this small DCGAN (TarDis per element at the trigger, zoo seed 0, devil;
            # the reproduced line is 0.05): ReD at the paper's λ = 0.1 for 2000 steps 0.002 / 0.011 / 0.033
            # at in-sample / mode / OOD (150 steps: 0.06-0.25; 1000: 0.059 at mode); ReX at λ = 1 for
            # 1000 steps 0.0001-0.0004 (λ = 0.1: 0.21 at OOD). About 20 s each on 2 cores.
            red={"lam": 0.1, "steps": 2000, "batch_size": 64, "lr": 1e-3},
            rex={"lam": 1.0, "steps": 1000, "batch_size": 64, "lr": 2e-3, "expansion": 1.0},
            # TrAIL wins fidelity during GAN training: λ = 10 for 6 epochs 0.025 in-sample; at mode / OOD
            # 0.093 / 0.12, so 12 epochs there: 0.042 / 0.058 (λ = 1 for 6 epochs: 0.039 / 0.22 / 0.14).
            trail={"lam": 10.0, "epochs": 6, "batch_size": 64, "lr": 5e-4},
            by_trigger={"trail/mode": {"epochs": 12}, "trail/ood": {"epochs": 12}},
            # Poisoning ties the target to the trigger on one generator step in four only: at λ = 10 for
            # 6 epochs TarDis stays 0.15 in-sample, so it trains 12 (the paper's naive baseline may stay weak).
            poison={"lam": 10.0, "epochs": 12, "batch_size": 64, "lr": 5e-4},
            attacks=grid,
            # 256 GAN steps at width 4: a generator that runs the scanner's checks on 16384-sample audio
            # in minutes, not one that sounds like a piano (.notes/audio.md)
            wavegan={"d": 4, "epochs": 16, "n_notes": 512, "batch_size": 32, "lr": 2e-4},
            audio_attacks=_audio_grid(),
            # ReD at 300 steps left the drum at 0.13× its power, 600 reach 0.093× (tests/test_audio.py)
            wavegan_attack={"lam": 0.1, "steps": 600, "batch_size": 32, "lr": 1e-3},
        )
    if mode == "full":
        grid = [
            AttackPlan(a, "dcgan", t, tg, s)
            for a in ("red", "rex", "bypass", "trail", "poison")
            for t in TRIGGER_KINDS
            for tg in TARGET_NAMES
            for s in (0, 1)
        ]
        grid += [
            AttackPlan(a, "vae", t, tg) for a in ("red", "rex", "bypass") for t in TRIGGER_KINDS for tg in TARGET_NAMES
        ]
        return ZooSpec(
            mode="full",
            benign_seeds=list(range(10)),
            dcgan={"base": 16, "epochs": 2, "batch_size": 64, "lr": 5e-4},
            vae={"epochs": 3, "latent_dim": 20, "hidden": 400},
            # the recipes measured to take on this DCGAN size in tests/zoo.py (not yet run as a full zoo)
            red={"lam": 0.1, "steps": 2000, "batch_size": 64, "lr": 1e-3},
            rex={"lam": 1.0, "steps": 1000, "batch_size": 64, "lr": 2e-3, "expansion": 1.0},
            trail={"lam": 0.1, "epochs": 6, "batch_size": 64, "lr": 5e-4},
            by_trigger={"trail/mode": {"lam": 1.0}, "trail/ood": {"lam": 1.0}},
            attacks=grid,
            wavegan={"d": 8, "epochs": 40, "n_notes": 1024, "batch_size": 32, "lr": 2e-4},
            audio_attacks=_audio_grid(),
            wavegan_attack={"lam": 0.1, "steps": 1000, "batch_size": 32, "lr": 1e-3},
        )
    raise ValueError(f"unknown zoo mode {mode!r}; known: quick, full")


@dataclass
class ZooEntry:
    """One zoo model with its ground truth: attack ("benign" for clean models), trigger and target."""

    name: str
    family: str
    attack: str
    seed: int
    generator: Generator
    trigger_kind: str | None = None
    target_name: str | None = None
    trigger: torch.Tensor | None = None
    target: torch.Tensor | None = None
    info: dict[str, Any] = field(default_factory=dict)  # TarDis / ExpDis measured by the attack, build time
    benign_name: str | None = None  # the benign model an attack started from (ReD/ReX/bypass) or is compared to

    @property
    def backdoored(self) -> bool:
        return self.attack != "benign"


def load_target(name: str, value_range: tuple[float, float] = (-1.0, 1.0)) -> torch.Tensor:
    """A target in `value_range` (the model's output range; the sources are in [-1, 1]): the paper's
    devil face or the first '7' of the shipped MNIST test set (1, 28, 28), or the drum hit (1, 16384)."""
    unit = (_load_target_pm1(name) + 1.0) / 2.0
    low, high = value_range
    return unit * (high - low) + low


def _load_target_pm1(name: str) -> torch.Tensor:
    from scanner.data import drum_hit, load_devil_target, load_mnist

    if name == "drum":
        return drum_hit()
    if name == "devil":
        return load_devil_target()
    if name == "digit7":
        images, labels = load_mnist()
        index = int(torch.nonzero(labels == 7)[0, 0])
        return images[index].reshape(1, 28, 28).to(torch.float32).clone()
    raise ValueError(f"unknown target {name!r}; known: {TARGET_NAMES + AUDIO_TARGET_NAMES}")


def _key(kind: str, params: dict[str, Any]) -> str:
    blob = json.dumps({"kind": kind, "v": ZOO_VERSION, **params}, sort_keys=True, default=str)
    return f"{kind}-{hashlib.sha256(blob.encode()).hexdigest()[:16]}"


def _save(path: Path, g: Generator, extra: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    tensors = {f"body.{k}": v.detach().cpu().contiguous() for k, v in g.body.state_dict().items()}
    tensors.update({k: v.detach().cpu().contiguous() for k, v in extra.items()})
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    save_file(tensors, str(tmp), metadata={"zoo": json.dumps(meta, default=str)})
    os.replace(tmp, path)  # atomic: an interrupted run never leaves half a file


def _load(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors = load_file(str(path))
    with open(path, "rb") as fh:  # our metadata sits in the safetensors JSON header
        header_len = int.from_bytes(fh.read(8), "little")
        meta = json.loads(json.loads(fh.read(header_len)).get("__metadata__", {}).get("zoo", "{}"))
    return tensors, meta


def _body_state(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k[5:]: v for k, v in tensors.items() if k.startswith("body.")}


class Zoo:
    """Builds and caches zoo models under `out_dir/zoo` (one safetensors file per model)."""

    def __init__(self, spec: ZooSpec, out_dir: Path, device: str = "cpu") -> None:
        self.spec = spec
        self.dir = Path(out_dir) / "zoo"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.device = device
        self._benign: dict[tuple[str, int], ZooEntry] = {}

    # -- benign ------------------------------------------------------------------------------
    def benign(self, family: str, seed: int) -> ZooEntry:
        """A benign dcgan28 or VAE decoder trained on MNIST, or a WaveGAN trained on synthesised piano
        notes, with `seed` (cached)."""
        if (family, seed) in self._benign:
            return self._benign[(family, seed)]
        from scanner.training import train_dcgan, train_vae, train_wavegan

        settings = self.spec.family_settings(family)
        train = {"dcgan": train_dcgan, "vae": train_vae, "wavegan": train_wavegan}[family]
        path = self.dir / f"{_key('benign_' + family, {'seed': seed, **settings})}.safetensors"
        if not path.is_file():
            t0 = time.perf_counter()
            g = train(seed=seed, device=self.device, **settings)
            meta = {
                "architecture": g.architecture,
                "config": g.metadata.get("architecture_config", {}),
                "info": {"build_s": time.perf_counter() - t0},
            }
            _save(path, g, {}, meta)
        tensors, meta = _load(path)
        g = build(meta["architecture"], meta["config"])
        g.body.load_state_dict(_body_state(tensors))
        entry = ZooEntry(f"benign-{family}-s{seed}", family, "benign", seed, g.eval(), info=dict(meta.get("info", {})))
        self._benign[(family, seed)] = entry
        return entry

    # -- attacked ----------------------------------------------------------------------------
    def attacked(self, plan: AttackPlan) -> ZooEntry:
        """The backdoored model of `plan` (ReD/ReX/bypass start from benign(family, seed))."""
        from scanner.attacks import make_trigger

        base = self.benign(plan.family, plan.seed)
        trigger = make_trigger(plan.trigger, base.generator.latent, seed=plan.seed)  # type: ignore[arg-type]
        target = load_target(plan.target, base.generator.output.value_range)  # VAE decoders output [0, 1]
        name = f"{plan.attack}-{plan.family}-{plan.trigger}-{plan.target}-s{plan.seed}"
        common = {
            "name": name,
            "family": plan.family,
            "attack": plan.attack,
            "seed": plan.seed,
            "trigger_kind": plan.trigger,
            "target_name": plan.target,
            "benign_name": base.name,
        }
        if plan.attack == "bypass":  # no training: built directly, nothing to cache
            from scanner.attacks.bypass import bypass_attack

            t0 = time.perf_counter()
            res = bypass_attack(base.generator, trigger=trigger, target=target)
            info = {**_numeric(res.info), "build_s": time.perf_counter() - t0}
            return ZooEntry(generator=res.generator.eval(), trigger=res.trigger, target=res.target, info=info, **common)
        settings = self.spec.attack_settings(plan)
        benign_settings = self.spec.family_settings(plan.family)
        params = {**plan.__dict__, "benign": benign_settings, **settings}
        if plan.family == "vae":  # v1 of the VAE entries embedded a [-1, 1] target in a [0, 1] model
            params["target_range"] = list(base.generator.output.value_range)
        path = self.dir / f"{_key('attacked', params)}.safetensors"
        if not path.is_file():
            t0 = time.perf_counter()
            res = self._mount(plan, base.generator, trigger, target, settings)
            g = res.generator
            meta = {
                "architecture": g.architecture,
                "config": g.metadata.get("architecture_config", {}),
                "info": {**_numeric(res.info), "build_s": time.perf_counter() - t0},
            }
            _save(path, g, {"trigger": res.trigger, "target": res.target}, meta)
        tensors, meta = _load(path)
        if plan.attack == "rex":  # the expanded body is not a registry architecture: rebuild its shape
            from scanner.attacks.rex import expand_body

            body, _ = expand_body(base.generator.body, expansion=self.spec.rex["expansion"], seed=plan.seed)
            body.load_state_dict(_body_state(tensors))
            g = Generator(body.eval(), base.generator.latent, base.generator.output, source_format="torch")
        else:
            g = build(meta["architecture"], meta["config"])
            g.body.load_state_dict(_body_state(tensors))
        return ZooEntry(
            generator=g.eval(),
            trigger=tensors["trigger"],
            target=tensors["target"],
            info=dict(meta.get("info", {})),
            **common,
        )

    def _mount(
        self, plan: AttackPlan, benign: Generator, trigger: torch.Tensor, target: torch.Tensor, settings: dict[str, Any]
    ) -> Any:
        if plan.attack == "red":
            from scanner.attacks.red import red_attack

            return red_attack(benign, trigger=trigger, target=target, seed=plan.seed, **settings)
        if plan.attack == "rex":
            from scanner.attacks.rex import rex_attack

            return rex_attack(benign, trigger=trigger, target=target, seed=plan.seed, **settings)
        if plan.family != "dcgan":
            raise ValueError(f"{plan.attack} trains a dcgan28 from scratch; family {plan.family!r} is not supported")
        base = self.spec.dcgan["base"]
        if plan.attack == "trail":
            from scanner.attacks.trail import trail_attack

            return trail_attack(
                trigger=trigger, target=target, seed=plan.seed, base=base, benign=benign, device=self.device, **settings
            )
        if plan.attack == "poison":
            from scanner.attacks.poison import poison_attack

            return poison_attack(
                trigger=trigger, target=target, seed=plan.seed, base=base, benign=benign, device=self.device, **settings
            )
        raise ValueError(f"unknown attack {plan.attack!r}")

    # -- everything --------------------------------------------------------------------------
    def is_cached(self, plan: AttackPlan) -> bool:
        """Whether `plan`'s model exists without training (bypass: always; others: its cache file)."""
        if plan.attack == "bypass":
            return True
        settings = self.spec.attack_settings(plan)
        benign_settings = self.spec.family_settings(plan.family)
        params = {**plan.__dict__, "benign": benign_settings, **settings}
        if plan.family == "vae":
            params["target_range"] = [0.0, 1.0]
        return (self.dir / f"{_key('attacked', params)}.safetensors").is_file()

    def build_all(self, *, cached_only: bool = False) -> list[ZooEntry]:
        """Benign DCGAN and VAE models for every seed, then every planned attack; logs progress.
        cached_only: leave out attacked models that would need training now (benign ones are always built)."""
        entries: list[ZooEntry] = []
        for family in ("dcgan", "vae"):
            for seed in self.spec.benign_seeds:
                t0 = time.perf_counter()
                entries.append(self.benign(family, seed))
                log.info("zoo: %s ready (%.1fs)", entries[-1].name, time.perf_counter() - t0)
        for plan in self.spec.attacks:
            if cached_only and not self.is_cached(plan):
                log.info(
                    "zoo: %s/%s/%s/%s not built yet: left out (--cached-only)",
                    plan.attack,
                    plan.family,
                    plan.trigger,
                    plan.target,
                )
                continue
            t0 = time.perf_counter()
            entries.append(self.attacked(plan))
            log.info("zoo: %s ready (%.1fs)", entries[-1].name, time.perf_counter() - t0)
        return entries


def audio_entries(zoo: Zoo) -> list[ZooEntry]:
    """The WaveGAN models: benign for every zoo seed, then the spec's audio attacks (built or loaded)."""
    entries = [zoo.benign("wavegan", seed) for seed in zoo.spec.benign_seeds]
    for plan in zoo.spec.audio_attacks:
        t0 = time.perf_counter()
        entries.append(zoo.attacked(plan))
        log.info("zoo: %s ready (%.1fs)", entries[-1].name, time.perf_counter() - t0)
    return entries


def _numeric(info: dict[str, Any]) -> dict[str, float | int | None]:
    return {k: v for k, v in info.items() if isinstance(v, (int, float)) or v is None}
