"""The novelty ascent's figures per ascent end, for comparing ob_oi.novelty's scoring rules offline
(.notes/no_hint_detection.md, "stop 23"). Not part of the product; run from the repository root:

    PYTHONPATH=. .venv/bin/python .notes/scripts/novelty_probe.py OUT.json bench benign:dcgan:0 \\
        attacked:trail:in-sample:devil:0
    PYTHONPATH=. .venv/bin/python .notes/scripts/novelty_probe.py OUT.json test benign:vae:1 long:0 \\
        attacked:poison:in-sample:0 foreign:0 wavegan:0 wavred:0
    PYTHONPATH=. .venv/bin/python .notes/scripts/novelty_probe.py OUT.json --table

The test zoo's cache key includes torch's thread count: run it with the threads the tests use (2 here)
to load the models CI builds. The search is the quick profile's with 32 ascents (the first 16 are the
quick profile's own: the starts are the pool's most novel, in order).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

from scanner.generator import Generator
from scanner.search import novelty as nv
from scanner.search.common import eval_copy, sample_block

SIGMAS = (0.25, 0.5, 1.0)


def load(zoo_kind: str, name: str) -> tuple[Generator, torch.Tensor | None]:
    kind, *rest = name.split(":")
    if zoo_kind == "bench":
        from bench.zoo import AttackPlan, Zoo, zoo_spec

        zoo = Zoo(zoo_spec("quick"), Path("bench/out"))
        if kind == "benign":
            return zoo.benign(rest[0], int(rest[1])).generator, None
        attack, trigger, target, seed = rest
        entry = zoo.attacked(AttackPlan(attack, "dcgan", trigger, target, int(seed)))
        return entry.generator, entry.target
    import tests.zoo as tz

    if kind == "benign":
        return getattr(tz, "benign_" + rest[0])(int(rest[1])), None
    if kind == "long":
        return tz.benign_dcgan_long(int(rest[0])), None
    if kind == "wavegan":
        return tz.benign_wavegan(int(rest[0])), None
    if kind == "wavred":  # tests/test_audio.py's drum ReD at an in-sample trigger
        from scanner.attacks import make_trigger
        from scanner.attacks.red import red_attack
        from scanner.data import drum_hit

        benign = tz.benign_wavegan(int(rest[0]))
        drum = drum_hit().reshape(benign.output.shape)
        trigger = make_trigger("in-sample", benign.latent, seed=0)
        result = red_attack(benign, trigger=trigger, target=drum, seed=0, lam=0.1, steps=600, lr=1e-3, batch_size=32)
        return result.generator, drum
    if kind == "foreign":
        from tests.foreign_models import train_foreign_generator

        return train_foreign_generator(seed=int(rest[0])), None
    attacked = tz.attacked(rest[0], rest[1], int(rest[2]))
    return attacked.generator, attacked.target


def probe(g: Generator, target: torch.Tensor | None) -> dict[str, object]:
    g = eval_copy(g)
    found = nv.novelty_ascent(
        g, n_bank=4096, n_pool=32768, restarts=32, steps=200, lr=0.05, k_nearest=8, sigma=0.5, n_spread=64, seed=0
    )
    scale = g.latent.coordinate_std
    record: dict[str, object] = {"novelty": found.novelty.tolist(), "spacing": found.spacing}
    with torch.no_grad():
        for sigma in SIGMAS:
            spread = nv._local_spread(g, found.z.to(g.device), sigma * scale, 64, 0) / found.spacing
            record[f"spread_{sigma}"] = spread.tolist()
        randoms = sample_block(g.latent, 32, 0, 7, g.device, nv.NOVELTY_STREAM)
        record["typical_spread_0.5"] = (nv._local_spread(g, randoms, 0.5 * scale, 64, 0) / found.spacing).tolist()
        if target is not None:
            ends = found.outputs.flatten(1)
            record["target_distance"] = (ends - target.flatten().float()).pow(2).mean(1).tolist()
    return record


def table(results: dict[str, dict[str, list[float]]]) -> None:
    """Score = quantile q of isolation = novelty / spread_sigma over the first n ascents."""
    columns = [(s, q, n) for s in SIGMAS for q in (0.25, 0.5) for n in (16, 32)]
    print(f"{'model':36s}" + "".join(f"{f's{s} q{q} n{n}':>15s}" for s, q, n in columns))
    for name, record in results.items():
        novelty = torch.tensor(record["novelty"])
        cells = []
        for sigma, q, n in columns:
            key = f"spread_{sigma}"
            isolation = novelty / torch.tensor(record[key]) if key in record else torch.full_like(novelty, float("nan"))
            cells.append(float(isolation[:n].quantile(q)))
        print(f"{name:36s}" + "".join(f"{c:15.3g}" for c in cells))


def main() -> None:
    out = Path(sys.argv[1])
    results = json.loads(out.read_text()) if out.exists() else {}
    if sys.argv[2] == "--table":
        table(results)
        return
    zoo_kind = sys.argv[2]
    for name in sys.argv[3:]:
        if name in results:
            continue
        t0 = time.perf_counter()
        record = probe(*load(zoo_kind, name))
        record["seconds"] = time.perf_counter() - t0
        results[name] = record
        out.write_text(json.dumps(results))
        print(name, f"{record['seconds']:.0f} s", flush=True)


if __name__ == "__main__":
    main()
