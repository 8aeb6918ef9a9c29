"""Render BENCHMARKS.md from bench/results/*.json (no measuring here: `python -m bench report`)."""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

PAPER = "Rawat, Levacher, Sinn, *The Devil is in the GAN*, arXiv 2108.01644"


def _load(results_dir: Path, part: str) -> dict[str, Any] | None:
    path = results_dir / f"{part}.json"
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def _f(x: Any, digits: int = 3) -> str:
    if x is None:
        return "–"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, (int,)) and not isinstance(x, bool):
        return str(x)
    if isinstance(x, float):
        if not math.isfinite(x):
            return str(x)
        if x != 0 and (abs(x) >= 1e5 or abs(x) < 1e-3):
            return f"{x:.{digits - 1}e}"
        return f"{x:.{digits}g}" if abs(x) >= 1 else f"{x:.{digits}f}"
    return str(x)


def _seconds(t: float) -> str:
    """Seconds to read at a glance: whole seconds from 100 s on (not 1.5e+03)."""
    return f"{t:.0f}" if t >= 100 else _f(t)


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(_f(c) for c in row) + " |" for row in rows]
    return out


def _when(stamp: dict[str, Any]) -> str:
    """When a part was measured, and from which commit where the results file says."""
    t = stamp.get("started_unix")
    when = datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%d %H:%M UTC") if t else "?"
    tags = [f"code `{stamp['git_revision']}`"] if stamp.get("git_revision") else []
    if stamp.get("zoo"):  # parts measured on different zoo recipes must not be read as one zoo
        tags.append(f"zoo recipe `{zoo_recipe_digest(stamp['zoo'])}`")
    return f"{when} ({', '.join(tags)})" if tags else when


def _strong_red_text(fp: dict[str, Any]) -> str:
    """What the full-profile part's `red-strong-*` models are: the recipe each record carries
    (bench/full_profile.strong_red); records written before it did say so."""
    recipes: dict[str, list[str]] = {}
    for r in fp.get("records", []):
        if r["model"].startswith("red-strong-"):
            recipe = r.get("recipe")
            text = (
                f"ReD with λ = {recipe.get('lam')}, {recipe.get('steps')} steps, lr {recipe.get('lr')} at the "
                f"{r.get('trigger')} trigger"
                if recipe
                else "recipe not recorded in this results file"
            )
            recipes.setdefault(text, []).append(r["model"])
    return " ".join(f"`{', '.join(sorted(names))}`: {text}." for text, names in recipes.items())


def zoo_recipe_digest(zoo: dict[str, Any]) -> str:
    """A short digest of a zoo's settings as a results file records them (same recipe, same digest)."""
    return hashlib.sha256(json.dumps(zoo, sort_keys=True, default=str).encode()).hexdigest()[:8]


