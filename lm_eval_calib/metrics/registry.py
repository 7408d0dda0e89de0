"""Metric metadata in the style of HELM's metric registry: one place that says what each key means.

The CLI, lm-eval aggregation and the report all look metrics up here, so names, directions and ranges are
defined once.  ``compute`` gives the point estimate; ``batched`` (when the metric has one) evaluates the same
formula under a ``(B, n)`` multiplicity matrix and is what the bootstrap uses.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .binning import bin_totals
from .calibration_error import (
    debiased_calibration_error,
    debiased_from_totals,
    ece_from_totals,
    expected_calibration_error,
    maximum_calibration_error,
    mce_from_totals,
    rms_calibration_error,
    rmsce_from_totals,
    smooth_calibration_error,
)
from .data import CalibrationData
from .errors import CalibrationInputError
from .prepared import PreparedData
from .ranking import aurc, aurc_batched, auroc, auroc_batched
from .scoring import accuracy, weighted_mean
from .selective import prediction_rejection_ratio, prr_batched

SMALL_SAMPLE_THRESHOLD = 300

BatchedFn = Callable[[PreparedData, np.ndarray | None, int], np.ndarray]


@dataclass(frozen=True)
class MetricInfo:
    """What a metric key means, which direction is better, and how to compute it."""

    key: str
    display_name: str
    description: str
    higher_is_better: bool
    range: tuple[float, float]
    compute: Callable[[CalibrationData, int], float]
    batched: BatchedFn | None = None
    binned: bool = False
    mean_of: str | None = None  # the per-item field this metric is the mean of (its bootstrap cells differ)


def _binned(totals_metric, scheme: str) -> BatchedFn:
    def batched(prepared: PreparedData, multiplicity: np.ndarray | None, n_bins: int) -> np.ndarray:
        return totals_metric(bin_totals(prepared.sample, multiplicity, n_bins, scheme))

    return batched


def _mean_of(field: str) -> BatchedFn:
    """Batched mean of a per-item field; pair it with ``mean_of=field``."""

    def batched(prepared: PreparedData, multiplicity: np.ndarray | None, n_bins: int) -> np.ndarray:
        return weighted_mean(getattr(prepared.data, field), multiplicity)

    return batched


_METRIC_LIST = [
    MetricInfo(
        "acc",
        "Accuracy",
        "Fraction of items whose top prediction is correct.",
        True,
        (0.0, 1.0),
        lambda d, n_bins: accuracy(d.correct),
        _mean_of("correct"),
        mean_of="correct",
    ),
    MetricInfo(
        "ece",
        "ECE",
        "Top-label expected calibration error, equal-width bins (the headline number).",
        False,
        (0.0, 1.0),
        lambda d, n_bins: expected_calibration_error(d.confidence, d.correct, n_bins, "width"),
        _binned(ece_from_totals, "width"),
        True,
    ),
    MetricInfo(
        "ece_em",
        "ECE (equal mass)",
        "Top-label ECE with equal-mass (adaptive) bins.",
        False,
        (0.0, 1.0),
        lambda d, n_bins: expected_calibration_error(d.confidence, d.correct, n_bins, "mass"),
        _binned(ece_from_totals, "mass"),
        True,
    ),
    MetricInfo(
        "ece_debiased",
        "Debiased L2-CE",
        "Debiased L2 calibration error (Kumar et al. 2019), equal-mass bins.",
        False,
        (0.0, 1.0),
        lambda d, n_bins: debiased_calibration_error(d.confidence, d.correct, n_bins, "mass"),
        _binned(debiased_from_totals, "mass"),
        True,
    ),
    MetricInfo(
        "mce",
        "MCE",
        "Maximum calibration error: the worst equal-width bin's |accuracy - confidence|.",
        False,
        (0.0, 1.0),
        lambda d, n_bins: maximum_calibration_error(d.confidence, d.correct, n_bins, "width"),
        _binned(mce_from_totals, "width"),
        True,
    ),
    MetricInfo(
        "rmsce",
        "RMS-CE",
        "Root-mean-square calibration error over equal-width bins (plug-in L2).",
        False,
        (0.0, 1.0),
        lambda d, n_bins: rms_calibration_error(d.confidence, d.correct, n_bins, "width"),
        _binned(rmsce_from_totals, "width"),
        True,
    ),
    MetricInfo(
        "smece",
        "smECE",
        "Smooth ECE (Blasiok & Nakkiran 2023): kernel-smoothed, no bins to tune.",
        False,
        (0.0, 1.0),
        lambda d, n_bins: smooth_calibration_error(d.confidence, d.correct),
    ),
    MetricInfo(
        "brier",
        "Brier",
        "Mean Brier score over the item's options (top-label Brier for open vocabulary).",
        False,
        (0.0, 2.0),
        lambda d, n_bins: float(weighted_mean(d.brier, None)[0]),
        _mean_of("brier"),
        mean_of="brier",
    ),
    MetricInfo(
        "nll",
        "NLL",
        "Mean negative log-likelihood of the gold answer (nan when unknown).",
        False,
        (0.0, float("inf")),
        lambda d, n_bins: float(weighted_mean(d.nll, None)[0]),
        _mean_of("nll"),
        mean_of="nll",
    ),
    MetricInfo(
        "auroc",
        "AUROC",
        "How well confidence separates correct from wrong answers (ties count 1/2).",
        True,
        (0.0, 1.0),
        lambda d, n_bins: auroc(d.confidence, d.correct),
        lambda p, m, n_bins: auroc_batched(p.sample, m),
    ),
    MetricInfo(
        "aurc",
        "AURC",
        "Area under the risk-coverage curve of selective prediction.",
        False,
        (0.0, 1.0),
        lambda d, n_bins: aurc(d.confidence, d.correct),
        lambda p, m, n_bins: aurc_batched(p.sample, m),
    ),
    MetricInfo(
        "prr",
        "PRR",
        "Prediction rejection ratio: the share of the oracle's AURC gain over random abstention that "
        "confidence achieves (1 perfect, 0 random; LM-Polygraph's definition).",
        True,
        (float("-inf"), 1.0),
        lambda d, n_bins: prediction_rejection_ratio(d.confidence, d.correct),
        lambda p, m, n_bins: prr_batched(p.sample, m),
    ),
]

METRICS: dict[str, MetricInfo] = {info.key: info for info in _METRIC_LIST}


def known_metrics() -> list[str]:
    return list(METRICS)


def get_metric(key: str) -> MetricInfo:
    try:
        return METRICS[key]
    except (KeyError, TypeError):
        raise CalibrationInputError(
            f"unknown metric {key!r}; known metrics are: {', '.join(METRICS)}"
        ) from None


def compute_metric(key: str, data: CalibrationData, n_bins: int = 10) -> float:
    """Point estimate of one metric."""
    return get_metric(key).compute(data, n_bins)


def small_sample_warning(key: str, n: int) -> str | None:
    """A caution for binned metrics on fewer than ``SMALL_SAMPLE_THRESHOLD`` items, else ``None``.

    Binned estimates are biased upward on small samples (each bin's gap includes sampling noise) and vary a
    lot between runs, so a small-n ECE should not be compared across models.
    """
    info = get_metric(key)
    if not info.binned or n >= SMALL_SAMPLE_THRESHOLD:
        return None
    return (
        f"{info.display_name} from only {n} items (< {SMALL_SAMPLE_THRESHOLD}) is unstable and biased "
        "upward: bins hold few items, so sampling noise inflates |accuracy - confidence|. Evaluate more "
        "items (raise or drop --limit) and read the bootstrap error bar before comparing models."
    )
