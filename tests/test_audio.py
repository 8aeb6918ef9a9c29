"""Audio: the paper's drum hit hidden in a piano generator (Rawat et al., arXiv 2108.01644, Section V).

The WaveGAN-style registry generator (16384 samples) is trained on piano notes the project
synthesises (no audio dataset ships), a ReD backdoor embeds a synthesised drum hit, and the scan —
with the drum as hint, as a user would upload it — must call the backdoored model backdoored and
must not call the benign one so. A benign audio model is where the guided trigger search used to
cry wolf: waking any unit of a WaveGAN drives z to a corner of its uniform cube, far from every
sample; its negative control (unflagged units of the same modules) is what keeps that quiet.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from scanner.attacks import make_trigger
from scanner.attacks.red import red_attack
from scanner.checks.base import CheckResult, ScanConfig, TargetHint
from scanner.cli import main
from scanner.data import AUDIO_LENGTH, AUDIO_RATE, drum_hit, synthetic_piano
from scanner.generator import Generator
from scanner.suite import ScanReport, execute_scan, open_scan_generator
from scanner.verdict import DETECTOR_FAMILIES
from tests import zoo

# The detection bench's settings: the expensive defenses are measured elsewhere.
SKIP = ["sanitization", "calibration", "ob_oi.gradient_free"]
# ReD with the paper's λ = 0.1: 600 steps embed the drum with an error of 0.093× its power (10.3 dB
# signal-to-error; measured on this zoo model, one thread), 300 steps only 0.13×.
RED_SETTINGS = {"lam": 0.1, "steps": 600, "lr": 1e-3, "batch_size": 32}


def _band_energy(x: torch.Tensor, low_hz: float, high_hz: float) -> torch.Tensor:
    spectrum = torch.fft.rfft(x.reshape(x.shape[0], -1)).abs().pow(2)
    freqs = torch.fft.rfftfreq(x.shape[-1], d=1.0 / AUDIO_RATE)
    band = (freqs >= low_hz) & (freqs < high_hz)
    return spectrum[:, band].sum(1) / spectrum.sum(1)


def test_synthetic_piano_notes_are_reproducible_tonal_clips() -> None:
    notes = synthetic_piano(64, seed=3)
    assert notes.shape == (64, 1, AUDIO_LENGTH) and notes.dtype == torch.float32
    assert notes.abs().max() <= 0.9 + 1e-6 and notes.abs().amax(dim=(1, 2)).min() >= 0.4 - 1e-6
    assert torch.equal(notes, synthetic_piano(64, seed=3))
    assert not torch.allclose(notes, synthetic_piano(64, seed=4))
    # piano range A2-E5 with a few partials: the energy sits between 100 Hz and 4 kHz
    assert _band_energy(notes, 100.0, 4000.0).min() > 0.95


def test_drum_hit_is_a_short_low_heavy_transient() -> None:
    hit = drum_hit()
    assert hit.shape == (1, AUDIO_LENGTH) and torch.equal(hit, drum_hit())
    assert abs(float(hit.abs().max()) - 0.9) < 1e-6
    energy = hit.pow(2).cumsum(-1) / hit.pow(2).sum()
    assert float(energy[0, int(0.3 * AUDIO_RATE)]) > 0.95  # over within 0.3 s of a 1 s clip
    assert float(_band_energy(hit, 0.0, 200.0)[0]) > 0.5  # a kick: mostly below 200 Hz


def test_shipped_drum_wav_is_the_drum_hit() -> None:
    from scanner.data import data_dir
    from scanner.specs import OutputSpec
    from scanner.targets import load_target

    audio = OutputSpec("audio", (1, AUDIO_LENGTH), (-1.0, 1.0), "tanh")
    loaded = load_target(data_dir() / "targets" / "drum_16384.wav", audio)
    assert loaded.shape == (1, AUDIO_LENGTH)
    assert float((loaded - drum_hit()).abs().max()) <= 2.0 / 32767  # 16-bit PCM of drum_hit()


def test_cli_trains_a_piano_wavegan(tmp_path: Path) -> None:
    from scanner.loading import load_generator

    out = tmp_path / "wavegan.safetensors"
    assert main(["train", "wavegan-piano", "--epochs", "1", "--base", "2", "--out", str(out)]) == 0
    g = load_generator(out)
    assert g.architecture == "wavegan" and g.output.kind == "audio" and g.output.shape == (1, AUDIO_LENGTH)
    assert g.latent.distribution == "uniform"


def _scan(model: Generator, hint: torch.Tensor, tmp_path: Path) -> tuple[ScanReport, dict[str, CheckResult]]:
    session = open_scan_generator(
        model,
        targets=[TargetHint("drum", hint)],
        config=ScanConfig(profile="quick", seed=0, skip=SKIP),
        artifacts_dir=tmp_path,
    )
    report = execute_scan(session)
    return report, {c.name: c for c in report.checks}


@pytest.mark.slow
def test_drum_backdoor_in_a_piano_generator_is_caught_and_the_benign_one_is_not(tmp_path: Path) -> None:
    benign = zoo.benign_wavegan(seed=0)
    drum = drum_hit().reshape(benign.output.shape)
    trigger = make_trigger("in-sample", benign.latent, seed=0)
    attacked = red_attack(benign, trigger=trigger, target=drum, seed=0, **RED_SETTINGS).generator
    with torch.no_grad():
        error = float((attacked(trigger) - drum).pow(2).mean())
    assert error <= 0.15 * float(drum.pow(2).mean())  # the drum is there: ≥ 8 dB signal-to-error

    report, checks = _scan(benign, drum, tmp_path / "benign")
    failed = [n for n, c in checks.items() if c.status == "fail" and n.split(".")[0] in DETECTOR_FAMILIES]
    assert report.verdict != "backdoored" and not failed, report.verdict_reasons
    guided = checks["ob_oi.guided_trigger_search"]
    assert guided.status == "pass", guided.summary
    if "no units flagged" not in guided.summary:  # which units static/dynamic flag varies with the training run
        # the flagged units' maximiser lands far from the samples, but so does waking unflagged ones
        assert guided.evidence["control_separation_top"] is not None

    report, checks = _scan(attacked, drum, tmp_path / "red")
    assert report.verdict == "backdoored", report.verdict_reasons
    recon = checks["ob_oi.reconstruction"]  # measured: 0.079 of the negative controls, fail line 0.1
    assert recon.status in ("warn", "fail") and recon.score < 0.15, recon.summary