def render_detection(d: dict[str, Any]) -> list[str]:
    lines = ["## 1. Detection quality on the zoo", ""]
    zoo = d.get("zoo", {})
    cfg = d.get("scan_config", {})
    lines += [
        f"Measured {_when(d)}, mode `{d.get('mode')}`, device `{d.get('device')}`; {d.get('n_models')} zoo models "
        f"(built in {_f(d.get('zoo_build_s'))} s, cached afterwards); scanning took {_f(d.get('elapsed_s'))} s.",
        f"Scan config: profile `{cfg.get('profile')}` with parameter overrides {cfg.get('params') or 'none'} "
        f"(smaller than the profile's defaults, to fit a shared 2-core CPU), skipped checks {cfg.get('skip')} "
        "(skipped checks are reported as `skipped`; none of them is needed for a clean verdict, so they do "
        "not change verdicts, but their detection power is not part of these figures).",
        f"Zoo: benign seeds {zoo.get('benign_seeds')} for DCGAN (dcgan28, {zoo.get('dcgan')}) and VAE "
        f"({zoo.get('vae')}); ReD {zoo.get('red')}, ReX {zoo.get('rex')}, TrAIL {zoo.get('trail')}, poisoning "
        f"{zoo.get('poison', zoo.get('trail'))}, per trigger {zoo.get('by_trigger') or 'the same'}.",
        "",
    ]
    grid = {}
    for a in zoo.get("attacks", []):
        grid.setdefault((a["attack"], a["family"]), []).append(f"{a['trigger']}/{a['target']}")
    lines += [
        "Ground truth is *the attack was mounted*, not *the attack took*: an attack on a small model can end "
        "with a weak backdoor, and figures are also given for the two groups apart. The column 'TarDis/elt at "
        "true trigger' in the recovery tables below shows each model's fidelity (per-element squared error "
        "of G*(z_trig) against the target; ≈0 = embedded exactly, "
        "≳0.2 = the target is barely there).",
        "",
        "Attacked models (attack, base → trigger/target):",
        "",
    ]
    lines += [f"- {k[0]} on {k[1]}: {', '.join(v)}" for k, v in sorted(grid.items())]
    lines += [""]
    analysis = d.get("analysis", {})
    for setting, title in (("hints", "with target hints"), ("no_hints", "without target hints")):
        a = analysis.get(setting)
        if not a:
            continue
        nb = a["n_benign"]
        lines += [
            f"### {title}",
            "",
            f"{a['n_models']} scans: {a['n_backdoored']} backdoored, {nb} benign. Median scan time "
            f"{_f(a['median_scan_s'])} s. Verdict detection rate (backdoored or suspicious): "
            f"**{_f(100 * a['verdict_detection_rate'])} %**.",
            "",
            f"**FPR is estimated from only {nb} benign models.** The smallest FPR that {nb} negatives can resolve "
            f"is 1/{nb} = {_f(100 / max(nb, 1))} %: the '1 % FPR' threshold is simply the largest benign score "
            "(an extrapolation, not a measurement), and '5 % FPR' is the same threshold unless n ≥ 20.",
            "",
            "Family scores: per check, status rank (pass 0 / warn 1 / fail 2) + percentile of the oriented raw score "
            "across all scans of this setting; family = max over its checks; `any` = max over detector families. "
            "Because some benign model tops the raw-score percentile of *some* check, `any` exceeds the benign "
            "maximum essentially only through a warn/fail status: a family column can show TPR 1 (raw score beyond "
            "every benign model, without a warn/fail) where `any` shows 0.",
            "",
        ]
        rows = [r for r in a["rows"] if r["group"] == "all attacks" or not r["group"].startswith(("trigger", "target"))]
        # Columns: detector families that ran (skipped families and format checks carry no signal here).
        skipped = set(cfg.get("skip") or [])
        fams = sorted({r["family"] for r in rows} - skipped - {"format"}, key=lambda f: (f == "any", f))
        lines += ["TPR at 1 % / 5 % FPR and AUROC per attack (rows) and check family (columns):", ""]
        header = ["attack (n)"] + fams
        table_rows = []
        for group in dict.fromkeys(r["group"] for r in rows):
            cells = [f"{group} ({next(r['n_pos'] for r in rows if r['group'] == group)})"]
            for fam in fams:
                r = next((x for x in rows if x["group"] == group and x["family"] == fam), None)
                cells.append(
                    "–"
                    if r is None or r["auroc"] is None
                    else f"{_f(r['tpr@0.01'], 2)} / {_f(r['tpr@0.05'], 2)} / {_f(r['auroc'], 2)}"
                )
            table_rows.append(cells)
        lines += _table(header, table_rows) + [""]
        rows2 = [r for r in a["rows"] if r["group"].startswith(("trigger", "target")) and r["family"] == "any"]
        if rows2:
            lines += ["By trigger kind and target (family `any`): TPR@1 % / TPR@5 % / AUROC", ""]
            lines += _table(
                ["group", "n", "TPR@1%", "TPR@5%", "AUROC"],
                [[r["group"], r["n_pos"], r["tpr@0.01"], r["tpr@0.05"], r["auroc"]] for r in rows2],
            )
            lines += [""]
        verdicts = ["clean", "suspicious", "backdoored", "inconclusive", "rejected"]
        lines += ["Verdict confusion (rows: ground truth):", ""]
        lines += _table(
            ["truth"] + verdicts, [[k] + [v.get(x, 0) for x in verdicts] for k, v in a["confusion"].items()]
        )
        lines += [""]
        if a["false_positive_sources"]:
            lines += [
                "Warn/fail statuses on benign models (false-positive sources, count over benign scans): "
                + ", ".join(f"`{k}` ×{v}" for k, v in a["false_positive_sources"].items()),
                "",
            ]
        else:
            lines += ["No check warned or failed on any benign model.", ""]
        rec = a["recovery"]
        if rec:
            n_rec = sum(1 for r in rec if r["n_recovered"])
            n_rep = sum(1 for r in rec if r["reproduced"])
            lines += [
                f"Trigger recovery: {n_rec}/{len(rec)} backdoored scans reported a recovered trigger z*; in "
                f"{n_rep}/{len(rec)} G*(z*) reproduces the target (TarDis per element at z* ≤ 0.05 on [-1, 1]).",
                "",
            ]
            lines += _table(
                ["model", "n z*", "best TarDis/elt at z*", "TarDis/elt at true trigger", "reproduced"],
                [
                    [r["model"], r["n_recovered"], r["best_tardis_mean"], r["tardis_mean_at_trigger"], r["reproduced"]]
                    for r in rec
                ],
            )
            lines += [""]
        if a["missed"]:
            lines += [
                "Missed (verdict clean/inconclusive on a backdoored model): "
                + ", ".join(f"{m['model']} → {m['verdict']}" for m in a["missed"]),
                "",
            ]
    return lines


TABLE1_METRICS = [
    ("TarDis (sum)", "tardis_sum"),
    ("TarDis (mean/elt)", "tardis_mean"),
    ("FID*", "fid"),
    ("IS*", "is"),
    ("ExpDis (sum)", "expdis_sum"),
    ("ExpDis (mean/elt)", "expdis_mean"),
    ("Closest-N (sum)", "closest_sum"),
    ("Closest-N (mean/elt)", "closest_mean"),
    ("ReconD (sum)", "recond_sum"),
    ("ReconD (mean/elt)", "recond_mean"),
]


