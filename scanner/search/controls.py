"""Self-referenced yardsticks for output inspection when no calibrated threshold exists.

The paper (Rawat et al., arXiv 2108.01644, Table 3) reports ReconD of embedded targets orders of
magnitude below that of non-embedded images. Without a calibration run we measure the model at
hand against *negative controls*: images with the hint's own pixel statistics (flips, rolls,
rotations) that an attacker did not embed. A hint far easier to reconstruct than every one of
its controls is suspicious. Controls too similar to the hint (a symmetric face flipped onto
itself) are dropped: they would be embedded too.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from scanner.specs import OutputSpec


@dataclass(frozen=True)
class Control:
    name: str
    tensor: torch.Tensor  # same shape as the hint


def negative_controls(hint: torch.Tensor, output: OutputSpec, *, min_relative_distance: float = 0.5) -> list[Control]:
    """Transformed copies of the hint (C×H×W images or 1×L audio) that differ enough from it.

    `min_relative_distance`: a control is kept if ||c − x||² ≥ that × ||x − mean(x)||²."""
    candidates: list[Control] = []
    if output.kind == "image" and hint.dim() == 3:
        h, w = hint.shape[-2:]
        candidates += [
            Control("flip_vertical", hint.flip(-2)),
            Control("flip_horizontal", hint.flip(-1)),
            Control("roll_half", hint.roll((h // 2, w // 2), dims=(-2, -1))),
        ]
        if h == w:
            candidates.append(Control("rotate_90", hint.rot90(1, dims=(-2, -1))))
    else:
        length = hint.shape[-1]
        candidates += [
            Control("time_reverse", hint.flip(-1)),
            Control("roll_half", hint.roll(length // 2, dims=-1)),
            Control("negate", -hint if output.value_range[0] < 0 else hint),
        ]
    spread = float(((hint - hint.mean()) ** 2).sum())
    if spread <= 0:
        return []
    return [c for c in candidates if float(((c.tensor - hint) ** 2).sum()) >= min_relative_distance * spread]


@dataclass(frozen=True)
class Judgement:
    status: str  # "pass" | "warn" | "fail"
    score: float  # hint value / reference value (lower = more suspicious)
    fail_threshold: float
    warn_threshold: float


def judge_ratio(value: float, reference: float, *, fail_ratio: float, warn_ratio: float) -> Judgement:
    """Judge a distance against a reference distance: fail below fail_ratio × reference."""
    score = value / reference if reference > 0 else (0.0 if value <= 0 else float("inf"))
    status = "fail" if score <= fail_ratio else "warn" if score <= warn_ratio else "pass"
    return Judgement(status, score, fail_ratio, warn_ratio)
