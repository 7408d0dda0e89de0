"""Selective prediction: PRR as LM-Polygraph defines it, the oracle and random curves, selective accuracy."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from lm_eval_calib.metrics import (
    METRICS,
    CalibrationData,
    CalibrationInputError,
    aurc,
    bootstrap_stderr,
    compute_metric,
    prediction_rejection_ratio,
    risk_coverage_points,
    selective_accuracies,
    selective_accuracy,
)


def _polygraph_rejection_area(estimator: np.ndarray, target: np.ndarray) -> float:
    """LM-Polygraph's PredictionRejectionArea.__call__ (ue_metrics/pred_rej_area.py), step by step: mean over
    k of the mean quality of the k least uncertain items (``estimator``: higher = more uncertain)."""
    order = np.argsort(estimator)
    sorted_target = target[order]
    total, area = 0.0, 0.0
    for k in range(1, len(target) + 1):
        total += sorted_target[k - 1]
        area += total / k
    return area / len(target)


def _polygraph_prr(confidence: np.ndarray, correct: np.ndarray, n_random: int = 0) -> float:
    """normalize_metric(PRA(model), PRA(oracle), PRA(random)) as LM-Polygraph's benchmark computes PRR.

    The oracle's estimator is -target; the random score is the mean over shuffles (``get_random_scores``),
    whose expectation is the accuracy; ``n_random=0`` uses the expectation.
    """
    model = _polygraph_rejection_area(-confidence, correct)
    oracle = _polygraph_rejection_area(-correct, correct)
    if n_random:
        rng = np.random.default_rng(42)
        random = np.mean(
            [_polygraph_rejection_area(rng.permutation(len(correct)), correct) for _ in range(n_random)]
        )
    else:
        random = float(correct.mean())
    return (model - random) / (oracle - random)


def _sample(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    confidence = rng.uniform(0.25, 1.0, size=n)  # continuous: no ties, so any tie rule agrees
    return confidence, (rng.uniform(size=n) < confidence**1.5).astype(float)


@pytest.mark.parametrize("seed", range(3))
def test_prr_is_lm_polygraphs(seed):
    confidence, correct = _sample(2000, seed)
    ours = prediction_rejection_ratio(confidence, correct)
    assert ours == pytest.approx(_polygraph_prr(confidence, correct), abs=1e-9)
    assert 0.1 < ours < 0.9
    assert compute_metric("prr", CalibrationData.from_top_label(confidence, correct)) == ours


def test_prr_random_part_is_the_expectation_of_lm_polygraphs_shuffles():
    confidence, correct = _sample(300, 5)
    shuffled = _polygraph_prr(confidence, correct, n_random=400)
    assert prediction_rejection_ratio(confidence, correct) == pytest.approx(shuffled, abs=0.02)


def test_prr_ends_oracle_one_reverse_negative_single_class_nan():
    correct = np.array([0, 1, 1, 0, 1, 1, 1, 0], dtype=float)
    assert prediction_rejection_ratio(0.5 + 0.4 * correct, correct) == pytest.approx(1.0)
    assert prediction_rejection_ratio(0.9 - 0.4 * correct, correct) < -0.5
    with warnings.catch_warnings():  # nan, silently: the aggregation warns about one-class records once
        warnings.simplefilter("error")
        assert math.isnan(prediction_rejection_ratio([0.3, 0.9], [1.0, 1.0]))
        assert math.isnan(prediction_rejection_ratio([0.3, 0.9], [0.0, 0.0]))
    assert METRICS["prr"].higher_is_better


def test_curves_are_the_model_oracle_and_random_risks():
    confidence, correct = _sample(1000, 6)
    curve = risk_coverage_points(confidence, correct, max_points=50)
    assert curve.coverage[-1] == 1.0 and len(curve.coverage) == 50
    order = np.argsort(-confidence)
    n_correct = correct.sum()
    for c, model, oracle, random in zip(curve.coverage, curve.model, curve.oracle, curve.random, strict=True):
        k = round(c * 1000)
        assert model == pytest.approx(1.0 - correct[order[:k]].mean(), abs=1e-12)
        assert oracle == pytest.approx(max(0.0, k - n_correct) / k, abs=1e-12)
        assert random == pytest.approx(1.0 - n_correct / 1000, abs=1e-12)
    assert np.all(curve.oracle <= curve.model + 1e-12)
    assert curve.aurc == pytest.approx(aurc(confidence, correct))
    assert curve.prr == prediction_rejection_ratio(confidence, correct)


def test_selective_accuracies_are_selective_accuracy_at_each_coverage():
    confidence, correct = _sample(777, 7)
    found = selective_accuracies(confidence, correct, (0.1, 0.5, 0.8, 1.0))
    for coverage, value in found.items():
        assert value == selective_accuracy(confidence, correct, coverage)
    assert found[1.0] == pytest.approx(correct.mean())
    with pytest.raises(CalibrationInputError, match="coverage 1.5 is not in"):
        selective_accuracies(confidence, correct, (0.5, 1.5))
    with pytest.raises(CalibrationInputError, match="coverages must be a list"):
        selective_accuracies(confidence, correct, 0.5)


def test_prr_bootstrap_stderr_matches_a_loop_over_resamples():
    confidence, correct = _sample(400, 8)
    data = CalibrationData.from_top_label(confidence, correct)
    stderr = bootstrap_stderr("prr", data, n_resamples=300, seed=3)
    rng = np.random.default_rng(99)
    loop = []
    for _ in range(300):
        pick = rng.integers(0, 400, size=400)
        loop.append(prediction_rejection_ratio(confidence[pick], correct[pick]))
    assert stderr == pytest.approx(np.std(loop, ddof=1), rel=0.2)  # same distribution, other draws
    assert 0.01 < stderr < 0.2
