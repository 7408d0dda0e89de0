"""Selective prediction: how much of the possible gain from abstaining the confidence ranking achieves.

AURC (:mod:`.ranking`) depends on the accuracy as much as on the ranking: a more accurate model has a lower
AURC with the same ranking quality. The prediction rejection ratio (PRR) puts the model's curve between the
two curves that bracket it, a random ranking (reject items at random: the risk stays the error rate at every
coverage) and the oracle (reject every wrong item first):

    PRR = (AURC_random - AURC_model) / (AURC_random - AURC_oracle)

1 for a perfect ranking, 0 for a useless one, negative when confidence ranks wrong answers first. This is
the prediction rejection ratio of Malinin et al. (2017, "Incorporating uncertainty into deep learning for
spoken language assessment") as LM-Polygraph computes it (Fadeeva et al. 2023; its
``ue_metrics.PredictionRejectionArea``, normalised by ``normalize_metric(score, oracle, random)``):
there the prediction-rejection area is the mean quality of the k least uncertain items over k = 1..N,
which for a 0/1 quality is 1 - AURC, so the two forms are the same number. The random AURC is its
expectation, the error rate (LM-Polygraph estimates it by shuffling).

Closed forms per resample (N items, W wrong, C = N - W correct, H the harmonic numbers):
``AURC_random = W / N`` and ``AURC_oracle = (W - C (H_N - H_C)) / N``, since after the C correct items the
risk at coverage k is (k - C) / k. PRR is undefined (``nan``) when every item is correct or every item wrong.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .errors import CalibrationInputError
from .ranking import _risk_blocks, aurc_batched, risk_coverage_curve
from .sorted_sample import SortedSample
from .validation import check_confidence_correct

DEFAULT_COVERAGES = (0.5, 0.8, 0.9, 1.0)
"""Coverages at which the report states selective accuracy."""
CURVE_POINTS = 200
"""At most this many points per risk-coverage curve in a figure."""


def _harmonic(n: int) -> np.ndarray:
    """H_0 .. H_n."""
    return np.concatenate(([0.0], np.cumsum(1.0 / np.arange(1, n + 1))))


def oracle_and_random_aurc(
    n_wrong: np.ndarray, total: int, harmonic: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """AURC of the oracle and of a random ranking, ``n_wrong`` errors among ``total`` items (module doc)."""
    harmonic = _harmonic(total) if harmonic is None else harmonic
    n_correct = total - n_wrong
    correct_count = np.clip(np.rint(n_correct).astype(np.int64), 0, total)
    oracle = (n_wrong - n_correct * (harmonic[total] - harmonic[correct_count])) / total
    return oracle, n_wrong / total


def prr_batched(sample: SortedSample, multiplicity: np.ndarray | None) -> np.ndarray:
    """PRR per weighting, ``(B,)``; ``nan`` where a weighting has a single class.

    One pass over the risk blocks gives the model's AURC (as :func:`.ranking.aurc_batched`) and the error
    count that fixes the oracle's and the random AURC.
    """
    count, rate, offset = _risk_blocks(sample, multiplicity)
    total = int(count[0].sum())
    harmonic = _harmonic(total)
    end = np.cumsum(count, axis=1)
    wrong = count * rate
    model = (wrong + offset * (harmonic[end] - harmonic[end - count])).sum(axis=1) / total
    oracle, random = oracle_and_random_aurc(wrong.sum(axis=1), total, harmonic)
    gap = random - oracle
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(gap > 1e-15, (random - model) / gap, np.nan)


def prediction_rejection_ratio(confidence: object, correct: object) -> float:
    """PRR of confidence for correctness (higher is better), see module doc.

    ``nan`` without a warning when every item is correct (or every item wrong): the task's aggregation
    already warns once about such single-class records (and AUROC, undefined there too, says so).
    """
    conf, corr = check_confidence_correct(confidence, correct)
    return float(prr_batched(SortedSample.build(conf, corr), None)[0])


def check_coverages(coverages: object) -> tuple[float, ...]:
    """Coverages are numbers in (0, 1]."""
    if isinstance(coverages, str | bytes) or not isinstance(coverages, Sequence | np.ndarray):
        raise CalibrationInputError(f"coverages must be a list of numbers in (0, 1], got {coverages!r}")
    checked = []
    for value in coverages:
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float | np.floating)
            or not 0.0 < value <= 1.0
        ):
            raise CalibrationInputError(
                f"coverage {value!r} is not in (0, 1]; a coverage is the fraction of items kept, e.g. 0.8"
            )
        checked.append(float(value))
    return tuple(checked)


def selective_accuracies(
    confidence: object, correct: object, coverages: Sequence[float] = DEFAULT_COVERAGES
) -> dict[float, float]:
    """Accuracy of the ceil(coverage * n) most confident items at each coverage (ties in expectation).

    One risk-coverage curve for all coverages; the same numbers as :func:`.ranking.selective_accuracy`.
    """
    conf, corr = check_confidence_correct(confidence, correct)
    wanted = check_coverages(coverages)
    risk = risk_coverage_curve(SortedSample.build(conf, corr), None)[0]
    n = conf.shape[0]
    return {c: float(1.0 - risk[max(1, math.ceil(round(c * n, 9))) - 1]) for c in wanted}


@dataclass(frozen=True)
class RiskCoverage:
    """Points of the model's, the oracle's and the random risk-coverage curves, for a figure."""

    coverage: np.ndarray
    model: np.ndarray
    oracle: np.ndarray
    random: np.ndarray
    aurc: float
    prr: float
    n: int
    """Items behind the curves."""


def risk_coverage_points(confidence: object, correct: object, max_points: int = CURVE_POINTS) -> RiskCoverage:
    """The three curves at up to ``max_points`` coverages k / N (evenly spaced in k, always ending at 1).

    The model's risk at k is the expected error rate of its k most confident items (ties in expectation);
    the oracle's is max(0, k - C) / k; a random ranking's is the error rate W / N at every k.
    """
    conf, corr = check_confidence_correct(confidence, correct)
    if isinstance(max_points, bool) or not isinstance(max_points, int) or max_points < 2:
        raise CalibrationInputError(f"max_points must be an integer >= 2, got {max_points!r}")
    sample = SortedSample.build(conf, corr)
    n = len(sample)
    k = np.unique(np.linspace(1, n, min(n, max_points)).round().astype(np.int64))
    n_correct = float(corr.sum())
    model = risk_coverage_curve(sample, None)[0][k - 1]
    oracle = np.maximum(0.0, k - n_correct) / k
    random = np.full(k.shape, (n - n_correct) / n)
    return RiskCoverage(
        coverage=k / n,
        model=model,
        oracle=oracle,
        random=random,
        aurc=float(aurc_batched(sample, None)[0]),
        prr=float(prr_batched(sample, None)[0]),
        n=n,
    )
