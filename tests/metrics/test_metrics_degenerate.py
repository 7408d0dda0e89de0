"""Degenerate confidences are named (a code and the reason) instead of ECE 0.0000 and AUROC NaN printed
unexplained; the aggregation lm-eval calls logs each reason once per task."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lm_eval_calib.metrics import CalibrationInputError, compute_metric, degenerate_confidence
from lm_eval_calib.metrics.data import CalibrationData
from lm_eval_calib.options import CalibrationOptions
from lm_eval_calib.record_metrics import make_aggregation


def codes(confidence, correct) -> list[str]:
    return [flag.code for flag in degenerate_confidence(confidence, correct)]


def test_informative_samples_are_not_flagged():
    assert codes([0.9, 0.6, 0.3, 0.8], [1, 0, 0, 1]) == []
    assert codes([1e-7, 0.5], [0, 1]) == []  # one tiny confidence is not a degenerate sample
    assert codes([1.0, 0.99], [1, 0]) == []


@pytest.mark.parametrize(
    ("confidence", "correct", "expected", "words"),
    [
        ([3e-70, 1e-12, 4e-9], [0, 0, 1], ["tiny_confidence"], "ECE is just the accuracy (0.3333)"),
        ([3e-70, 1e-12], [0, 0], ["tiny_confidence", "single_class"], "all 2 confidences are below 1e-06"),
        ([1.0, 1.0, 1.0 - 1e-9], [1, 0, 0], ["saturated_confidence"], "ECE is just the error rate (0.6667)"),
        ([0.25, 0.25, 0.25], [1, 0, 0], ["constant_confidence"], "|accuracy - confidence| = 0.0833"),
        ([0.9, 0.6, 0.3], [1, 1, 1], ["single_class"], "AUROC is undefined (NaN): all 3 answers are correct"),
        ([0.9, 0.6, 0.3], [0, 0, 0], ["single_class"], "how far confidence is from 0"),
    ],
    ids=["tiny", "tiny-all-wrong", "saturated", "constant", "all-correct", "all-wrong"],
)
def test_degenerate_samples_are_named_with_the_reason(confidence, correct, expected, words):
    flags = degenerate_confidence(confidence, correct)
    assert [flag.code for flag in flags] == expected
    assert words in " ".join(flag.message for flag in flags)


def test_the_reasons_match_what_the_metrics_print():
    """The flagged conditions are exactly the ones where ECE and AUROC are read off trivially."""
    tiny = CalibrationData(np.array([1e-10, 1e-12, 1e-9]), np.zeros(3), np.ones(3), np.full(3, 20.0))
    assert compute_metric("ece", tiny) < 1e-6
    with pytest.warns(RuntimeWarning, match="AUROC is undefined"):
        assert math.isnan(compute_metric("auroc", tiny))
    constant = CalibrationData(np.full(4, 0.25), np.array([1.0, 0, 0, 0]), np.ones(4), np.ones(4))
    assert compute_metric("auroc", constant) == 0.5
    assert compute_metric("ece", constant) == pytest.approx(0.0)  # |0.25 - 0.25|: "calibrated", uninformative
    assert codes(constant.confidence, constant.correct) == ["constant_confidence"]


def test_bad_input_is_refused_as_by_the_metrics():
    with pytest.raises(CalibrationInputError):
        degenerate_confidence([], [])
    with pytest.raises(CalibrationInputError):
        degenerate_confidence([0.5, math.nan], [1, 0])


def _record(confidence: float, correct: int) -> dict:
    return {"confidence": confidence, "correct": correct, "brier": 1.0, "nll": 1.0, "category": None}


def test_aggregation_logs_each_reason_once_per_task_not_per_metric(caplog, recwarn):
    records = [_record(1e-10 * (i + 1), 0) for i in range(5)]
    warned: set = set()
    options = CalibrationOptions(max_bootstrap=0)
    aggregations = {
        key: make_aggregation(key, options, "calib_x (seqprob)", warned) for key in ("ece", "auroc")
    }
    with caplog.at_level("WARNING", logger="lm_eval_calib"):
        for aggregate in aggregations.values():
            aggregate(records)
        value = aggregations["auroc"](records)
    assert math.isnan(value)
    flagged = [r.getMessage() for r in caplog.records if "degenerate confidences" in r.getMessage()]
    assert len(flagged) == 2, flagged  # tiny_confidence and single_class, each once
    assert all(m.startswith("[calib_x (seqprob)] degenerate confidences (") for m in flagged)
    assert "(tiny_confidence): all 5 confidences are below 1e-06" in flagged[0]
    assert "(single_class): AUROC is undefined (NaN): all 5 answers are wrong" in flagged[1]
    # the task-named warning replaces the bare RuntimeWarning that named no task
    assert not [w for w in recwarn if "AUROC is undefined" in str(w.message)]
    # another estimator of the same task is a different sample: flagged under its own name
    other = make_aggregation("ece", options, "calib_x (ptrue)", warned)
    with caplog.at_level("WARNING", logger="lm_eval_calib"):
        other([_record(0.5, 0), _record(0.9, 1)])
    assert not [r for r in caplog.records if r.getMessage().startswith("[calib_x (ptrue)] degenerate")]
