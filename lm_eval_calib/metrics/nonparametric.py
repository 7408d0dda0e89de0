"""Nonparametric recalibration maps of a top-label confidence: isotonic regression and histogram binning.

Temperature and Platt scaling assume the shape of the miscalibration (one or two parameters); these two
assume only that it is a function of the confidence, so they can fix any shape, at the price of variance.
Both are fitted by regressing correctness (0/1) on the confidence:

* **Isotonic regression** (Zadrozny & Elkan 2002): the non-decreasing step function of confidence with the
  least squared error, found by the pool-adjacent-violators algorithm (PAVA). Tied confidences are pooled
  first (their mean correctness, weighted by their count); a new confidence is mapped by linear
  interpolation between the fitted points and clipped at both ends. This is what scikit-learn's
  ``IsotonicRegression(out_of_bounds="clip")`` computes, and the tests check it to 1e-9; the PAVA here is our
  own, so the check is not a library compared with itself.
* **Histogram binning** (Zadrozny & Elkan 2001): ``n_bins`` equal-width bins of [0, 1] (``[a, b)``, the last
  one ``[a, 1]``); each confidence is mapped to the accuracy of its bin on the fitting items, and an empty
  bin to its own midpoint. netcal's ``HistogramBinning`` fits the same map (checked to 1e-9 on confidences
  off the bin edges; netcal puts a confidence exactly on an inner edge in the lower bin when it transforms
  but in the upper bin when it fits, we use the upper bin for both).

A map may send a confidence to exactly 0 or 1; the binary log loss then clips it like Platt scaling does
(see :data:`.recalibration.PROBABILITY_CLIP`), so one confident mistake costs about 27.6 nats, not infinity.

Pure numpy, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .validation import check_n_bins

HISTOGRAM_BINS = 10
"""Default bin count of histogram binning, the same as the headline ECE's."""
VECTOR_PAVA_MIN_BLOCKS = 1000
"""Below this many blocks the stack loop is as fast as a vectorised pass."""
VECTOR_PAVA_MIN_SHRINK = 0.01
"""A vectorised pass that removes fewer than this share of the blocks hands over to the stack loop."""


# ------------------------------------------------------------------------------------------------ isotonic
@dataclass(frozen=True)
class IsotonicFit:
    """The fitted points of an isotonic map: strictly increasing ``x`` and non-decreasing ``y`` in [0, 1]."""

    x: np.ndarray
    y: np.ndarray

    @property
    def n_steps(self) -> int:
        """How many distinct levels the map takes (its effective number of parameters)."""
        return int(np.unique(self.y).shape[0])


