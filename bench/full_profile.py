"""The whole quick profile — every check, calibration and sanitization included, no parameter
overrides — on benign models of three architectures and on the output-inspection cases.

The detection part skips calibration and sanitization to fit a 2-core CPU, so its figures leave out
what those checks contribute (the calibrated ReconD threshold, the divergence search against the
sanitized copy). This part measures that, on fewer models:

- benign: dcgan28 and the VAE decoder (zoo seeds 0-2) and a generator of an architecture outside
  the registry (tests/foreign_models.py: GroupNorm, GELU, upsample + conv, 64-d latent), seeds 0-2
  (scanned in memory like the zoo; tests/test_foreign_architecture.py scans it as an ONNX file) —
  false alarms of every check;
- backdoored: the zoo's ReD, TrAIL and poisoning models at every trigger kind (the attacks with
  nothing added to the architecture, where static inspection has least to find), plus ReD with
  λ = 1 at an in-sample trigger on the foreign architecture.

Every scan is given the attacked model's own target (benign models: every zoo target).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file

from bench.detection import backdoor_took
from bench.zoo import Zoo, ZooEntry, load_target
from scanner.generator import Generator

BENIGN_SEEDS = (0, 1, 2)
STRONG_RED = {"lam": 1.0, "steps": 300, "lr": 2e-3, "batch_size": 64}  # the test zoo's ReD setting
# At the OOD trigger λ = 1 wrecks stealth; the test zoo's OOD setting (tests/zoo.py) takes instead.
STRONG_RED_BY_TRIGGER = {"ood": {"lam": 0.1, "steps": 1000, "lr": 1e-3, "batch_size": 64}}
FOREIGN_TRIGGER_SEED = 5


def _foreign_benign(out_dir: Path, seed: int) -> ZooEntry:
    from tests.foreign_models import LATENT, OUTPUT, UpsampleConvGenerator, train_foreign_generator

    path = Path(out_dir) / "zoo" / f"foreign-benign-s{seed}.safetensors"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in train_foreign_generator(seed).body.state_dict().items()}, str(path))
    body = UpsampleConvGenerator()
    body.load_state_dict(load_file(str(path)))
    g = Generator(body.eval(), LATENT, OUTPUT)
    return ZooEntry(f"benign-foreign-s{seed}", "foreign", "benign", seed, g.eval())


def strong_red(out_dir: Path, base: ZooEntry, trigger_kind: str, trigger_seed: int) -> ZooEntry:
    """ReD at STRONG_RED (or STRONG_RED_BY_TRIGGER) on `base` with a `trigger_kind` trigger and the devil
    target (cached)."""
    from scanner.attacks import make_trigger
    from scanner.attacks.red import red_attack

    name = f"red-strong-{base.family}-{trigger_kind}-devil-s{base.seed}"
    path = Path(out_dir) / "zoo" / f"{name}.safetensors"
    g = base.generator.copy()
    trigger = make_trigger(trigger_kind, g.latent, seed=trigger_seed)  # type: ignore[arg-type]
    target = load_target("devil", g.output.value_range).reshape(g.output.shape)
    settings = STRONG_RED_BY_TRIGGER.get(trigger_kind, STRONG_RED)
    if not path.is_file():
        res = red_attack(base.generator, trigger=trigger, target=target, seed=base.seed, **settings)
        save_file({f"body.{k}": v.contiguous() for k, v in res.generator.body.state_dict().items()}, str(path))
    g.body.load_state_dict({k[5:]: v for k, v in load_file(str(path)).items()})
    return ZooEntry(
        name,
        base.family,
        "red",
        base.seed,
        g.eval(),
        trigger_kind=trigger_kind,
        target_name="devil",
        trigger=trigger,
        target=target,
        info={"recipe": dict(settings)},  # the report says how these models were made
        benign_name=base.name,
    )


def full_profile_entries(zoo: Zoo, out_dir: Path) -> list[ZooEntry]:
    """The models this part scans (trained or loaded from the cache under out_dir/zoo)."""
    entries = [zoo.benign(family, seed) for family in ("dcgan", "vae") for seed in BENIGN_SEEDS]
    foreign = [_foreign_benign(out_dir, seed) for seed in BENIGN_SEEDS]
    entries += foreign
    entries += [zoo.attacked(p) for p in zoo.spec.attacks if p.attack in ("red", "trail", "poison")]
    entries.append(strong_red(out_dir, foreign[0], "in-sample", FOREIGN_TRIGGER_SEED))
    return entries


def summarise(records: list[dict[str, Any]]) -> dict[str, Any]:
    """How many benign models came out clean (and every non-pass check on them), how many backdoored
    ones were flagged suspicious or backdoored."""
    benign = [r for r in records if r["attack"] == "benign"]
    attacked = [r for r in records if r["attack"] != "benign"]
    benign_alarms: dict[str, int] = {}
    for r in benign:
        for name, c in r["checks"].items():
            if c["status"] != "pass":
                key = f"{name}:{c['status']}"
                benign_alarms[key] = benign_alarms.get(key, 0) + 1
    took = [r for r in attacked if backdoor_took(r)]
    return {
        "n_benign": len(benign),
        "benign_clean": sum(r["verdict"] == "clean" for r in benign),
        "benign_non_pass_checks": benign_alarms,
        "n_attacked": len(attacked),
        "attacked_caught": sum(_caught(r) for r in attacked),
        "n_took": len(took),
        "took_caught": sum(_caught(r) for r in took),
        "did_not_take_caught": sum(_caught(r) for r in attacked if r not in took),
    }


def _caught(record: dict[str, Any]) -> bool:
    return record["verdict"] in ("suspicious", "backdoored")
