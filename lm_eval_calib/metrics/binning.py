"""Bin assignment and per-bin totals: the single source of truth for every binned metric and the diagram.

Conventions (chosen to match a reference implementation exactly, so values can be cross-checked):

* ``scheme="width"``: ``n_bins`` equal intervals with edges ``np.linspace(0, 1, n_bins + 1)``.  Bins are
  left-closed, ``[edge_k, edge_k+1)``, and the last bin is closed so that a confidence of exactly 1.0 lands in
  it; 0.0 lands in the first.  This is netcal's convention (``np.histogramdd``).  torchmetrics uses the same
  left-closed edges but puts 1.0 into an extra, ``(n_bins + 1)``-th bin of its own, so the two differ only
  when some confidence is exactly 1.0.
* ``scheme="mass"``: items sorted by confidence are cut into ``n_bins`` consecutive groups whose sizes differ
  by at most one, larger groups first (``np.array_split``).  Tied confidences are never split: every item
  with a given confidence joins the group holding the *first* item with that confidence.  Hence bins can
  be empty when ties span a boundary, and with ``n < n_bins`` items each item is its own bin and the rest are
  empty.  This is exactly the binning of the ``calibration`` package (Kumar et al. 2019), whose bin edges are
  midpoints between neighbouring groups, up to the numbering of empty bins, which no metric depends on.

Empty bins carry zero weight in every metric and ``nan`` mean confidence / accuracy in :class:`BinStats`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from .errors import CalibrationInputError
from .sorted_sample import SortedSample
from .validation import check_confidence_correct, check_n_bins

Scheme = Literal["width", "mass"]
SCHEMES: tuple[str, ...] = ("width", "mass")


@dataclass(frozen=True)
class BinTotals:
    """Weighted per-bin sums, each ``(B, n_bins)``: the whole state a binned metric needs."""

    count: np.ndarray
    sum_confidence: np.ndarray
    n_correct: np.ndarray


@dataclass(frozen=True)
class BinStats:
    """Reliability-diagram data, one entry per bin (exactly the numbers the binned metrics use).

    ``lower``/``upper`` are the interval edges for ``scheme="width"``; for ``scheme="mass"`` the edges are
    data-dependent, so they are the smallest and largest confidence actually in the bin (``nan`` if empty).
    """

    lower: np.ndarray
    upper: np.ndarray
    count: np.ndarray
    mean_confidence: np.ndarray
    accuracy: np.ndarray


def check_scheme(scheme: object) -> str:
    if scheme not in SCHEMES:
        raise CalibrationInputError(
            f"unknown binning scheme {scheme!r}; use 'width' (equal-width) or 'mass' (equal-mass)"
        )
    return str(scheme)


def width_bin_index(confidence: np.ndarray, n_bins: int) -> np.ndarray:
    """Equal-width bin of each confidence (left-closed bins, 1.0 in the last)."""
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return np.clip(np.searchsorted(edges, confidence, side="right") - 1, 0, n_bins - 1)


def mass_run_bins(run_count: np.ndarray, n_bins: int) -> np.ndarray:
    """Equal-mass bin of each run, ``(B, U)``, from the weighted run sizes of each resample.

    A run's bin is the group (of the ``np.array_split`` partition of positions ``0..N-1``) containing
    the run's first position, which is what keeps ties together.
    """
    count = np.rint(run_count).astype(np.int64)
    first = np.cumsum(count, axis=1) - count
    total = count.sum(axis=1, keepdims=True)
    small, n_large = np.divmod(total, n_bins)  # group sizes: n_large groups of small+1, then groups of small
    large_span = n_large * (small + 1)
    in_small = np.maximum(first - large_span, 0) // np.maximum(small, 1)
    # Runs drawn zero times after the last drawn one start at position N, past every group: park them in the
    # last bin, where their zero weight changes nothing.
    return np.minimum(np.where(first < large_span, first // (small + 1), n_large + in_small), n_bins - 1)


def bin_totals(sample: SortedSample, multiplicity: np.ndarray | None, n_bins: int, scheme: str) -> BinTotals:
    """Per-bin weighted count, summed confidence and number correct for each of ``B`` weightings."""
    if scheme == "width":
        # Sorted items make each bin a contiguous slice; one matrix product per bin reads the weights once
        # and yields (count, summed confidence, number correct) together.
        weights = sample.weights(multiplicity)
        features = np.stack([np.ones(len(sample)), sample.confidence, sample.correct], axis=1)
        # Bin k holds edge_k <= c < edge_k+1 (the last bin also c = 1.0), exactly as in width_bin_index.
        bounds = np.searchsorted(sample.confidence, np.linspace(0.0, 1.0, n_bins + 1), side="left")
        bounds[0], bounds[-1] = 0, len(sample)
        sums = np.zeros((3, weights.shape[0], n_bins))
        for k in range(n_bins):
            if bounds[k + 1] > bounds[k]:
                sums[:, :, k] = (
                    weights[:, bounds[k] : bounds[k + 1]] @ features[bounds[k] : bounds[k + 1]]
                ).T
        return BinTotals(*sums)
    run_count, run_correct = sample.run_totals(multiplicity)
    n_rows = run_count.shape[0]
    keys = (mass_run_bins(run_count, n_bins) + (np.arange(n_rows) * n_bins)[:, None]).ravel()

    def per_bin(values: np.ndarray) -> np.ndarray:
        return np.bincount(keys, weights=values.ravel(), minlength=n_rows * n_bins).reshape(n_rows, n_bins)

    return BinTotals(per_bin(run_count), per_bin(run_count * sample.run_values), per_bin(run_correct))


def bin_statistics(
    confidence: object, correct: object, n_bins: int = 10, scheme: Scheme = "width"
) -> BinStats:
    """Per-bin counts, mean confidence and accuracy: the data behind the reliability diagram and the ECE."""
    conf, corr = check_confidence_correct(confidence, correct)
    n_bins, scheme = check_n_bins(n_bins), check_scheme(scheme)
    sample = SortedSample.build(conf, corr)
    totals = bin_totals(sample, None, n_bins, scheme)
    count = totals.count[0]
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_confidence = np.where(count > 0, totals.sum_confidence[0] / count, np.nan)
        accuracy = np.where(count > 0, totals.n_correct[0] / count, np.nan)
    if scheme == "width":
        edges = np.linspace(0.0, 1.0, n_bins + 1)
        lower, upper = edges[:-1].copy(), edges[1:].copy()
    else:
        run_bin = mass_run_bins(np.diff(np.append(sample.run_starts, len(sample)))[None, :], n_bins)[0]
        lower, upper = np.full(n_bins, np.nan), np.full(n_bins, np.nan)
        present, first = np.unique(run_bin, return_index=True)
        last = run_bin.shape[0] - 1 - np.unique(run_bin[::-1], return_index=True)[1]
        lower[present], upper[present] = sample.run_values[first], sample.run_values[last]
    return BinStats(
        lower=lower,
        upper=upper,
        count=count.astype(np.int64),
        mean_confidence=mean_confidence,
        accuracy=accuracy,
    )
