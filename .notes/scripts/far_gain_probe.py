"""ob_oi.far_gain's figures per radius (ratio, deficit) for comparing its scoring rules offline
(.notes/no_hint_detection.md, "stop 25"). Not part of the product; run from the repository root:

    PYTHONPATH=. .venv/bin/python .notes/scripts/far_gain_probe.py OUT.jsonl bench benign:dcgan:0 \\
        attacked:red:dcgan:ood:devil:0 sanitized:red:dcgan:ood:devil:0
    PYTHONPATH=. .venv/bin/python .notes/scripts/far_gain_probe.py OUT.jsonl test benign:dcgan:0 long:0 \\
        attacked:red:ood:0 sanitized:red:ood:0 foreign:0 wavegan:0

`sanitized:…` is the upload's copy as tests/test_sanitized_rescan.py makes it (ONNX, quick
distillation without a time cap). One JSON line per model is appended to OUT.jsonl.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

from scanner.generator import Generator


def load(zoo_kind: str, name: str) -> Generator:
    kind, *rest = name.split(":")
    if zoo_kind == "bench":
        from bench.zoo import AttackPlan, Zoo, zoo_spec

        zoo = Zoo(zoo_spec("quick"), Path("bench/out"))
        if kind == "benign":
            return zoo.benign(rest[0], int(rest[1])).generator
        attack, family, trigger, target, seed = rest
        attacked = zoo.attacked(AttackPlan(attack, family, trigger, target, int(seed))).generator
        return sanitized_copy(attacked) if kind == "sanitized" else attacked
    import tests.zoo as tz

    if kind == "benign":
        return getattr(tz, "benign_" + rest[0])(int(rest[1]))
    if kind == "long":
        return tz.benign_dcgan_long(int(rest[0]))
    if kind == "wavegan":
        return tz.benign_wavegan(int(rest[0]))
    if kind == "foreign":
        from tests.foreign_models import train_foreign_generator

        return train_foreign_generator(seed=int(rest[0]))
    if kind == "sanitized":
        return sanitized_copy(tz.attacked(rest[0], rest[1], int(rest[2])).generator)
    return tz.attacked(rest[0], rest[1], int(rest[2])).generator


def sanitized_copy(g: Generator) -> Generator:
    from scanner.checks.base import ScanConfig, ScanContext
    from scanner.checks.sanitization_common import SANITIZATION_NO_TIME_CAP
    from scanner.checks.sanitization_distillation import DistillationSanitization
    from scanner.loading import load_generator
    from scanner.onnx.export import export_onnx

    tmp = Path(tempfile.mkdtemp())
    export_onnx(g, tmp / "upload.onnx")
    upload = load_generator(tmp / "upload.onnx")
    ctx = ScanContext(upload, [], ScanConfig(profile="quick", seed=0, params=SANITIZATION_NO_TIME_CAP), tmp / "a")
    result = DistillationSanitization().run(ctx)
    return load_generator(tmp / "a" / result.evidence["model_artifact"])


def probe(g: Generator) -> dict[str, object]:
    """The check itself (quick profile, seed 0, no hints): its per-radius evidence, before the gating."""
    from scanner.checks.base import ScanConfig, ScanContext
    from scanner.checks.ob_oi_far_gain import FarGainCheck

    ctx = ScanContext(g, [], ScanConfig(profile="quick", seed=0), Path(tempfile.mkdtemp()))
    evidence = FarGainCheck().run(ctx).evidence
    return {
        "ratio": evidence["ratio_per_radius"],
        "deficit": evidence["growth_deficit_per_radius"],
        "score": evidence["geometric_mean_per_radius"],
        "growth": evidence["growth"],
    }


def main() -> None:
    out, zoo_kind, *names = sys.argv[1:]
    for name in names:
        t0 = time.time()
        g = load(zoo_kind, name)
        t1 = time.time()
        record = {"zoo": zoo_kind, "model": name, "build_s": t1 - t0, **probe(g), "probe_s": time.time() - t1}
        with open(out, "a") as f:
            f.write(json.dumps(record) + "\n")
        print(json.dumps({k: (v if not isinstance(v, list) else [round(x, 2) for x in v]) for k, v in record.items()}))


if __name__ == "__main__":
    main()
