"""Paired document-level bootstrap of metric differences, checked against an explicit resampling loop."""

from __future__ import annotations

import numpy as np
import pytest

from lm_eval_calib.metrics import CalibrationData, CalibrationInputError, compute_metric
from lm_eval_calib.metrics.bootstrap import resample_multiplicities
from lm_eval_calib.metrics.paired import PairedDifference, paired_difference


def _sample(rng, n, bias):
    """Items whose accuracy is confidence - bias: bias > 0 is over-confident."""
    confidence = rng.uniform(0.3, 1.0, n)
    correct = (rng.uniform(size=n) < np.clip(confidence - bias, 0, 1)).astype(float)
    return CalibrationData.from_top_label(confidence, correct)


def _subset(data: CalibrationData, index: np.ndarray) -> CalibrationData:
    return CalibrationData(
        confidence=data.confidence[index],
        correct=data.correct[index],
        brier=data.brier[index],
        nll=data.nll[index],
    )


def _loop_differences(key, a, b, groups_a, groups_b, n_docs, n_resamples, seed):
    """The same resamples, built item by item and scored with the plain (unbatched) metric."""
    out = []
    for chunk in resample_multiplicities(n_docs, n_resamples, seed):
        for doc_counts in chunk:
            index_a = np.repeat(np.arange(len(a)), doc_counts[groups_a])
            index_b = np.repeat(np.arange(len(b)), doc_counts[groups_b])
            out.append(compute_metric(key, _subset(b, index_b)) - compute_metric(key, _subset(a, index_a)))
    values = np.array(out)
    return values[~np.isnan(values)]


@pytest.mark.parametrize("key", ["ece", "ece_em", "brier", "auroc", "aurc", "smece"])
def test_interval_equals_an_explicit_resampling_loop(key):
    rng = np.random.default_rng(0)
    a, b = _sample(rng, 120, 0.2), _sample(rng, 120, 0.0)
    result = paired_difference(key, a, b, n_resamples=200, seed=7)
    loop = _loop_differences(key, a, b, np.arange(120), np.arange(120), 120, min(200, result.n_resamples), 7)
    assert result.difference == pytest.approx(compute_metric(key, b) - compute_metric(key, a), abs=1e-12)
    assert result.n_resamples == loop.size
    assert (result.low, result.high) == pytest.approx(tuple(np.percentile(loop, [2.5, 97.5])), abs=1e-10)


def test_documents_with_many_items_are_drawn_whole_even_when_item_counts_differ():
    """Two tokenizers: 30 documents cut into different numbers of tokens per model."""
    rng = np.random.default_rng(1)
    groups_a = np.repeat(np.arange(30), rng.integers(1, 6, 30))
    groups_b = np.repeat(np.arange(30), rng.integers(1, 6, 30))
    a, b = _sample(rng, groups_a.size, 0.1), _sample(rng, groups_b.size, 0.0)
    result = paired_difference("ece", a, b, groups_a, groups_b, n_resamples=150, seed=3)
    loop = _loop_differences("ece", a, b, groups_a, groups_b, 30, 150, 3)
    assert result.n_documents == 30
    assert (result.low, result.high) == pytest.approx(tuple(np.percentile(loop, [2.5, 97.5])), abs=1e-10)


def test_a_model_compared_with_itself_differs_by_exactly_zero():
    data = _sample(np.random.default_rng(2), 200, 0.1)
    result = paired_difference("ece", data, data, n_resamples=100)
    assert (result.difference, result.low, result.high) == (0.0, 0.0, 0.0)
    assert result.verdict("higher") == "inconclusive"


def test_a_clear_difference_is_supported_and_its_opposite_contradicted():
    rng = np.random.default_rng(3)
    over, calibrated = _sample(rng, 3000, 0.25), _sample(rng, 3000, 0.0)
    result = paired_difference("ece", calibrated, over, n_resamples=300)
    assert result.low > 0.15
    assert result.verdict("higher") == "supported"
    assert result.verdict("lower") == "contradicted"


def test_verdict_boundaries():
    base = dict(key="ece", value_a=0.1, value_b=0.2, difference=0.1, level=0.95, n_documents=5, n_resamples=9)
    assert PairedDifference(low=-0.01, high=0.2, **base).verdict("higher") == "inconclusive"
    assert PairedDifference(low=-0.3, high=-0.1, **base).verdict("lower") == "supported"
    with pytest.raises(CalibrationInputError, match="expect"):
        PairedDifference(low=0.0, high=0.1, **base).verdict("up")


def test_same_is_an_equivalence_check_against_the_margin():
    base = dict(key="ece", value_a=0.1, value_b=0.1, difference=0.0, level=0.95, n_documents=5, n_resamples=9)
    assert PairedDifference(low=-0.01, high=0.02, **base).verdict("same", 0.02) == "supported"
    assert PairedDifference(low=-0.01, high=0.03, **base).verdict("same", 0.02) == "inconclusive"
    assert PairedDifference(low=0.03, high=0.05, **base).verdict("same", 0.02) == "contradicted"
    assert PairedDifference(low=-0.09, high=-0.021, **base).verdict("same", 0.02) == "contradicted"
    # A wide interval around 0 is not evidence of "the same": that is the point of the margin.
    assert PairedDifference(low=-0.2, high=0.2, **base).verdict("same", 0.02) == "inconclusive"
    for margin in (None, 0.0, -0.1):
        with pytest.raises(CalibrationInputError, match="margin"):
            PairedDifference(low=0.0, high=0.0, **base).verdict("same", margin)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(groups_a=np.array([0, 1, 2]), groups_b=np.array([0, 1, 1])), "only one of the two samples"),
        (dict(groups_a=np.array([0, 1, 2])), "both groups_a and groups_b"),
        (dict(groups_a=np.array([0, 1]), groups_b=np.array([0, 1, 2])), "one document index per item"),
        (dict(level=1.5), "level"),
        (dict(n_resamples=1), "n_resamples"),
    ],
)
def test_bad_arguments_name_the_problem(kwargs, message):
    data = CalibrationData.from_top_label([0.5, 0.7, 0.9], [1, 0, 1])
    with pytest.raises(CalibrationInputError, match=message):
        paired_difference("ece", data, data, **kwargs)