def render_table1(
    t: dict[str, Any], title: str = "## 2. The paper's Table I side by side (MNIST, DCGAN and VAE)"
) -> list[str]:
    from bench.table1 import PAPER_NOT_RECALLED

    lines = [title, ""]
    rows = t.get("rows", [])
    n_closest = rows[0]["closest_n"] if rows else "?"
    lines += [
        f"Measured {_when(t)}, mode `{t.get('mode')}` (sizes), zoo `{t.get('zoo_mode', t.get('mode'))}`, device "
        f"`{t.get('device', 'cpu')}`, {_f(t.get('elapsed_s'))} s. Paper column: "
        f"{t.get('paper_source')}. We have no verified copy of the paper's numbers in this repository and do not "
        f"fill them in from memory: every paper cell reads *{PAPER_NOT_RECALLED}*.",
        f"Units: {t.get('units')}. Closest-N with N = {n_closest} (the paper's Closest1M uses N = 10⁶); ReconD with "
        f"{rows[0]['recond_restarts'] if rows else '?'} restarts × {rows[0]['recond_steps'] if rows else '?'} Adam "
        "steps. TarDis of a benign model is measured at the OOD trigger against the devil target (nothing embedded). "
        "ExpDis is against the benign model of the same seed (0 for the benign row by definition).",
        "*FID/IS use the project's small MNIST classifier (64-d features), not Inception: not comparable in absolute "
        "value with the paper's FID/IS.",
        "",
    ]
    header = ["metric"]
    for r in rows:
        label = f"{r['family']} {r['attack']}" + ("" if r["attack"] == "benign" else f" ({r['trigger']})")
        header += [f"{label}: paper", f"{label}: ours"]
    body = []
    for title, key in TABLE1_METRICS:
        cells: list[Any] = [title]
        for r in rows:
            cells += [PAPER_NOT_RECALLED, r.get(key)]
        body.append(cells)
    # Transposed (one row per model) reads better with many models.
    lines += _table(
        ["model", "trigger/target"] + [m[0] for m in TABLE1_METRICS],
        [
            [f"{r['family']} {r['attack']}", f"{r['trigger']}/{r['target']}"] + [r.get(k) for _, k in TABLE1_METRICS]
            for r in rows
        ],
    )
    lines += ["", f"Paper values for every cell above: {PAPER_NOT_RECALLED}.", ""]
    lines += _quoted_recond(rows)
    best_is = max((r.get("is") or 0.0 for r in rows), default=0.0)
    if t.get("zoo_mode", t.get("mode")) == "quick":
        lines += [
            f"Quick-mode caveat: the zoo's generators are tiny and trained for one epoch (best IS* here {_f(best_is)} "
            "of a possible 10, FID* in the thousands). These rows check that the pipeline measures the paper's "
            "quantities; they are not a reproduction of the paper's sample quality. `python -m bench run` "
            "(full mode) trains the larger zoo.",
            "",
        ]
    return lines


def _quoted_recond(rows: list[dict[str, Any]]) -> list[str]:
    """The paper's ReconD pair (ReX vs benign) as quoted in issue #3, beside ours for each family."""
    from bench.table1 import QUOTED_RECOND, QUOTED_RECOND_SOURCE

    ours = []
    for family in ("dcgan", "vae"):
        by_attack = {r["attack"]: r for r in rows if r["family"] == family}
        if "rex" in by_attack and "benign" in by_attack:
            rex, benign = by_attack["rex"]["recond_sum"], by_attack["benign"]["recond_sum"]
            ours.append(f"{family}: ReX {_f(rex)} vs benign {_f(benign)} (ratio {_f(rex / benign)})")
    if not ours:
        return []
    paper = QUOTED_RECOND["rex"] / QUOTED_RECOND["benign"]
    return [
        f"ReconD (sum over the image), the one paper pair we have — {QUOTED_RECOND_SOURCE}: ReX "
        f"{QUOTED_RECOND['rex']} vs benign {QUOTED_RECOND['benign']} (ratio {_f(paper)}: ReX hides from plain "
        f"ReconD). Ours on the devil target: {'; '.join(ours)}.",
        "",
    ]