def _stack_pava(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """PAVA with a stack of blocks (weighted mean, total weight, length): each value starts a block and merges
    backwards while it is below the previous block's mean. O(n): each value is pushed once, merged once."""
    means: list[float] = []
    totals: list[float] = []
    lengths: list[int] = []
    for value, weight in zip(values.tolist(), weights.tolist(), strict=True):
        mean, total, length = value, weight, 1
        while means and means[-1] >= mean:
            previous_total = totals.pop()
            mean = (means.pop() * previous_total + mean * total) / (previous_total + total)
            total += previous_total
            length += lengths.pop()
        means.append(mean)
        totals.append(total)
        lengths.append(length)
    return np.repeat(np.asarray(means, dtype=np.float64), lengths)


def pool_adjacent_violators(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The weighted least-squares non-decreasing fit of ``values`` (in their given order).

    PAVA's result does not depend on the order in which violating neighbours are pooled, so whole runs of
    decreasing block means are pooled at once, vectorised, while that shrinks the blocks quickly (noisy 0/1
    correctness: a million values in about 0.1 s); the Python stack finishes the few blocks left, so an
    input that would need many vectorised passes still costs O(n).
    """
    sums = np.asarray(values, dtype=np.float64) * weights
    totals = np.asarray(weights, dtype=np.float64)
    lengths = np.ones(sums.shape[0], dtype=np.int64)
    while sums.shape[0] > VECTOR_PAVA_MIN_BLOCKS:
        means = sums / totals
        violating = means[:-1] >= means[1:]
        if not violating.any():
            return np.repeat(means, lengths)
        group = np.cumsum(np.concatenate(([True], ~violating))) - 1
        n_groups = int(group[-1]) + 1
        sums, totals = np.bincount(group, sums, n_groups), np.bincount(group, totals, n_groups)
        shrunk = lengths.shape[0] - n_groups
        lengths = np.bincount(group, lengths, n_groups).astype(np.int64)
        if shrunk < VECTOR_PAVA_MIN_SHRINK * lengths.shape[0]:
            break
    return np.repeat(_stack_pava(sums / totals, totals), lengths)


def fit_isotonic(confidence: np.ndarray, correct: np.ndarray) -> IsotonicFit:
    """Isotonic regression of ``correct`` on ``confidence`` (ties pooled first, see the module doc)."""
    x, inverse, counts = np.unique(confidence, return_inverse=True, return_counts=True)
    mean_correct = np.bincount(inverse, weights=correct, minlength=x.shape[0]) / counts
    return IsotonicFit(x=x, y=pool_adjacent_violators(mean_correct, counts.astype(np.float64)))


def fit_isotonic_sorted(confidence: np.ndarray, correct: np.ndarray) -> IsotonicFit:
    """:func:`fit_isotonic` of items already in ascending order of confidence (no sort).

    Cross-fitting sorts all items once and reads each fold's training items off that order, instead of sorting
    every fold again. Correctness is 0/1, so the per-confidence sums are whole numbers and equal the
    ``bincount`` of :func:`fit_isotonic` exactly, in any order of addition: the same fit to the bit.
    """
    starts = np.flatnonzero(np.concatenate(([True], confidence[1:] != confidence[:-1])))
    counts = np.diff(np.append(starts, confidence.shape[0]))
    mean_correct = np.add.reduceat(correct, starts) / counts
    return IsotonicFit(
        x=confidence[starts], y=pool_adjacent_violators(mean_correct, counts.astype(np.float64))
    )


def isotonic_map(fit: IsotonicFit, confidence: np.ndarray) -> np.ndarray:
    """Recalibrated confidences: linear interpolation between the fitted points, clipped at both ends."""
    return np.interp(confidence, fit.x, fit.y)


# --------------------------------------------------------------------------------------- histogram binning
@dataclass(frozen=True)
class HistogramFit:
    """Per-bin recalibrated confidence of ``n_bins`` equal-width bins and the fitting items per bin."""

    values: np.ndarray
    counts: np.ndarray

    @property
    def n_bins(self) -> int:
        return int(self.values.shape[0])


def histogram_bin_index(confidence: np.ndarray, n_bins: int) -> np.ndarray:
    """Equal-width bin of each confidence: ``[k / n, (k + 1) / n)``, with 1.0 in the last bin."""
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return np.clip(np.searchsorted(edges, confidence, side="right") - 1, 0, n_bins - 1)


def fit_histogram(confidence: np.ndarray, correct: np.ndarray, n_bins: int = HISTOGRAM_BINS) -> HistogramFit:
    """Accuracy of the fitting items in each bin; an empty bin keeps its midpoint (no evidence to move it)."""
    n_bins = check_n_bins(n_bins)
    index = histogram_bin_index(confidence, n_bins)
    counts = np.bincount(index, minlength=n_bins)
    hits = np.bincount(index, weights=correct, minlength=n_bins)
    midpoints = (np.arange(n_bins) + 0.5) / n_bins
    values = np.divide(hits, counts, out=midpoints.copy(), where=counts > 0)
    return HistogramFit(values=values, counts=counts)


def histogram_map(fit: HistogramFit, confidence: np.ndarray) -> np.ndarray:
    """Recalibrated confidences: the fitted value of each confidence's bin."""
    return fit.values[histogram_bin_index(confidence, fit.n_bins)]


# ----------------------------------------------------------------------------- per-option histogram binning
@dataclass(frozen=True)
class OptionHistogramFit:
    """One histogram map per option position (one-vs-all), for tasks whose options are positional (A-D)."""

    per_option: tuple[HistogramFit, ...]

    @property
    def n_options(self) -> int:
        return len(self.per_option)


def fit_option_histograms(
    probs: np.ndarray, targets: np.ndarray, n_bins: int = HISTOGRAM_BINS
) -> OptionHistogramFit:
    """Histogram binning of each option's probability against "this option is the gold one" (Zadrozny &
    Elkan 2002, one-vs-all), as netcal's multi-class ``HistogramBinning`` fits it."""
    n_options = probs.shape[1]
    return OptionHistogramFit(
        tuple(fit_histogram(probs[:, k], (targets == k).astype(np.float64), n_bins) for k in range(n_options))
    )


def option_histogram_map(fit: OptionHistogramFit, probs: np.ndarray) -> np.ndarray:
    """Each option's binned probability, each row renormalised to sum to 1 (a row mapped to all zeros, which
    only happens when every option falls in bins with no gold fitting item, becomes uniform)."""
    mapped = np.stack([histogram_map(f, probs[:, k]) for k, f in enumerate(fit.per_option)], axis=1)
    total = mapped.sum(axis=1, keepdims=True)
    uniform = np.full_like(mapped, 1.0 / mapped.shape[1])
    return np.divide(mapped, total, out=uniform, where=total > 0)