def test_unequal_samples_without_documents_are_refused():
    a = CalibrationData.from_top_label([0.5, 0.7, 0.9], [1, 0, 1])
    b = CalibrationData.from_top_label([0.5, 0.7], [1, 0])
    with pytest.raises(CalibrationInputError, match="3 and 2 items"):
        paired_difference("ece", a, b)


# --- p-values (the test inversion of the percentile interval) and Holm's correction across claims ---------


def _difference(low: float, high: float, draws: np.ndarray) -> PairedDifference:
    return PairedDifference(
        key="ece",
        value_a=0.1,
        value_b=0.1,
        difference=float(np.mean(draws)),
        low=low,
        high=high,
        level=0.95,
        n_documents=50,
        n_resamples=draws.size,
        differences=draws,
    )


@pytest.mark.parametrize(
    ("expect", "margin", "draws", "expected"),
    [
        # higher / lower: 2 x the smaller share of resampled differences on one side of 0 (+1 / B+1)
        ("higher", None, np.r_[np.full(990, 0.02), np.full(9, -0.01)], 2 * (9 + 1) / 1000),
        ("lower", None, np.r_[np.full(990, 0.02), np.full(9, -0.01)], 2 * (9 + 1) / 1000),
        ("higher", None, np.zeros(999), 1.0),  # a model against itself: no evidence either way
        ("higher", None, np.full(999, 0.3), 2 / 1000),  # never 0: B resamples cannot show p < 2/(B+1)
        # same: 2 x the larger share beyond either margin (inside), or the smaller share inside (outside)
        ("same", 0.05, np.r_[np.full(980, 0.0), np.full(19, 0.06)], 2 * (19 + 1) / 1000),
        ("same", 0.05, np.full(999, 0.2), 2 / 1000),  # wholly outside the margin: decisive (contradicted)
        ("same", 0.05, np.r_[np.full(500, 0.1), np.full(499, 0.0)], 1.0),
    ],
)
def test_p_value_is_the_level_at_which_the_interval_becomes_decisive(expect, margin, draws, expected):
    assert _difference(0.0, 0.0, draws).p_value(expect, margin) == pytest.approx(expected)


@pytest.mark.parametrize("seed", range(4))
def test_p_value_below_5_percent_agrees_with_the_95_percent_interval_verdict(seed):
    rng = np.random.default_rng(seed)
    a, b = _sample(rng, 150, 0.15), _sample(rng, 150, 0.15 - 0.05 * seed)
    result = paired_difference("ece", a, b, n_resamples=400, seed=seed)
    assert result.differences is not None and result.differences.size == result.n_resamples
    for expect, margin in (("higher", None), ("lower", None), ("same", 0.04)):
        decisive = result.verdict(expect, margin) != "inconclusive"
        p = result.p_value(expect, margin)
        assert 0 < p <= 1
        if abs(p - 0.05) > 0.01:  # away from the boundary, where counting and interpolating may differ
            assert decisive == (p < 0.05), (expect, p, result.low, result.high)


def test_p_value_needs_the_resampled_differences():
    result = PairedDifference(
        key="ece",
        value_a=0.1,
        value_b=0.2,
        difference=0.1,
        low=0.05,
        high=0.15,
        level=0.95,
        n_documents=50,
        n_resamples=9,
    )
    with pytest.raises(CalibrationInputError, match="resampled differences"):
        result.p_value("higher")


def test_holm_adjustment_matches_the_step_down_by_hand():
    from lm_eval_calib.metrics.paired import holm_adjust

    # sorted 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1 = 0.02, 0.03, 0.06, 0.04 -> running max -> 0.06
    assert holm_adjust([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm_adjust([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1
    assert holm_adjust([0.2]) == pytest.approx([0.2])  # one claim: nothing to correct
    assert holm_adjust([]) == []
    with pytest.raises(CalibrationInputError, match="p-values"):
        holm_adjust([0.1, float("nan")])


@pytest.mark.parametrize(
    ("expect", "margin", "draws", "decision"),
    [
        ("higher", None, np.full(99, 0.1), "supported"),
        ("lower", None, np.full(99, 0.1), "contradicted"),
        ("lower", None, np.full(99, -0.1), "supported"),
        ("same", 0.05, np.full(99, 0.01), "supported"),
        ("same", 0.05, np.full(99, -0.2), "contradicted"),
    ],
)
def test_decision_names_the_verdict_the_p_value_is_evidence_for(expect, margin, draws, decision):
    assert _difference(0.0, 0.0, draws).decision(expect, margin) == decision