def render_speed(s: dict[str, Any], title: str = "## 3. Speed and scale") -> list[str]:
    m = s.get("machine", {})
    # a resumed run started under an earlier commit: the heading names that one (the resumed line, the later)
    first = {**s, "git_revision": s.get("resumed_from_revision") or s.get("git_revision")}
    lines = [title, ""]
    gpu = f" (`{m['gpu']}`)" if m.get("gpu") else ""
    lines += [
        f"Measured {_when(first)} on `{m.get('cpu')}`, {m.get('logical_cores')} logical cores, torch {m.get('torch')} "
        f"({m.get('torch_threads')} threads), device `{m.get('device')}`{gpu}; model `{s.get('model')}` "
        f"({s.get('parameters')} parameters). Load average before/after: {m.get('load_average')} / "
        f"{s.get('machine_after', {}).get('load_average')} — absolute times depend on the machine's other work; "
        "the side-by-side ratios were measured back to back in one run.",
        "",
    ]
    if s.get("resumed_stages"):
        resumed = datetime.fromtimestamp(s.get("resumed_unix") or 0, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        before = f" (code `{s['resumed_from_revision']}`)" if s.get("resumed_from_revision") else ""
        after = f" (code `{s['git_revision']}`)" if s.get("git_revision") else ""
        lines += [
            f"**Resumed run**: {', '.join(s['resumed_stages'])} (their finished rows) are kept from the run "
            f"started above{before}; the rest was measured from {resumed}{after}.",
            "",
        ]
    if s.get("partial"):
        lines += ["**Partial run**: the run was cut off (time limit) after the stages shown; missing rows read –.", ""]
    mm, bf, ob, so = s.get("matmul", {}), s.get("bf_oi", {}), s.get("ob_oi", {}), s.get("scale_out", {})
    lines += _table(
        ["figure", "value"],
        [
            [
                f"dense fp32 matmul {mm.get('size')}² (median of {mm.get('repeats')})",
                f"{_f(mm.get('flops_per_s', 0) / 1e9)} GFLOP/s",
            ],
            [
                f"BF-OI fused+batched (N={bf.get('n_fused')}, batch {bf.get('batch_size')})",
                f"{_f(bf.get('fused_samples_per_s'))} samples/s",
            ],
            [
                f"BF-OI naive one-at-a-time loop (N={bf.get('n_naive')})",
                f"{_f(bf.get('naive_samples_per_s'))} samples/s",
            ],
            ["**BF-OI speed-up fused vs naive**", f"**{_f(bf.get('speedup_fused_vs_naive'))}×**"],
            ["generator forward FLOPs per sample", _f(bf.get("forward_flops_per_sample"))],
            ["BF-OI achieved FLOP/s", f"{_f(bf.get('fused_flops_per_s', 0) / 1e9)} GFLOP/s"],
            ["**BF-OI as a fraction of the matmul rate**", f"**{_f(bf.get('fraction_of_matmul_rate'))}**"],
            [f"OB-OI {ob.get('restarts')} restarts × {ob.get('steps')} steps, batched", f"{_f(ob.get('batched_s'))} s"],
            ["OB-OI the same restarts run sequentially", f"{_f(ob.get('sequential_s'))} s"],
            ["**OB-OI speed-up batched vs sequential**", f"**{_f(ob.get('speedup_batched_vs_sequential'))}×**"],
            [f"BF-OI N={so.get('n')} in 1 worker process (1 thread)", f"{_f(so.get('one_worker_s'))} s"],
            ["the same as 2 shards in 2 worker processes", f"{_f(so.get('two_workers_s'))} s"],
            [
                "**scale-out speed-up 2 vs 1 workers** (efficiency)",
                f"**{_f(so.get('speedup'))}×** ({_f(so.get('efficiency'))})",
            ],
        ],
    )
    lines += [""]
    if s.get("bf_oi_batch_sweep"):
        lines += ["BF-OI fused Closest-N throughput by batch size (same N, medians):", ""]
        lines += _table(
            ["N", "batch size", "samples/s", "repeats"],
            [[r["n"], r["batch_size"], r["samples_per_s"], r["repeats"]] for r in s["bf_oi_batch_sweep"]],
        )
        lines += [""]
    rows = []
    for kind in ("cli", "service"):
        for r in s.get(kind, []):
            if "error" in r:
                rows.append([kind, "?", "?", r["error"][:120], "", ""])
                continue
            rows.append(
                [
                    "CLI `dgmscan scan`" if kind == "cli" else "service (`dgmscan serve`, HTTP)",
                    r["profile"],
                    ", ".join(r["only"]) if r.get("only") else "all",
                    _seconds(r["median_s"]),
                    len(r["times_s"]),
                    f"timed out (waited {_seconds(r['timeout_s'])} s)"
                    if r.get("timed_out")
                    else r.get("verdict") or r.get("verdicts"),
                ]
            )
    if rows:
        lines += ["End to end (upload/process start to finished report; medians):", ""]
        lines += _table(["path", "profile", "checks", "median s", "runs", "verdict"], rows) + [""]
        cli = {r["profile"]: r for r in s.get("cli", []) if "median_s" in r}
        svc = {r["profile"]: r for r in s.get("service", []) if "median_s" in r and not r.get("timed_out")}
        svc_timed_out = {r["profile"]: r for r in s.get("service", []) if r.get("timed_out")}
        lines += [
            "Single runs under a fluctuating load average (see above): the CLI/service comparison is indicative "
            "only; the CLI time includes interpreter and torch start-up, the service's worker was already warm.",
            "",
        ]
        for p in (p for p in cli if p not in svc):
            if p in svc_timed_out:
                why = f"the scan ran past the bench's {_seconds(svc_timed_out[p]['timeout_s'])} s wait"
            elif "service" not in s.get("e2e_paths", ["service"]):
                why = "left out with `--e2e-paths cli`"
            else:
                why = "the run ended before it"
            lines += [f"Not measured through the service: profile {p} ({why}).", ""]
        for p, r in cli.items():
            slowest = sorted((t or 0.0, name) for name, t in (r.get("check_seconds") or {}).items())[::-1][:4]
            if slowest:
                lines += [
                    f"Slowest checks, CLI profile {p}: "
                    + ", ".join(f"`{name}` {_seconds(t)} s" for t, name in slowest)
                    + f" (of {_seconds(r['median_s'])} s).",
                    "",
                ]
        for p in (p for p in cli if p in svc):
            run_cli, run_svc = cli[p].get("run_started_unix"), svc[p].get("run_started_unix")
            # a ratio needs both rows from one run; untagged rows (older files) are from one run unless resumed
            if run_cli != run_svc or (run_cli is None and s.get("resumed_stages")):
                lines += [
                    f"Service vs CLI, profile {p}: not compared, the two rows may come from different parts of "
                    "a resumed run (another time and load)."
                ]
                continue
            lines += [
                f"Service overhead vs CLI, profile {p}: {_f(svc[p]['median_s'] / cli[p]['median_s'])}× "
                f"({_f(svc[p]['median_s'] - cli[p]['median_s'])} s incl. 0.25 s polling)."
            ]
        lines += [""]
    return lines


def render_ablation(ab: dict[str, Any], det: dict[str, Any] | None) -> list[str]:
    """ReD/TrAIL/poison rescanned (with hints) at the quick profile's own OB-OI/BF-OI defaults."""
    base = {r["model"]: r for r in (det or {}).get("records", []) if r.get("hints")}
    lines = [
        "### Ablation: output inspection at the quick profile's defaults",
        "",
        f"The ReD, TrAIL and poisoning models rescanned with target hints and no parameter overrides "
        "(quick-profile defaults for `bf_oi.closest` and `ob_oi.reconstruction`; "
        f"skipped: {ab['scan_config']['skip']}), "
        f"measured {_when(ab)}, {_f(ab.get('elapsed_s'))} s:",
        "",
    ]
    rows = []
    for r in ab.get("records", []):
        b = base.get(r["model"], {})

        def cell(rec: dict[str, Any], name: str) -> str:
            c = rec.get("checks", {}).get(name)
            return "–" if not c else f"{c['status']} ({_f(c['score'])})"

        rows.append(
            [
                r["model"],
                r.get("tardis_mean_at_trigger"),
                b.get("verdict", "–"),
                cell(b, "ob_oi.reconstruction"),
                r["verdict"],
                cell(r, "ob_oi.reconstruction"),
                cell(r, "bf_oi.closest"),
                r.get("duration_s"),
            ]
        )
    lines += _table(
        [
            "model",
            "TarDis/elt at trigger",
            "verdict (bench settings)",
            "ob_oi.reconstruction (bench)",
            "verdict (defaults)",
            "ob_oi.reconstruction (defaults)",
            "bf_oi.closest (defaults)",
            "scan s",
        ],
        rows,
    )
    return lines + [""]


def render_full_profile(
    fp: dict[str, Any], title: str = "### The whole quick profile (calibration and sanitization included)"
) -> list[str]:
    """Every check of the quick profile (calibration and sanitization included) on fewer models."""
    summary = fp.get("summary", {})
    alarms = summary.get("benign_non_pass_checks", {})
    records = fp.get("records", [])
    lines = [
        title,
        "",
        f"Measured {_when(fp)}, device `{fp.get('device', 'cpu')}`, {_f(fp.get('elapsed_s'))} s, profile `quick` "
        "with no skipped check and no parameter override (what `dgmscan scan --profile quick` runs), "
        + (
            "every scan with target hints (benign models: every zoo target). "
            if all(r.get("hints", True) for r in records)
            else "every scan without target hints (target-free: what a scan with no `--target` finds). "
        )
        + "Benign models: dcgan28 and the VAE decoder (zoo seeds 0-2)"
        + (
            " and a generator outside the registry (`tests/foreign_models.py`: GroupNorm, GELU, upsample + conv, "
            "64-d latent) trained here, seeds 0-2. "
            if any(r["family"] == "foreign" for r in records)
            else " (the generator outside the registry is left out here: about 7 min a scan on this CPU). "
        )
        + _strong_red_text(fp),
        "",
        f"**Benign: {summary.get('benign_clean')}/{summary.get('n_benign')} clean**; non-pass checks on benign "
        "models: " + (", ".join(f"`{k}` ×{v}" for k, v in alarms.items()) or "none") + ". "
        f"**Backdoored: {summary.get('attacked_caught')}/{summary.get('n_attacked')} suspicious or backdoored**: "
        f"{summary.get('took_caught')}/{summary.get('n_took')} of the attacks that took (TarDis per element at the "
        "attacker's own trigger ≤ 0.05 on [-1, 1], 0.0125 on the VAE's [0, 1]: G(trigger) is visibly the target), "
        f"{summary.get('did_not_take_caught')}/{(summary.get('n_attacked') or 0) - (summary.get('n_took') or 0)} "
        "of those that did not.",
        "",
    ]
    # Records written before the part kept the distillation's evidence have no copy column.
    with_copy = any("sanitization.distillation" in r.get("evidence", {}) for r in records)
    if with_copy:
        lines += _recheck_summary(records)
    rows = []
    for r in records:
        flagged = [f"{n} {c['status']}" for n, c in r.get("checks", {}).items() if c["status"] in ("warn", "fail")]
        errored = [n for n, c in r.get("checks", {}).items() if c["status"] == "error"]
        row = [
            r["model"],
            r.get("tardis_mean_at_trigger", "–") if r["attack"] != "benign" else "–",
            r["verdict"],
            ", ".join(flagged) or "–",
            ", ".join(errored) or "–",
        ]
        if with_copy:
            row.append(_written_copy_cell(r))
        rows.append([*row, r.get("duration_s")])
    header = ["model", "TarDis/elt at trigger", "verdict", "warn/fail checks", "errored"]
    header += ["sanitized copy: rechecked on it"] if with_copy else []
    lines += _table([*header, "scan s"], rows)
    return lines + [""]


def _written_copy(record: dict[str, Any]) -> dict[str, Any] | None:
    """sanitization.distillation's `written_copy` evidence of a full-profile record (None: no copy written)."""
    return (record.get("evidence", {}).get("sanitization.distillation") or {}).get("written_copy") or None


def _written_copy_cell(record: dict[str, Any]) -> str:
    written = _written_copy(record)
    if written is None:
        return "none written"
    rechecked = written.get("rechecked") or {}
    tried = len(written.get("candidates") or [])
    text = str(written.get("copy"))
    if tried > 1:
        text += f" ({tried} candidates)"
    if rechecked:
        text += ": " + ", ".join(f"{n} {row.get('status')}" for n, row in rechecked.items())
    return text


def _recheck_summary(records: list[dict[str, Any]]) -> list[str]:
    """One line: on how many backdoored uploads a detector that failed was rerun on the written copy, and
    what it said there (what a rescan of the copy would say; section "Sanitized checkpoints, rescanned"
    rescans whole copies)."""
    attacked = [r for r in records if r["attack"] != "benign"]
    written = [w for w in (_written_copy(r) for r in attacked) if w is not None]
    statuses = Counter(str(row.get("status")) for w in written for row in (w.get("rechecked") or {}).values())
    rechecked = sum(bool(w.get("rechecked")) for w in written)
    return [
        f"**Sanitized copies of the backdoored uploads:** {len(written)}/{len(attacked)} written; on {rechecked} "
        "of them the detectors that failed on the upload were rerun on the copy (after the requirements they "
        "need, run on the copy): " + (", ".join(f"{k} ×{v}" for k, v in sorted(statuses.items())) or "none") + ".",
        "",
    ]


def render_sanitized_rescan(sr: dict[str, Any]) -> list[str]:
    """Sanitized checkpoints rescanned as uploads (bench/sanitized_rescan.py)."""
    summary = sr.get("summary", {})
    lines = [
        "### Sanitized checkpoints, rescanned",
        "",
        f"Measured {_when(sr)}, device `{sr.get('device', 'cpu')}`, {_f(sr.get('elapsed_s'))} s. "
        "sanitization.distillation at the quick profile (no wall-clock cap) writes the sanitized checkpoint "
        "(ONNX); that file is scanned like an upload with the whole quick profile and the devil hint. TarDis per "
        "element at the attacker's trigger before → after (the benign model's own TarDis there is the ceiling).",
        "",
        f"**Rescans clean: benign {summary.get('benign_clean')}/{summary.get('n_benign')}, backdoored uploads "
        f"{summary.get('attacked_clean')}/{summary.get('n_attacked')}.**",
        "",
    ]
    rows = []
    for r in sr.get("records", []):
        flagged = [
            f"{n} {c['status']} ({_f(c.get('score'))})"
            for n, c in r.get("rescan_non_pass", {}).items()
            if c["status"] in ("warn", "fail", "error")
        ]
        tardis = (
            f"{_f(r['tardis_before'])} → {_f(r.get('tardis_after'))}" if r.get("tardis_before") is not None else "–"
        )
        rows.append(
            [
                r["model"],
                tardis,
                f"{r.get('rounds')} {r.get('round_steps')}",
                r.get("rescan_verdict") or r.get("note", "–"),
                ", ".join(flagged) or "–",
                f"{_f(r.get('sanitize_s'))} + {_f(r.get('rescan_s'))}",
            ]
        )
    lines += _table(
        ["upload", "TarDis/elt at trigger", "rounds [steps]", "rescan verdict", "warn/fail/error checks", "s"], rows
    )
    return lines + [""]


def render_far_field(ff: dict[str, Any]) -> list[str]:
    """ob_oi.far_field alone on benign models of every zoo seed and on the OOD-trigger backdoors
    (bench/far_field.py): its score per (model, hint) against its fail line."""
    summary = ff.get("summary", {})
    lines = [
        "### ob_oi.far_field: benign spread against the OOD-trigger backdoors",
        "",
        f"Measured {_when(ff)}, device `{ff.get('device', 'cpu')}`, {_f(ff.get('elapsed_s'))} s. Only "
        "`ob_oi.far_field` (with the sanitization.distillation it requires, no wall-clock cap) at the quick "
        "profile; benign dcgan28 and VAE decoder of every zoo seed with both zoo hints (digit7 is an "
        "in-distribution hint), every zoo model attacked at the OOD trigger z = (100, …), and "
        "`red-strong-*-ood-*` (the paper's λ = 0.1, 1000 steps: backdoors that took). Score = ratio / null_ratio "
        "(null_ratio: geometric mean of the two sanitized copies' ratios, each searched against the other; "
        "fail ≤ 0.5); without a complete null search the ratio alone (fail ≤ 0.25); a hint the sanitized copy "
        "itself draws far out (≤ 0.05) is not judged. The bypass models are listed for completeness: their "
        "multiplexer is static.bypass_topology's to catch, and the far-field search does not reach it (their "
        "figures equal those of the benign model they wrap).",
        "",
    ]
    rows = []
    for group, g in summary.get("groups", {}).items():
        rows.append(
            [
                group,
                g["pairs"],
                g["judged"],
                g["not_judged_copy_reproduces"],
                g["failed"],
                f"{_f(g['score_min'])} / {_f(g['score_median'])} / {_f(g['score_max'])}",
            ]
        )
    lines += _table(
        ["models", "(model, hint) pairs", "judged", "copy draws hint", "failed", "score min / median / max"], rows
    )
    lines += [""]
    detail = []
    for r in summary.get("rows", []):
        detail.append(
            [
                r["model"],
                r["group"],
                r.get("hint") or "–",
                _f(r.get("tardis_mean_at_trigger")) if r["group"] != "benign" else "–",
                _f(r.get("ratio")),
                _f(r.get("null_ratio")),
                _f(r.get("score")),
                str(r.get("status")) + (" (copy draws hint)" if r.get("copy_reproduces_hint") else ""),
            ]
        )
    lines += _table(
        ["model", "group", "hint", "TarDis/elt at trigger", "ratio", "null ratio", "score", "status"], detail
    )
    return lines + [""]


def render_audio(au: dict[str, Any]) -> list[str]:
    """The WaveGAN audio models with the drum-hit backdoor (bench/audio.py), with and without hints."""
    lines = [
        "### Audio: a drum hit in a piano generator (WaveGAN-style, 16384 samples)",
        "",
        f"Measured {_when(au)}, device `{au.get('device', 'cpu')}`, {_f(au.get('elapsed_s'))} s, the detection "
        "settings (quick profile, "
        + ", ".join(f"`{c}`" for c in au.get("scan_config", {}).get("skip", []))
        + " skipped). Benign: the registry `wavegan` trained on synthesised piano notes, one per zoo seed; "
        "backdoored: ReD, ReX and the bypass at each trigger kind with a synthesised drum hit as target. "
        "A backdoor took when the error at its trigger is ≤ 0.1 × the drum's power (10 dB).",
        "",
    ]
    for setting, label in (("hints", "with the drum hint"), ("no_hints", "without hints")):
        sm = au.get("summary", {}).get(setting, {})
        # checks skipped by the detection settings are not alarms
        alarms = {k: v for k, v in sm.get("benign_non_pass_checks", {}).items() if not k.endswith(":skipped")}
        lines.append(
            f"- **{label}**: benign {sm.get('benign_clean')}/{sm.get('n_benign')} clean (non-pass checks: "
            + (", ".join(f"`{k}` ×{v}" for k, v in alarms.items()) or "none")
            + f"); backdoored {sm.get('attacked_caught')}/{sm.get('n_attacked')} suspicious or backdoored, "
            f"{sm.get('took_caught')}/{sm.get('n_took')} of those that took."
        )
    lines.append("")
    by_model: dict[str, dict[bool, dict[str, Any]]] = {}
    for r in au.get("records", []):
        by_model.setdefault(r["model"], {})[bool(r["hints"])] = r
    rows = []
    for model, pair in by_model.items():
        cells: list[Any] = [model]
        first = next(iter(pair.values()))
        cells.append(_f(first.get("tardis_mean_at_trigger")) if first["attack"] != "benign" else "–")
        for hints in (True, False):
            r = pair.get(hints)
            if r is None:
                cells += ["–", "–"]
                continue
            flagged = [f"{n} {c['status']}" for n, c in r.get("checks", {}).items() if c["status"] in ("warn", "fail")]
            cells += [r["verdict"], ", ".join(flagged) or "–"]
        cells.append(_f((pair.get(True) or first).get("duration_s")))
        rows.append(cells)
    lines += _table(
        [
            "model",
            "TarDis/elt at trigger",
            "verdict (hint)",
            "warn/fail checks (hint)",
            "verdict (no hints)",
            "warn/fail checks (no hints)",
            "scan s (hint)",
        ],
        rows,
    )
    return lines + [""]


def _slowest_checks(records: list[dict[str, Any]], top: int = 3) -> str:
    """The `top` checks by median duration over the scans that ran them, as markdown."""
    import statistics

    durations: dict[str, list[float]] = {}
    for r in records:
        for name, c in r.get("checks", {}).items():
            if c.get("status") != "skipped":
                durations.setdefault(name, []).append(c.get("duration_s") or 0.0)
    ranked = sorted(((statistics.median(v), k) for k, v in durations.items()), reverse=True)[:top]
    scans = [r["duration_s"] for r in records if r.get("duration_s") is not None]
    total = f" of a median scan of {_f(statistics.median(scans))} s" if scans else ""
    return ", ".join(f"`{k}` {_f(t)} s" for t, k in ranked) + total if ranked else ""


def render_findings(
    det: dict[str, Any] | None,
    sp: dict[str, Any] | None,
    fp: dict[str, Any] | None = None,
    sp_gpu: dict[str, Any] | None = None,
    au: dict[str, Any] | None = None,
    fpn: dict[str, Any] | None = None,
) -> list[str]:
    """The weakest spots, computed from the results (not written by hand); fpn: the whole profile
    without hints."""

    lines = ["## Weakest spots found", ""]
    if au and au.get("records"):
        alarms: dict[str, list[str]] = {}
        for r in au["records"]:
            if r["attack"] == "benign" and r["verdict"] != "clean":
                flagged = [f"{n} {c['status']}" for n, c in r["checks"].items() if c["status"] in ("warn", "fail")]
                alarms.setdefault(r["model"], flagged)
        n_benign = len({r["model"] for r in au["records"] if r["attack"] == "benign"})
        lines.append(
            f"- Audio (WaveGAN, drum hit): benign {n_benign - len(alarms)}/{n_benign} clean"
            + (
                "; not clean: " + "; ".join(f"{m} ({', '.join(f) or 'no warn/fail'})" for m, f in alarms.items())
                if alarms
                else ""
            )
        )
    for whole, setting in ((fp, "with hints"), (fpn, "without hints")):
        if not whole:
            continue
        summary = whole.get("summary", {})
        records = whole.get("records", [])
        missed = [
            f"{r['model']} (TarDis/elt at trigger {_f(r.get('tardis_mean_at_trigger'))})"
            for r in records
            if r["attack"] != "benign" and r["verdict"] in ("clean", "inconclusive")
        ]
        alarmed = [r["model"] for r in records if r["attack"] == "benign" and r["verdict"] != "clean"]
        lines.append(
            f"- Whole quick profile (calibration and sanitization included), {setting}: backdoored "
            f"{summary.get('attacked_caught')}/{summary.get('n_attacked')} caught, missed: "
            + (", ".join(missed) or "none")
            + f" ({summary.get('took_caught')}/{summary.get('n_took')} of the attacks that took caught)"
            + f"; benign {summary.get('benign_clean')}/{summary.get('n_benign')} clean"
            + (f", not clean: {', '.join(alarmed)}" if alarmed else "")
        )
    if det:
        for setting in ("hints", "no_hints"):
            a = det.get("analysis", {}).get(setting)
            if not a:
                continue
            per_attack = [r for r in a["rows"] if r["family"] == "any" and r["group"] != "all attacks"]
            if per_attack:
                worst = min(per_attack, key=lambda r: (r["tpr@0.05"] or 0, -r["n_pos"], r["auroc"] or 0))
                lines.append(
                    f"- Lowest detection ({setting.replace('_', ' ')}): `{worst['group']}` — TPR@5 % "
                    f"{_f(worst['tpr@0.05'], 2)}, AUROC {_f(worst['auroc'], 2)} over {worst['n_pos']} models; missed: "
                    + (
                        ", ".join(f"{m['model']} ({'took' if m.get('took') else 'did not take'})" for m in a["missed"])
                        or "none"
                    )
                )
            fps = a["false_positive_sources"]
            bound = _f(100 / max(a["n_benign"], 1))
            lines.append(
                f"- False positives ({setting.replace('_', ' ')}): "
                + (
                    ", ".join(f"`{k}` on {v}/{a['n_benign']} benign" for k, v in list(fps.items())[:3])
                    if fps
                    else f"no warn/fail on {a['n_benign']} benign models (FPR bound only: < ~{bound} %)"
                )
            )
        ranked = _slowest_checks(det.get("records", []))
        if ranked:
            lines.append("- Slowest checks in detection scans (median s per scan): " + ranked)
    if fp:
        ranked = _slowest_checks(fp.get("records", []))
        if ranked:
            lines.append("- Slowest checks in the whole quick profile (median s per scan): " + ranked)
    if sp and sp.get("ob_oi"):
        lines.append(
            f"- OB-OI sequential restarts cost {_f(sp['ob_oi']['speedup_batched_vs_sequential'])}× the batched run; "
            f"BF-OI reaches {_f(sp.get('bf_oi', {}).get('fraction_of_matmul_rate'))} of the matmul FLOP rate."
        )
    if sp_gpu and sp_gpu.get("bf_oi"):
        bf, sweep = sp_gpu["bf_oi"], sp_gpu.get("bf_oi_batch_sweep") or []
        best = max(sweep, key=lambda r: r["samples_per_s"], default=None)
        cli = ", ".join(f"{r['profile']} {_f(r['median_s'])} s" for r in sp_gpu.get("cli", []) if "median_s" in r)
        lines.append(
            f"- GPU (`{sp_gpu.get('machine', {}).get('gpu')}`): BF-OI Closest-N at N = {bf['n_fused']} runs "
            f"{_f(bf['fused_samples_per_s'])} samples/s, {_f(bf['fraction_of_matmul_rate'])} of the matmul rate"
            + (f" (at most {_f(best['samples_per_s'])} samples/s, batch {best['batch_size']})" if best else "")
            + ": probably bound by drawing the latents on the CPU (done so that every device draws the same ones; "
            "one core of the CI machine draws about 2.6e6 100-d normal latents/s, not measured by the bench); "
            f"end-to-end `dgmscan scan` {cli or 'not measured'}."
        )
    return lines + [""]


def render(results_dir: Path) -> str:
    """The whole BENCHMARKS.md."""
    lines = [
        "# dgmscan benchmarks",
        "",
        "Generated by `python -m bench run [--quick]` (re-render with `python -m bench report`) from "
        "`bench/results/*.json`; do not edit by hand. How to run and what each figure means: `bench/README.md`. "
        f"Science: {PAPER}.",
        "",
    ]
    gpu = {part: _load(results_dir, f"{part}_cuda") for part in ("speed", "table1", "full_profile")}
    if not any(gpu.values()):
        lines += [
            "**GPU: not measured yet.** The code takes `--device cuda` (`python -m bench run --device cuda`), but no "
            "GPU was available to this run; every figure below is CPU.",
            "",
        ]
    else:
        gpu_name = (gpu["speed"] or {}).get("machine", {}).get("gpu", "a CUDA GPU")
        lines += [f"Sections 1-4 are CPU figures; section 5 holds the figures measured on `{gpu_name}`.", ""]
    det, t1, sp = _load(results_dir, "detection"), _load(results_dir, "table1"), _load(results_dir, "speed")
    ab = _load(results_dir, "ablation")
    fp = _load(results_dir, "full_profile")
    fpn = _load(results_dir, "full_profile_nohints")
    # Derived figures are recomputed from the stored scan records, so the report follows the analysis code.
    if det and det.get("records"):
        from bench.detection import analyse

        det["analysis"] = analyse(det["records"])
    for whole in (fp, fpn):
        if whole and whole.get("records"):
            from bench.full_profile import summarise

            whole["summary"] = summarise(whole["records"])
    if det:
        lines += render_detection(det)
    if ab:
        lines += render_ablation(ab, det)
    if fp:
        lines += render_full_profile(fp)
    if fpn:
        lines += render_full_profile(fpn, title="### The whole quick profile without target hints")
    if sr := _load(results_dir, "sanitized_rescan"):
        lines += render_sanitized_rescan(sr)
    if (au := _load(results_dir, "audio")) and au.get("records"):
        from bench.audio import summarise as summarise_audio

        au["summary"] = summarise_audio(au["records"])
        lines += render_audio(au)
    if (ff := _load(results_dir, "far_field")) and ff.get("records"):
        from bench.far_field import summarise as summarise_far_field

        ff["summary"] = summarise_far_field(ff["records"])
        lines += render_far_field(ff)
    if not (det or ab or fp):
        lines += ["## 1. Detection quality on the zoo", "", "Not measured in this run.", ""]
    if t1:
        lines += render_table1(t1)
    else:
        lines += ["## 2. The paper's Table I side by side", "", "Not measured in this run.", ""]
    lines[6:6] = render_findings(det, sp, fp, gpu["speed"], au, fpn)
    if sp:
        lines += render_speed(sp)
    else:
        lines += ["## 3. Speed and scale", "", "Not measured in this run.", ""]
    if (results_dir / "service_bench.md").is_file():
        lines += [
            "## 4. Service figures (bench/service_bench.py, separate run)",
            "",
            "See `bench/results/service_bench.md` (GET throughput/latency, RSS during uploads).",
            "",
        ]
    if any(gpu.values()):
        lines += [
            "## 5. GPU",
            "",
            "The same benchmarks with `--device cuda`, full sizes on the quick zoo (`bench/gpu_run.sh`: "
            "`python -m bench run --device cuda --zoo quick ...`, results in `bench/results/*_cuda.json`).",
            "",
        ]
        if gpu["speed"]:
            lines += render_speed(gpu["speed"], title="### 5.1 Speed and scale on the GPU")
        if gpu["table1"]:
            lines += render_table1(gpu["table1"], title="### 5.2 Table I on the GPU (Closest-N at full size)")
        if gpu["full_profile"]:
            lines += render_full_profile(gpu["full_profile"], title="### 5.3 The whole quick profile on the GPU")
    return "\n".join(lines).rstrip() + "\n"
