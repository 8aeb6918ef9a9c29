"""Recovery of hidden block structure in weight matrices (ReX, Rawat et al. 2108.01644 §IV-B).

ReX ("retraining with expansion") adds units to hidden layers of a pre-trained generator and
trains only the new weights. To keep the original computation intact, one direction of
cross-group weights is exactly (or nearly) zero: the original units receive nothing from the
new units (or, equivalently up to naming, one group receives nothing from the other). For a layer
with weight matrix W (out_units × in_units) that means a *zero block* W[R, C] ≈ 0 where R is a
proper subset of the output units and C a proper subset of the input units — under some unknown
permutation of both, so unit order carries no information.

A dense trained (or freshly initialised) layer has near-zero entries only sporadically, at a base
rate p0. We therefore (1) mark entries near zero relative to the layer's own RMS, (2) search for
the largest all-near-zero rectangle R × C by alternating row/column refinement from
Otsu-thresholded seeds (order-free), and (3) score it with a scan statistic: the binomial tail
probability of seeing that many near-zero entries in |R|·|C| cells at the base rate p0 measured
outside the block, Bonferroni-corrected over all 2^(m+n) row/column subsets. The score is in bits:
``bits = −log2 P(block | dense) − (m + n)``; bits > 20 means p < 1e-6 after correction.

Units (rows / columns) whose weights are entirely near zero are "dead" (never read / never
written), reported separately and excluded from the block search (pruned benign models have them).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import stats

from scanner.generator import LayerInfo

# Near zero: |w| ≤ rel_eps × the layer RMS. Several thresholds are tried (the best block wins, with
# a Bonferroni charge of log2(len(grid)) bits), so a zero block hidden under small noise is still
# found, while the scan statistic prices in the higher base rate of larger thresholds.
DEFAULT_REL_EPS: tuple[float, ...] = (0.02, 0.05, 0.1, 0.2)
DEFAULT_TOL = 0.02  # a block may contain up to 2% entries above the near-zero threshold
DEFAULT_MIN_BITS = 20.0  # ≈ p < 1e-6 after Bonferroni over all row/column subsets


@dataclass
class ZeroBlock:
    """A near-zero rectangle W[rows, cols] and its significance."""

    rows: np.ndarray  # output units of the layer that receive nothing from `cols`
    cols: np.ndarray  # input units whose outputs `rows` never read
    bits: float  # evidence against "dense layer" (see module docstring)
    base_rate: float  # near-zero rate outside the block
    zero_fraction: float  # near-zero fraction inside the block
    energy_fraction: float  # ||W[rows, cols]||² / ||W||²
    rel_eps: float  # the near-zero threshold (× layer RMS) the block was found at
    dead_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=int))
    dead_cols: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=int))


def near_zero_mask(w_abs: np.ndarray, rel_eps: float) -> np.ndarray:
    """Entries at most rel_eps × RMS(W). The RMS is dominated by the non-zero entries, so a large
    zero block does not drag the threshold down the way a median would."""
    rms = float(np.sqrt(np.mean(np.square(w_abs, dtype=np.float64)))) if w_abs.size else 0.0
    if not math.isfinite(rms) or rms == 0.0:
        return np.ones_like(w_abs, dtype=bool)
    return w_abs <= rel_eps * rms


def _otsu_threshold(values: np.ndarray) -> float:
    """Threshold maximising between-class variance of a 1-D sample (Otsu 1979)."""
    v = np.sort(values)
    if v.size < 2 or v[0] == v[-1]:
        return float(v[-1]) + 1.0 if v.size else 1.0
    csum = np.cumsum(v)
    n = v.size
    k = np.arange(1, n)
    w0, w1 = k / n, (n - k) / n
    mu0 = csum[:-1] / k
    mu1 = (csum[-1] - csum[:-1]) / (n - k)
    between = w0 * w1 * (mu0 - mu1) ** 2
    between[v[1:] == v[:-1]] = -1.0  # split only between distinct values
    i = int(np.argmax(between))
    return float((v[i] + v[i + 1]) / 2)


def _refine(
    z: np.ndarray, rows: np.ndarray | None, cols: np.ndarray | None, tol: float
) -> tuple[np.ndarray, np.ndarray]:
    """Alternate: rows all-near-zero on cols, then cols all-near-zero on rows, until stable."""
    for _ in range(20):
        if cols is not None:
            if cols.size == 0:
                return np.zeros(0, int), np.zeros(0, int)
            new_rows = np.flatnonzero(z[:, cols].mean(axis=1) >= 1 - tol)
        else:
            new_rows = rows  # type: ignore[assignment]
        if new_rows is None or new_rows.size == 0:
            return np.zeros(0, int), np.zeros(0, int)
        new_cols = np.flatnonzero(z[new_rows].mean(axis=0) >= 1 - tol)
        if cols is not None and rows is not None and np.array_equal(new_rows, rows) and np.array_equal(new_cols, cols):
            break
        rows, cols = new_rows, new_cols
    return rows, cols  # type: ignore[return-value]


def log_binomial_tail(k: int, n: int, p: float) -> float:
    """ln P(X ≥ k) for X ~ Binomial(n, p), finite even far in the tail.

    scipy's logsf underflows to −inf for huge blocks; there we use the exact all-successes value
    n·ln p (k = n) or the Chernoff bound −n·KL(k/n ‖ p), which over-states the probability, so
    the evidence is never exaggerated.
    """
    if k <= 0:
        return 0.0
    if k >= n:
        return n * math.log(p)
    value = float(stats.binom.logsf(k - 1, n, p))
    if math.isfinite(value):
        return value
    q = k / n
    return -n * (q * math.log(q / p) + (1 - q) * math.log((1 - q) / (1 - p)))


def _block_bits(z: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> tuple[float, float, float]:
    m, n = z.shape
    cells = rows.size * cols.size
    inside = int(z[np.ix_(rows, cols)].sum())
    outside_cells = m * n - cells
    outside_zero = int(z.sum()) - inside
    p0 = (outside_zero + 1) / (outside_cells + 2)  # Laplace-smoothed base rate of a dense layer
    log_tail = log_binomial_tail(inside, cells, p0)
    bits = -log_tail / math.log(2) - (m + n)
    return bits, p0, inside / cells


def find_zero_block(
    w_abs: np.ndarray, *, rel_eps: float | Sequence[float] = DEFAULT_REL_EPS, tol: float = DEFAULT_TOL
) -> ZeroBlock | None:
    """Largest significant near-zero rectangle of |W| (out × in) under any row/column permutation.

    `rel_eps` is one near-zero threshold or a grid of them (relative to the layer RMS); with a
    grid the best block wins and its bits are charged log2(len(grid)) for the extra tests.
    Returns None when the matrix is too small or no candidate leaves both groups non-empty.
    """
    if w_abs.ndim != 2 or min(w_abs.shape) < 2:
        return None
    w_abs = np.abs(w_abs.astype(np.float64))
    finite = np.isfinite(w_abs)
    if not finite.all():  # NaN/Inf weights are certainly not "near zero": make them the largest
        w_abs = np.where(finite, w_abs, float(w_abs[finite].max()) if finite.any() else 1.0)
    grid = [float(rel_eps)] if isinstance(rel_eps, (int, float)) else [float(e) for e in rel_eps]
    charge = math.log2(len(grid)) if grid else 0.0
    best: ZeroBlock | None = None
    for eps in grid:
        block = _find_zero_block_at(w_abs, eps, tol)
        if block is not None:
            block.bits -= charge
            if best is None or block.bits > best.bits:
                best = block
    return best


def _find_zero_block_at(w_abs: np.ndarray, rel_eps: float, tol: float) -> ZeroBlock | None:
    z_full = near_zero_mask(w_abs, rel_eps)
    dead_rows = np.flatnonzero(z_full.all(axis=1))
    dead_cols = np.flatnonzero(z_full.all(axis=0))
    live_rows = np.setdiff1d(np.arange(w_abs.shape[0]), dead_rows)
    live_cols = np.setdiff1d(np.arange(w_abs.shape[1]), dead_cols)
    if live_rows.size < 2 or live_cols.size < 2:
        return None
    z = z_full[np.ix_(live_rows, live_cols)]
    fc, fr = z.mean(axis=0), z.mean(axis=1)
    seeds: list[tuple[np.ndarray | None, np.ndarray | None]] = [
        (None, np.flatnonzero(fc >= _otsu_threshold(fc))),
        (np.flatnonzero(fr >= _otsu_threshold(fr)), None),
        (None, np.array([int(np.argmax(fc))])),
        (np.array([int(np.argmax(fr))]), None),
    ]
    best: tuple[float, np.ndarray, np.ndarray, float, float] | None = None
    for seed_rows, seed_cols in seeds:
        rows, cols = _refine(z, seed_rows, seed_cols, tol)
        if rows.size == 0 or cols.size == 0 or rows.size == z.shape[0] or cols.size == z.shape[1]:
            continue  # a block must leave both groups non-empty on both sides
        # off-diagonal: the block's columns are read by the other rows (else they are just unused units)
        others = np.setdiff1d(np.arange(z.shape[0]), rows)
        if z[np.ix_(others, cols)].mean() > 0.5:
            continue
        bits, p0, frac = _block_bits(z, rows, cols)
        if best is None or bits > best[0]:
            best = (bits, rows, cols, p0, frac)
    if best is None:
        return None
    bits, rows, cols, p0, frac = best
    r, c = live_rows[rows], live_cols[cols]
    total = float(np.square(w_abs).sum())
    energy = float(np.square(w_abs[np.ix_(r, c)]).sum()) / total if total > 0 else 0.0
    return ZeroBlock(r, c, bits, p0, frac, energy, rel_eps, dead_rows, dead_cols)


def layer_abs_matrix(layer: LayerInfo) -> np.ndarray:
    """|W| as (out_units × in_units), kernels reduced to L2 norms (LayerInfo.weight_matrix)."""
    return layer.weight_matrix().detach().abs().double().cpu().numpy()


def input_grouping(prev: LayerInfo, cur: LayerInfo) -> int | None:
    """How many of prev's output features make one input unit of cur, if they chain.

    1 when shapes match; k when prev emits k·in_units features that a reshape to (C, H, W)
    turns into C = cur.in_units channels (feature f → channel f // k, C-order reshape); None
    when the two layers do not chain.
    """
    if prev.out_units == cur.in_units:
        return 1
    if cur.in_units > 0 and prev.out_units % cur.in_units == 0 and cur.kind != "linear":
        return prev.out_units // cur.in_units
    return None


def permuted_abs_image(w_abs: np.ndarray, rows: np.ndarray, cols: np.ndarray, max_side: int = 256) -> np.ndarray:
    """|W| with `rows`/`cols` moved first, log-scaled to uint8, max-pooled to ≤ max_side pixels."""
    m, n = w_abs.shape
    row_order = np.concatenate([rows, np.setdiff1d(np.arange(m), rows)])
    col_order = np.concatenate([cols, np.setdiff1d(np.arange(n), cols)])
    img = w_abs[np.ix_(row_order, col_order)]
    for axis in (0, 1):
        size = img.shape[axis]
        if size > max_side:
            f = math.ceil(size / max_side)
            pad = (-size) % f
            widths = [(0, 0), (0, 0)]
            widths[axis] = (0, pad)
            img = np.pad(img, widths)
            shape = list(img.shape)
            shape[axis : axis + 1] = [shape[axis] // f, f]
            img = img.reshape(shape).max(axis=axis + 1)
    img = np.log1p(img / (np.median(img[img > 0]) if np.any(img > 0) else 1.0))
    top = float(img.max()) or 1.0
    out = (255 * img / top).astype(np.uint8)
    # small matrices: upscale so a person can see the blocks
    scale = max(1, min(8, max_side // max(out.shape)))
    return np.kron(out, np.ones((scale, scale), dtype=np.uint8))
