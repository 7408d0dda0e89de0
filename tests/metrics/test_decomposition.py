"""Calibration / refinement: the part of Brier and NLL that recalibration removes, against known truths."""

from __future__ import annotations

import numpy as np
import pytest

from lm_eval_calib.metrics import (
    CalibrationInputError,
    OptionScores,
    TopLabel,
    calibration_refinement,
    cross_fitted_decompositions,
    recalibrate_cross_fitted,
    temperature_scaled,
)


def _top_label(n: int, power: float, seed: int) -> TopLabel:
    """Confidence c ~ U(0.25, 1) and P(correct | c) = c ** power (power 1: calibrated)."""
    rng = np.random.default_rng(seed)
    confidence = rng.uniform(0.25, 1.0, size=n)
    return TopLabel.build(confidence, rng.uniform(size=n) < confidence**power)


def test_top_label_calibration_loss_is_the_true_one():
    top = _top_label(20_000, power=2.0, seed=0)
    found = {d.loss: d for d in cross_fitted_decompositions(top, n_folds=5, seed=1)}
    c = 0.25 + 0.75 * (np.arange(200_000) + 0.5) / 200_000  # the true losses: E over c of the gap between c
    truth = c**2  # and P(correct | c) = c^2 (midpoint rule)
    true_brier = np.mean((c - truth) ** 2)
    true_nll = np.mean(truth * np.log(truth / c) + (1 - truth) * np.log((1 - truth) / (1 - c)))  # binary KL
    assert found["brier"].calibration == pytest.approx(true_brier, abs=0.002)
    assert found["nll"].calibration == pytest.approx(true_nll, abs=0.006)
    for d in found.values():
        assert d.kind == "top-label" and d.method in ("platt", "isotonic", "histogram")
        assert d.calibration + d.refinement == pytest.approx(d.total, abs=1e-12)
        assert d.calibration > 3 * d.calibration_stderr


def test_a_calibrated_model_has_almost_no_calibration_loss():
    top = _top_label(20_000, power=1.0, seed=2)
    for d in cross_fitted_decompositions(top, n_folds=5, seed=3):
        assert 0.0 <= d.calibration < 0.001 + 2 * d.calibration_stderr
        assert d.refinement <= d.total


def test_multi_class_calibration_loss_is_what_the_true_temperature_removes():
    rng = np.random.default_rng(4)
    logits = rng.normal(size=(20_000, 4)) * 3.0
    p = np.exp(logits / 2.0)
    p /= p.sum(axis=1, keepdims=True)
    targets = (rng.uniform(size=(20_000, 1)) > np.cumsum(p, axis=1)).sum(axis=1)
    scores = OptionScores.build(logits, targets)
    own = temperature_scaled(scores, 1.0)
    found = cross_fitted_decompositions(TopLabel(own.confidence, own.correct), scores, n_folds=5, seed=0)
    multi = {d.loss: d for d in found if d.kind == "multi-class"}
    oracle = temperature_scaled(scores, 2.0)  # the generating map, known here
    assert multi["nll"].total == pytest.approx(own.nll.mean())
    assert multi["nll"].calibration == pytest.approx(own.nll.mean() - oracle.nll.mean(), abs=0.003)
    assert multi["brier"].calibration == pytest.approx(own.brier.mean() - oracle.brier.mean(), abs=0.003)
    assert multi["nll"].method == "temperature"


def test_no_map_that_hurts_is_chosen_and_bad_inputs_are_named():
    top = _top_label(300, power=1.0, seed=5)
    histogram = recalibrate_cross_fitted("histogram", top, n_folds=5, seed=0)
    decomposition = calibration_refinement([histogram], "nll")
    if histogram.after.nll.mean() >= histogram.before.nll.mean():
        assert decomposition.method == "none" and decomposition.calibration == 0.0
    else:
        assert decomposition.calibration == pytest.approx(
            histogram.before.nll.mean() - histogram.after.nll.mean()
        )
    scores = OptionScores.build(np.random.default_rng(0).normal(size=(300, 4)), np.zeros(300, dtype=int))
    temperature = recalibrate_cross_fitted("temperature", scores, n_folds=5)
    with pytest.raises(CalibrationInputError, match="mix multi-class"):
        calibration_refinement([histogram, temperature], "brier")
    other = recalibrate_cross_fitted("platt", _top_label(300, power=1.0, seed=6), n_folds=5)
    with pytest.raises(CalibrationInputError, match="score different items"):
        calibration_refinement([histogram, other], "brier")
    with pytest.raises(CalibrationInputError, match="unknown loss 'ece'"):
        calibration_refinement([histogram], "ece")
    with pytest.raises(CalibrationInputError, match="at least one recalibration"):
        calibration_refinement([], "brier")
