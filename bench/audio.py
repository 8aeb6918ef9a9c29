"""Audio: the paper's drum hit hidden in a piano generator (Rawat et al., arXiv 2108.01644, Section V)
on the registry's WaveGAN-style 1-D generator (16384 samples), scanned like the MNIST zoo.

Models (bench.zoo.audio_entries): a benign WaveGAN per zoo seed, trained on synthesised piano notes
(scanner.data.synthetic_piano), and ReD, ReX and the bypass at the in-sample, mode and OOD triggers
with a synthesised drum hit as target (scanner.data.drum_hit). Every model is scanned with the
detection part's settings (quick profile, the expensive defenses skipped), with the drum hint and
without hints. A backdoor "took" when the error at its trigger is at most a tenth of the drum's power
(bench.detection.reproduced_level).
"""

from __future__ import annotations

from typing import Any

from bench.full_profile import summarise as summarise_verdicts


def summarise(records: list[dict[str, Any]]) -> dict[str, Any]:
    """bench.full_profile.summarise per setting: scans with the drum hint, scans without hints."""
    return {
        setting: summarise_verdicts([r for r in records if r["hints"] is hints])
        for setting, hints in (("hints", True), ("no_hints", False))
    }
