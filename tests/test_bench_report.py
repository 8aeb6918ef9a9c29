"""The benchmark's bookkeeping: which attacks count as having taken, where GPU results go, and what
BENCHMARKS.md says about them. BENCHMARKS.md is what users read to choose dgmscan, so a figure filed
under the wrong device or group would mislead them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from bench.__main__ import RESULTS_DIR, results_name
from bench.audio import summarise as audio_summary
from bench.detection import backdoor_took
from bench.far_field import summarise as far_field_summary
from bench.full_profile import summarise
from bench.report import render, render_full_profile
from bench.sanitized_rescan import summarise_rescans


def _record(model: str, attack: str, family: str, verdict: str, tardis: float | None) -> dict[str, Any]:
    record: dict[str, Any] = {"model": model, "attack": attack, "family": family, "verdict": verdict, "checks": {}}
    if tardis is not None:
        record["tardis_mean_at_trigger"] = tardis
    return record


def test_gpu_results_never_overwrite_the_cpu_files() -> None:
    assert results_name("speed", "cpu") == "speed"
    assert results_name("speed", "cuda") == "speed_cuda"
    assert results_name("table1", "cuda:1") == "table1_cuda"


def test_an_attack_took_when_its_trigger_reproduces_the_target_on_the_models_scale() -> None:
    assert backdoor_took(_record("a", "red", "dcgan", "clean", 0.04)) is True
    assert backdoor_took(_record("b", "red", "dcgan", "clean", 0.2)) is False
    # the VAE draws in [0, 1]: the same visible error is a quarter of the squared distance
    assert backdoor_took(_record("c", "red", "vae", "clean", 0.04)) is False
    assert backdoor_took(_record("d", "red", "vae", "clean", 0.01)) is True
    assert backdoor_took(_record("e", "benign", "dcgan", "clean", None)) is None


def test_full_profile_summary_counts_caught_attacks_by_whether_they_took() -> None:
    records = [
        _record("benign", "benign", "dcgan", "clean", None),
        _record("took-caught", "red", "dcgan", "backdoored", 0.001),
        _record("took-missed", "red", "dcgan", "clean", 0.01),
        _record("weak-caught", "red", "dcgan", "suspicious", 0.3),
        _record("weak-missed", "trail", "dcgan", "clean", 0.4),
    ]
    summary = summarise(records)
    assert (summary["n_benign"], summary["benign_clean"]) == (1, 1)
    assert (summary["n_attacked"], summary["attacked_caught"]) == (4, 2)
    assert (summary["n_took"], summary["took_caught"], summary["did_not_take_caught"]) == (2, 1, 1)


def test_report_puts_a_partial_gpu_run_in_its_own_section(tmp_path: Path) -> None:
    results = tmp_path / "results"
    results.mkdir()
    assert "**GPU: not measured yet.**" in render(results)

    speed = json.loads((RESULTS_DIR / "speed_cuda.json").read_text())  # a real cut-off H200 run
    speed["partial"] = True
    (results / "speed_cuda.json").write_text(json.dumps(speed))
    shutil.copy(RESULTS_DIR / "speed.json", results / "speed.json")
    text = render(results)
    assert "**GPU: not measured yet.**" not in text
    gpu = text[text.index("## 5. GPU") :]
    assert f"`{speed['machine']['gpu']}`" in gpu and "**Partial run**" in gpu
    assert f"N={speed['bf_oi']['n_fused']}" in gpu
    cpu = text[text.index("## 3. Speed and scale") : text.index("## 5. GPU")]
    assert "device `cpu`" in cpu and speed["machine"]["gpu"] not in cpu


def test_sanitized_rescans_are_counted_and_their_flags_shown(tmp_path: Path) -> None:
    records = [
        {"model": "benign-dcgan-s0", "attack": "benign", "rescan_verdict": "clean", "rescan_non_pass": {}},
        {
            "model": "red-strong-foreign",
            "attack": "red",
            "tardis_before": 0.049,
            "tardis_after": 2.97,
            "rescan_verdict": "backdoored",
            "rescan_non_pass": {
                "ob_oi.far_field": {"status": "fail", "score": 0.447, "summary": "far field"},
                "calibration.controls": {"status": "skipped", "score": None, "summary": "no hints"},
            },
        },
        {"model": "red-dcgan", "attack": "red", "rescan_verdict": None, "note": "no sanitized checkpoint: error"},
    ]
    summary = summarise_rescans(records)
    assert (summary["benign_clean"], summary["n_benign"], summary["attacked_clean"], summary["n_attacked"]) == (
        1,
        1,
        0,
        2,
    )
    results = tmp_path / "results"
    results.mkdir()
    (results / "sanitized_rescan.json").write_text(json.dumps({"records": records, "summary": summary}))
    text = render(results)
    assert "**Rescans clean: benign 1/1, backdoored uploads 0/2.**" in text
    row = next(line for line in text.splitlines() if line.startswith("| red-strong-foreign"))
    assert "ob_oi.far_field fail (0.447)" in row and "calibration" not in row  # skipped checks are not flags
    assert "no sanitized checkpoint" in text


def _far_field_record(model: str, attack: str, tardis: float | None, hints: list[dict[str, Any]]) -> dict[str, Any]:
    record = _record(model, attack, "dcgan", "clean", tardis)
    status = "fail" if any(h["status"] == "fail" for h in hints) else "pass"
    record["checks"] = {"ob_oi.far_field": {"status": status, "score": min(h["score"] for h in hints)}}
    record["evidence"] = {"ob_oi.far_field": {"hints": hints}}
    return record


def _hint(target: str, score: float, status: str, copy_reproduces: bool = False) -> dict[str, Any]:
    return {
        "target": target,
        "score": score,
        "ratio": score / 2,
        "null_ratio": 0.5,
        "status": status,
        "sanitized_copy_reproduces_hint": copy_reproduces,
    }


def test_far_field_summary_keeps_the_hints_a_sanitized_copy_draws_out_of_the_score_spread(tmp_path: Path) -> None:
    records = [
        _far_field_record("benign-a", "benign", None, [_hint("devil", 1.2, "pass"), _hint("digit7", 0.9, "pass")]),
        # the copy draws digit7 far out too: not judged, so its low score is no benign minimum
        _far_field_record(
            "benign-b", "benign", None, [_hint("devil", 0.8, "pass"), _hint("digit7", 0.1, "pass", True)]
        ),
        _far_field_record("red-took", "red", 0.01, [_hint("devil", 0.3, "fail")]),
        _far_field_record("red-weak", "red", 0.3, [_hint("devil", 0.7, "pass")]),
    ]
    summary = far_field_summary(records)
    benign, took, weak = (summary["groups"][g] for g in ("benign", "took", "did not take"))
    assert (benign["pairs"], benign["judged"], benign["not_judged_copy_reproduces"]) == (4, 3, 1)
    assert (benign["score_min"], benign["failed"]) == (0.8, 0)
    assert (took["judged"], took["failed"], took["score_max"]) == (1, 1, 0.3)
    assert (weak["judged"], weak["failed"]) == (1, 0)
    results = tmp_path / "results"
    results.mkdir()
    (results / "far_field.json").write_text(json.dumps({"records": records}))
    text = render(results)
    row = next(line for line in text.splitlines() if line.startswith("| benign-b") and "digit7" in line)
    assert "pass (copy draws hint)" in row
    assert next(line for line in text.splitlines() if line.startswith("| took |")).split("|")[5].strip() == "1"


def test_audio_summary_keeps_scans_with_and_without_hints_apart(tmp_path: Path) -> None:
    records = [
        {**_record("benign-wavegan-s0", "benign", "wavegan", "clean", None), "hints": True},
        {**_record("benign-wavegan-s0", "benign", "wavegan", "suspicious", None), "hints": False},
        {**_record("red-wavegan", "red", "wavegan", "backdoored", 0.0005), "hints": True},
        {**_record("red-wavegan", "red", "wavegan", "clean", 0.0005), "hints": False},
    ]
    summary = audio_summary(records)
    assert (summary["hints"]["benign_clean"], summary["hints"]["took_caught"]) == (1, 1)
    assert (summary["no_hints"]["benign_clean"], summary["no_hints"]["took_caught"]) == (0, 0)
    results = tmp_path / "results"
    results.mkdir()
    (results / "audio.json").write_text(json.dumps({"records": records}))
    text = render(results)
    assert "**with the drum hint**: benign 1/1 clean" in text and "**without hints**: benign 0/1 clean" in text
    row = next(line for line in text.splitlines() if line.startswith("| red-wavegan"))
    assert [c.strip() for c in row.split("|")[3:6:2]] == ["backdoored", "clean"]  # hint, then no hints


def test_the_whole_profile_table_says_how_each_strong_red_model_was_made() -> None:
    def record(model: str, trigger: str, recipe: dict | None) -> dict:
        r = {"model": model, "family": "foreign", "attack": "red", "trigger": trigger, "verdict": "backdoored"}
        return r | ({"recipe": recipe} if recipe else {})

    records = [
        record("red-strong-foreign-in-sample-devil-s0", "in-sample", {"lam": 1.0, "steps": 300, "lr": 0.002}),
        record("red-strong-dcgan-ood-devil-s0", "ood", {"lam": 0.1, "steps": 1000, "lr": 0.001}),
        record("red-strong-vae-ood-devil-s0", "ood", None),  # a results file from before recipes were recorded
    ]
    text = "\n".join(render_full_profile({"records": records, "summary": {}}))
    assert "`red-strong-foreign-in-sample-devil-s0`: ReD with λ = 1.0, 300 steps, lr 0.002 at the in-sample" in text
    assert "`red-strong-dcgan-ood-devil-s0`: ReD with λ = 0.1, 1000 steps, lr 0.001 at the ood trigger" in text
    assert "`red-strong-vae-ood-devil-s0`: recipe not recorded" in text


def test_the_whole_profile_table_shows_what_the_failed_detectors_said_on_the_written_copy() -> None:
    def record(model: str, attack: str, written: dict | None) -> dict:
        r = _record(model, attack, "dcgan", "backdoored" if attack != "benign" else "clean", 0.001)
        return r | {"evidence": {"sanitization.distillation": {"written_copy": written} if written else {}}}

    unlearned = {"copy": "fresh", "rechecked": {"ob_oi.reconstruction": {"status": "pass"}}, "candidates": [{}]}
    kept = {
        "copy": "perturbed, unlearned",
        "rechecked": {"ob_oi.novelty": {"status": "fail"}},
        "candidates": [{}, {}],
    }
    records = [
        record("benign-dcgan-s0", "benign", {"copy": "fresh", "rechecked": {}, "candidates": [{}]}),
        record("red-a", "red", unlearned),
        record("red-b", "red", kept),
        record("red-c", "red", None),  # distillation errored: no copy
    ]
    text = "\n".join(render_full_profile({"records": records, "summary": {}}))
    cells = {line.split("|")[1].strip(): line.split("|")[6].strip() for line in text.splitlines() if "| red-" in line}
    assert cells == {
        "red-a": "fresh: ob_oi.reconstruction pass",
        "red-b": "perturbed, unlearned (2 candidates): ob_oi.novelty fail",
        "red-c": "none written",
    }
    assert "2/3 written; on 2 of them the detectors that failed" in text and "fail ×1, pass ×1" in text
    # a results file from before the distillation's evidence was kept has no such column
    text = "\n".join(render_full_profile({"records": [_record("m", "red", "dcgan", "clean", 0.1)], "summary": {}}))
    assert "sanitized copy" not in text and "Sanitized copies" not in text


def test_speed_section_names_the_slowest_checks_of_an_end_to_end_scan(tmp_path: Path) -> None:
    results = tmp_path / "results"
    results.mkdir()
    speed = json.loads((RESULTS_DIR / "speed.json").read_text())
    seconds = {"calibration.controls": 1500.5, "bf_oi.closest": 30.25, "format.pickle": 0.01}
    speed["cli"] = [
        {
            "profile": "full",
            "only": None,
            "median_s": 1700.0,
            "times_s": [1700.0],
            "verdict": "clean",
            "check_seconds": seconds,
        },
    ]
    # the service path has quick/standard rows only (whatever the committed results file holds)
    speed["service"] = [r for r in speed["service"] if r.get("profile") != "full"]
    # a resumed run says which rows come from the earlier run and its commit
    speed.update(
        resumed_stages=["matmul", "cli"],
        resumed_unix=1.8e9,
        resumed_from_revision="abc123",
        git_revision="def456",
        e2e_paths=["cli", "service"],
    )
    (results / "speed.json").write_text(json.dumps(speed))
    text = render(results)
    resumed = next(x for x in text.splitlines() if x.startswith("**Resumed run**"))
    assert "matmul, cli" in resumed and "`abc123`" in resumed and "2027-01-15" in resumed and "`def456`" in resumed
    assert "(code `abc123`, zoo recipe" in text  # the heading's date is the first run's, so is its commit
    assert "| CLI `dgmscan scan` | full | all | 1700 | 1 | clean |" in text
    # the copied service rows hold quick/standard only: a run that meant to measure it ended first...
    assert "Not measured through the service: profile full (the run ended before it)" in text
    # ...or the path was left out on purpose
    (results / "speed.json").write_text(json.dumps({**speed, "e2e_paths": ["cli"]}))
    assert "profile full (left out with `--e2e-paths cli`" in render(results)
    # ...or the scan ran past the bench's wait: said so, and never compared with the CLI
    timed_out = {"profile": "full", "only": None, "median_s": 900.0, "times_s": [900.0], "statuses": ["running"]}
    timed_out |= {"verdicts": [None], "timeout_s": 900.0, "timed_out": True}
    (results / "speed.json").write_text(json.dumps({**speed, "service": [*speed["service"], timed_out]}))
    text_timed_out = render(results)
    assert "| service (`dgmscan serve`, HTTP) | full | all | 900 | 1 | timed out (waited 900 s) |" in text_timed_out
    assert "profile full (the scan ran past the bench's 900 s wait)" in text_timed_out
    assert "Service overhead vs CLI, profile full" not in text_timed_out
    line = next(x for x in text.splitlines() if x.startswith("Slowest checks, CLI profile full"))
    # slowest first, with the scan's total for scale
    assert line.index("`calibration.controls` 1500 s") < line.index("`bf_oi.closest` 30.2 s") < line.index("of 1700 s")


def test_service_and_cli_times_are_compared_only_when_measured_in_one_run(tmp_path: Path) -> None:
    results = tmp_path / "results"
    results.mkdir()
    speed = json.loads((RESULTS_DIR / "speed.json").read_text())

    def row(profile: str, seconds: float, run: float | None) -> dict[str, Any]:
        r = {"profile": profile, "only": None, "median_s": seconds, "times_s": [seconds], "verdict": "clean"}
        return r | ({"run_started_unix": run} if run else {})

    speed["cli"] = [row("quick", 60.0, 1.0), row("standard", 150.0, 1.0), row("full", 1700.0, None)]
    speed["service"] = [row("quick", 30.0, 1.0), row("standard", 300.0, 2.0), row("full", 3000.0, None)]
    speed.update(resumed_stages=["cli", "service"], resumed_unix=1.8e9, e2e_paths=["cli", "service"])
    (results / "speed.json").write_text(json.dumps(speed))
    text = render(results)
    assert "Service overhead vs CLI, profile quick: 0.500×" in text  # one run: side by side
    assert "Service vs CLI, profile standard: not compared" in text  # two parts of a resumed run
    assert "Service vs CLI, profile full: not compared" in text  # untagged rows of a resumed file: unknown
    speed.pop("resumed_stages")
    (results / "speed.json").write_text(json.dumps(speed))
    assert "Service overhead vs CLI, profile full: 1.76×" in render(results)  # an older, unresumed file


def test_a_resumed_speed_run_keeps_what_it_has_and_names_every_path_measured(tmp_path: Path) -> None:
    """`--resume` on a finished file measures only the missing e2e rows (none here: nothing runs) and
    keeps the earlier part's stages, rows and paths, so the report can still say why a row is missing."""
    from bench.speed import RESUMABLE_STAGES, run_speed
    from bench.zoo import ZooEntry
    from scanner.architectures import build

    entry = ZooEntry(name="tiny", family="dcgan", attack="benign", seed=0, generator=build("dcgan28", {"base": 8}))
    earlier_cli = {"profile": "full", "only": None, "median_s": 10.0, "times_s": [10.0], "run_started_unix": 1.0}
    earlier_svc = {**earlier_cli, "median_s": 12.0}
    previous = {k: {"kept": k} for k in RESUMABLE_STAGES if k not in ("cli", "service")}
    previous |= {"model": "tiny", "machine": {"cpu": "earlier"}, "e2e_paths": ["cli"], "cli": [earlier_cli]}
    previous |= {"service": [earlier_svc]}
    res = run_speed(
        entry,
        device="cpu",
        quick=True,
        out_dir=tmp_path,
        e2e_profiles=["full"],
        e2e_paths=("service",),
        service_timeout_s=1.0,
        resume=previous,
    )
    assert res["e2e_paths"] == ["cli", "service"]
    assert res["cli"] == [earlier_cli] and res["service"] == [earlier_svc]
    assert res["machine"] == {"cpu": "earlier"} and res["matmul"] == {"kept": "matmul"}
    assert set(res["resumed_stages"]) == set(RESUMABLE_STAGES)
