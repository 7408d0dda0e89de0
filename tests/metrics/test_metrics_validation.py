"""Every malformed input raises CalibrationInputError naming the offending detail."""

from __future__ import annotations

import numpy as np
import pytest

from lm_eval_calib.metrics import (
    CalibrationData,
    CalibrationInputError,
    bin_statistics,
    bootstrap_stderr,
    brier_score,
    check_confidence_correct,
    check_option_logprobs,
    check_option_probs,
    compute_metric,
    expected_calibration_error,
    negative_log_likelihood,
    selective_accuracy,
    small_sample_warning,
)


@pytest.mark.parametrize(
    ("confidence", "correct", "pattern"),
    [
        ([], [], "confidence is empty"),
        ([0.5, np.nan, 0.2, np.nan], [1, 0, 1, 0], r"2 NaN values \(first at index 1\)"),
        ([0.5, np.inf], [1, 0], r"1 infinite value \(first at index 1\)"),
        ([0.5, 1.2], [1, 0], r"outside \[0, 1\] \(first at index 1: 1.2\)"),
        ([-0.1], [1], "outside"),
        ([0.5, 0.6, 0.7], [1, 0], "3 items but correct has 2"),
        ([0.5, 0.6], [1, 2], r"other than 0/1 \(first at index 1: 2.0\)"),
        ([[0.5, 0.6]], [[1, 0]], r"must be 1-D .* shape \(1, 2\)"),
        (["a"], [1], "dtype"),
    ],
)
def test_confidence_correct_errors(confidence, correct, pattern: str) -> None:
    with pytest.raises(CalibrationInputError, match=pattern):
        check_confidence_correct(confidence, correct)
    with pytest.raises(CalibrationInputError, match=pattern):
        expected_calibration_error(confidence, correct)


def test_bools_and_ints_accepted() -> None:
    conf, correct = check_confidence_correct(np.array([0, 1]), np.array([True, False]))
    assert conf.dtype == np.float64 and correct.tolist() == [1.0, 0.0]


@pytest.mark.parametrize(
    ("rows", "targets", "pattern"),
    [
        ([], [], "logprobs is empty"),
        ([[-1.0], []], [0, 0], "row 1 has no options"),
        ([[-1.0, np.nan]], [0], r"nan in row 0, option 1"),
        ([[-1.0], [-2.0, -np.inf]], [0, 0], r"-inf in row 1, option 1"),
        ([[-1.0, -2.0]], [0, 1], "targets has 2 entries but logprobs has 1 rows"),
        ([[-1.0, -2.0], [-1.0]], [1, 1], r"targets\[1\] = 1 but logprobs row 1 has 1 options \(valid 0..0\)"),
        ([[-1.0, -2.0]], [-1], r"targets\[0\] = -1"),
        ([[-1.0, -2.0]], [0.5], "dtype float64"),
        ([[[-1.0]]], [0], "row 0 has shape"),
    ],
)
def test_option_logprob_errors(rows, targets, pattern: str) -> None:
    with pytest.raises(CalibrationInputError, match=pattern):
        check_option_logprobs(rows, targets)
    with pytest.raises(CalibrationInputError, match=pattern):
        CalibrationData.from_option_logprobs(rows, targets)


@pytest.mark.parametrize(
    ("rows", "pattern"),
    [
        ([[0.5, 0.5], [0.2, 0.7]], r"probs row 1 sums to 0.9,"),
        ([[1.5, -0.5]], r"row 0 has value 1.5 outside \[0, 1\]"),
        ([[0.5, np.nan]], "nan in row 0"),
    ],
)
def test_option_prob_errors(rows, pattern: str) -> None:
    with pytest.raises(CalibrationInputError, match=pattern):
        check_option_probs(rows, [0] * len(rows))
    with pytest.raises(CalibrationInputError, match=pattern):
        brier_score(rows, [0] * len(rows))


def test_negative_log_likelihood_kind() -> None:
    with pytest.raises(CalibrationInputError, match="unknown kind 'logits'"):
        negative_log_likelihood([[0.5, 0.5]], [0], kind="logits")
    with pytest.raises(CalibrationInputError, match="row 0 sums to 0.5,"):
        negative_log_likelihood([[0.2, 0.3]], [0], kind="probs")
    # Logits that happen to be valid probabilities are read as probabilities unless kind says otherwise.
    assert negative_log_likelihood([[0.2, 0.8]], [1]) == pytest.approx(-np.log(0.8))
    assert negative_log_likelihood([[0.2, 0.8]], [1], kind="logprobs") == pytest.approx(
        -(0.8 - np.log(np.exp(0.2) + np.exp(0.8)))
    )


def test_other_argument_errors() -> None:
    with pytest.raises(CalibrationInputError, match="unknown binning scheme 'quantile'"):
        expected_calibration_error([0.5], [1], scheme="quantile")
    with pytest.raises(CalibrationInputError, match="unknown binning scheme"):
        bin_statistics([0.5], [1], scheme="Width")
    with pytest.raises(CalibrationInputError, match="n_bins must be an integer >= 1, got 0"):
        bin_statistics([0.5], [1], n_bins=0)
    data = CalibrationData.from_top_label([0.5], [1])
    for call in (lambda: compute_metric("ECE", data), lambda: small_sample_warning("calib", 3)):
        with pytest.raises(
            CalibrationInputError, match=r"unknown metric .*known metrics are: acc, ece, ece_em"
        ):
            call()
    with pytest.raises(CalibrationInputError, match="coverage must be a number in"):
        selective_accuracy([0.5], [1], 0.0)
    with pytest.raises(CalibrationInputError, match="n_resamples must be"):
        bootstrap_stderr("ece", data, n_resamples=0)
    with pytest.raises(CalibrationInputError, match=r"nll\[1\] = -1.0"):
        CalibrationData.from_top_label([0.5, 0.5], [1, 0], nll=[0.1, -1.0])
    with pytest.raises(CalibrationInputError, match="no CalibrationData"):
        CalibrationData.concatenate([])
