"""Binned calibration errors (ECE, MCE, RMS-CE, debiased L2) and the smooth ECE.

Each binned metric is ONE batched function of :class:`BinTotals` (shape ``(B, n_bins)``); the public scalar
functions evaluate it with ``B = 1`` and the bootstrap with ``B`` resamples, so the formula cannot drift
between the point estimate and its error bar.  All of them measure top-label calibration: ``confidence`` is
the probability of the predicted answer and ``correct`` says whether it was right.
"""

from __future__ import annotations

import numpy as np
import relplot

from .binning import BinTotals, Scheme, bin_totals, check_scheme
from .sorted_sample import SortedSample
from .validation import check_confidence_correct, check_n_bins


def _gaps(totals: BinTotals) -> tuple[np.ndarray, np.ndarray]:
    """|accuracy - mean confidence| per bin (0 in empty bins) and each bin's share of the items."""
    count = totals.count
    safe = np.where(count > 0, count, 1.0)
    gap = np.abs(totals.n_correct - totals.sum_confidence) / safe
    return gap, count / count.sum(axis=1, keepdims=True)


def ece_from_totals(totals: BinTotals) -> np.ndarray:
    """sum_b |B_b|/n * |acc_b - conf_b|."""
    gap, share = _gaps(totals)
    return np.sum(share * gap, axis=1)


def mce_from_totals(totals: BinTotals) -> np.ndarray:
    """Largest gap over non-empty bins (empty bins have gap 0, so they never win)."""
    gap, _ = _gaps(totals)
    return gap.max(axis=1)


def rmsce_from_totals(totals: BinTotals) -> np.ndarray:
    """sqrt(sum_b |B_b|/n * (acc_b - conf_b)^2)."""
    gap, share = _gaps(totals)
    return np.sqrt(np.sum(share * gap**2, axis=1))


def debiased_from_totals(totals: BinTotals) -> np.ndarray:
    """Kumar, Liang & Ma (2019) debiased L2 calibration error.

    The plug-in squared gap overestimates the true one by the sampling variance of the bin accuracy, so each
    bin subtracts ``acc_b (1 - acc_b) / (|B_b| - 1)``.  Bins with fewer than two items contribute 0 (the
    variance estimate is undefined there).  The debiased *squared* error can be negative; it is clipped at 0
    before the square root.  This matches ``calibration.utils.unbiased_l2_ce`` term for term.
    """
    count = totals.count
    safe = np.where(count > 0, count, 1.0)
    acc = totals.n_correct / safe
    plug_in = ((totals.sum_confidence - totals.n_correct) / safe) ** 2
    variance = acc * (1.0 - acc) / np.where(count > 1, count - 1.0, 1.0)
    per_bin = np.where(count >= 2, plug_in - variance, 0.0)
    squared = np.sum(count / count.sum(axis=1, keepdims=True) * per_bin, axis=1)
    return np.sqrt(np.maximum(squared, 0.0))


def _scalar(metric, confidence: object, correct: object, n_bins: int, scheme: str) -> float:
    conf, corr = check_confidence_correct(confidence, correct)
    n_bins, scheme = check_n_bins(n_bins), check_scheme(scheme)
    return float(metric(bin_totals(SortedSample.build(conf, corr), None, n_bins, scheme))[0])


def expected_calibration_error(
    confidence: object, correct: object, n_bins: int = 10, scheme: Scheme = "width"
) -> float:
    """Top-label ECE: the count-weighted mean |accuracy - confidence| over bins."""
    return _scalar(ece_from_totals, confidence, correct, n_bins, scheme)


def maximum_calibration_error(
    confidence: object, correct: object, n_bins: int = 10, scheme: Scheme = "width"
) -> float:
    """Worst-bin |accuracy - confidence|; sensitive to sparse bins, so read it with the bin counts."""
    return _scalar(mce_from_totals, confidence, correct, n_bins, scheme)


def rms_calibration_error(
    confidence: object, correct: object, n_bins: int = 10, scheme: Scheme = "width"
) -> float:
    """Root of the count-weighted mean squared gap (the plug-in L2 calibration error)."""
    return _scalar(rmsce_from_totals, confidence, correct, n_bins, scheme)


def debiased_calibration_error(
    confidence: object, correct: object, n_bins: int = 10, scheme: Scheme = "mass"
) -> float:
    """Debiased L2 calibration error (Kumar et al. 2019); equal-mass bins by default as in the paper."""
    return _scalar(debiased_from_totals, confidence, correct, n_bins, scheme)


def smooth_calibration_error(confidence: object, correct: object) -> float:
    """SmoothECE (Blasiok & Nakkiran 2023) via its reference implementation, ``relplot.smECE``.

    It has no bins to tune and is consistent, which makes it the robust companion to the binned ECE.  There is
    no batched form; the bootstrap loops over a limited number of resamples for it.
    """
    conf, corr = check_confidence_correct(confidence, correct)
    return float(relplot.smECE(conf, corr))
