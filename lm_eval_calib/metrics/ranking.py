"""Ranking quality of confidence: AUROC, the risk-coverage curve (AURC) and selective accuracy.

Calibration says whether confidence *values* are right; these say whether confidence *orders* items well,
which is what matters when the model is allowed to abstain.  Ties are handled as unordered blocks (runs of
equal confidence), so every metric here is invariant to the order of the input items:

* AUROC counts a tied (correct, wrong) pair as 1/2 (the Mann-Whitney U statistic).
* The risk at coverage k is the *expected* error rate of the k most confident items when ties are broken
  uniformly at random: inside a tied block, errors accrue at the block's average error rate.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

from .errors import CalibrationInputError
from .sorted_sample import SortedSample
from .validation import check_confidence_correct


def auroc_batched(sample: SortedSample, multiplicity: np.ndarray | None) -> np.ndarray:
    """AUROC per weighting, ``(B,)``; ``nan`` where only one class is present."""
    count, n_correct = sample.run_totals(multiplicity)
    n_wrong = count - n_correct
    wrong_below = np.cumsum(n_wrong, axis=1) - n_wrong
    u_statistic = np.sum(n_correct * (wrong_below + 0.5 * n_wrong), axis=1)
    pairs = n_correct.sum(axis=1) * n_wrong.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(pairs > 0, u_statistic / pairs, np.nan)


def _risk_blocks(sample: SortedSample, multiplicity: np.ndarray | None):
    """Runs, most confident first: weighted size, error rate and offset, each ``(B, U)``.

    Inside a block that starts after K items with A errors so far, the expected risk at coverage k is
    ``rate + offset / k`` with ``offset = A - K * rate``.
    """
    count, n_correct = sample.run_totals(multiplicity)
    count, n_wrong = count[:, ::-1], (count - n_correct)[:, ::-1]  # most confident first
    before = np.cumsum(count, axis=1) - count
    wrong_before = np.cumsum(n_wrong, axis=1) - n_wrong
    rate = np.divide(n_wrong, count, out=np.zeros_like(n_wrong), where=count > 0)
    return np.rint(count).astype(np.int64), rate, wrong_before - before * rate


def risk_coverage_curve(sample: SortedSample, multiplicity: np.ndarray | None) -> np.ndarray:
    """Expected error rate of the k most confident items, k = 1..N, shape ``(B, N)``.

    Every weighting must have the same total weight N (true for bootstrap resamples and for ``None``).
    """
    count, rate, offset = _risk_blocks(sample, multiplicity)
    repeats, n_rows = count.ravel(), count.shape[0]
    rate_at = np.repeat(rate.ravel(), repeats).reshape(n_rows, -1)
    offset_at = np.repeat(offset.ravel(), repeats).reshape(n_rows, -1)
    return rate_at + offset_at / np.arange(1, rate_at.shape[1] + 1)


def aurc_batched(sample: SortedSample, multiplicity: np.ndarray | None) -> np.ndarray:
    """Area under the risk-coverage curve: mean risk over coverages k/N, k = 1..N.

    Summed block by block in closed form (sum of 1/k over a block = difference of harmonic numbers), so the
    cost is O(runs), not O(N), per weighting; the same curve as :func:`risk_coverage_curve`.
    """
    count, rate, offset = _risk_blocks(sample, multiplicity)
    total = int(count[0].sum())
    harmonic = np.concatenate(([0.0], np.cumsum(1.0 / np.arange(1, total + 1))))
    end = np.cumsum(count, axis=1)
    block_sum = count * rate + offset * (harmonic[end] - harmonic[end - count])
    return block_sum.sum(axis=1) / total


def auroc(confidence: object, correct: object) -> float:
    """P(confidence of a random correct item > that of a random wrong one), ties counting 1/2.

    Undefined when every item is correct (or every item wrong): returns ``nan`` and warns.
    """
    conf, corr = check_confidence_correct(confidence, correct)
    n_right = int(corr.sum())
    if n_right in (0, corr.shape[0]):
        warnings.warn(
            f"AUROC is undefined: all {corr.shape[0]} items are {'correct' if n_right else 'wrong'}, so "
            "there is nothing to separate; returning nan (evaluate more items, e.g. a larger --limit)",
            RuntimeWarning,
            stacklevel=2,
        )
        return float("nan")
    return float(auroc_batched(SortedSample.build(conf, corr), None)[0])


def aurc(confidence: object, correct: object) -> float:
    """Area under the risk-coverage curve (lower is better); ties broken in expectation, see module doc."""
    conf, corr = check_confidence_correct(confidence, correct)
    return float(aurc_batched(SortedSample.build(conf, corr), None)[0])


def selective_accuracy(confidence: object, correct: object, coverage: float) -> float:
    """Accuracy of the ceil(coverage * n) most confident items (at least one).

    ``coverage * n`` is rounded to 9 decimals before the ceiling so that e.g. 0.3 * 10 counts as 3 items
    despite floating-point error.
    """
    conf, corr = check_confidence_correct(confidence, correct)
    if isinstance(coverage, bool) or not isinstance(coverage, int | float) or not 0.0 < coverage <= 1.0:
        raise CalibrationInputError(
            f"coverage must be a number in (0, 1], got {coverage!r}; e.g. 0.5 keeps half"
        )
    k = max(1, math.ceil(round(coverage * conf.shape[0], 9)))
    return float(1.0 - risk_coverage_curve(SortedSample.build(conf, corr), None)[0, k - 1])
