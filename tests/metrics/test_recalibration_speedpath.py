"""Fast paths of cross-fitted recalibration (issue 25, P4) give the general paths' numbers, to the bit.

Same-width options are scored as an (n, K) matrix instead of ragged rows, isotonic regression sorts once for
all folds, Platt scaling takes the logits once, and the three after-recalibration stderrs share one sort and
one set of resample draws. None of this may change a number: each test runs the general path on the same
data and asserts exact equality.
"""

from __future__ import annotations

import numpy as np
import pytest

from lm_eval_calib.metrics import (
    CalibrationData,
    OptionScores,
    TopLabel,
    bootstrap_stderr,
    fit_platt,
    recalibrate_cross_fitted,
    recalibrate_held_out,
)
from lm_eval_calib.metrics import recalibration as recal
from lm_eval_calib.metrics.bootstrap import CELL_BOOTSTRAP_MIN_ITEMS
from lm_eval_calib.metrics.nonparametric import fit_isotonic, isotonic_map
from lm_eval_calib.metrics.prepared import PreparedData
from lm_eval_calib.metrics.ragged import RaggedRows
from lm_eval_calib.metrics.recalibration import (
    METHODS,
    TOP_LABEL_METHODS,
    after_stderrs,
    dense_rows,
    fold_of_units,
    row_sums,
)


def _documents(n: int, options: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, options)) * 2.5
    logits[: n // 10] = np.round(logits[: n // 10])  # tied options and tied confidences
    p = np.exp(logits / 1.6)
    p /= p.sum(axis=1, keepdims=True)
    targets = (rng.uniform(size=(n, 1)) > np.cumsum(p, axis=1)).sum(axis=1)
    return logits, np.minimum(targets, options - 1)


def _assert_same(a: CalibrationData, b: CalibrationData) -> None:
    for name in ("confidence", "correct", "brier", "nll"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)


@pytest.mark.parametrize("options", range(1, 9))
def test_row_sums_add_in_reduceat_order(options):
    matrix = np.random.default_rng(options).normal(size=(5000, options)) * 10.0 ** np.arange(options)
    flat = RaggedRows.from_lengths(matrix.ravel(), np.full(5000, options))
    assert dense_rows(flat) is not None
    np.testing.assert_array_equal(row_sums(matrix), flat.row_sum(flat.values))


def test_dense_rows_only_for_same_width_rows():
    assert dense_rows(RaggedRows.from_lengths(np.zeros(7), np.array([3, 4]))) is None
    assert dense_rows(RaggedRows.from_lengths(np.zeros(18), np.full(2, 9))) is None  # past the exact range
    assert dense_rows(RaggedRows.from_lengths(np.zeros(8), np.full(2, 4))).shape == (2, 4)


@pytest.mark.parametrize("method", [m for m in METHODS if m not in TOP_LABEL_METHODS])
def test_matrix_path_equals_ragged_path(method, monkeypatch):
    logits, targets = _documents(3000, 4, seed=1)
    scores = OptionScores.build(logits, targets)
    fast = recalibrate_cross_fitted(method, scores, n_folds=5, seed=3)
    fast_held = recalibrate_held_out(method, scores.take(np.arange(1000)), scores.take(np.arange(1000, 3000)))
    monkeypatch.setattr(recal, "dense_rows", lambda rows: None)  # the ragged rows code, as before P4
    slow = recalibrate_cross_fitted(method, scores, n_folds=5, seed=3)
    slow_held = recalibrate_held_out(method, scores.take(np.arange(1000)), scores.take(np.arange(1000, 3000)))
    assert fast.fold_parameters == slow.fold_parameters and fast.parameters == slow.parameters
    assert fast_held.parameters == slow_held.parameters
    _assert_same(fast.before, slow.before)
    _assert_same(fast.after, slow.after)
    _assert_same(fast_held.after, slow_held.after)


def test_isotonic_and_platt_fold_fits_equal_one_fit_per_fold():
    logits, targets = _documents(4000, 4, seed=2)
    data = CalibrationData.from_option_logprobs(logits, targets)
    top = TopLabel(np.round(data.confidence, 3), data.correct)  # many tied confidences
    fold = fold_of_units(len(top), 5, 7)
    iso = recalibrate_cross_fitted("isotonic", top, n_folds=5, seed=7)
    platt = recalibrate_cross_fitted("platt", top, n_folds=5, seed=7)
    for k in range(5):
        train, test = np.flatnonzero(fold != k), np.flatnonzero(fold == k)
        fit = fit_isotonic(top.confidence[train], top.correct[train])
        np.testing.assert_array_equal(iso.after.confidence[test], isotonic_map(fit, top.confidence[test]))
        slope_intercept = fit_platt(top.take(train))
        assert platt.fold_parameters[k] == {
            "slope": slope_intercept.slope,
            "intercept": slope_intercept.intercept,
        }


@pytest.mark.parametrize("n", [2000, CELL_BOOTSTRAP_MIN_ITEMS + 20_000])
@pytest.mark.parametrize("method", ["temperature", "isotonic"])
def test_after_stderrs_equal_bootstrap_stderr(n, method):
    logits, targets = _documents(n, 4, seed=4)
    data = CalibrationData.from_option_logprobs(logits, targets)
    split = (
        TopLabel(data.confidence, data.correct)
        if method == "isotonic"
        else OptionScores.build(logits, targets)
    )
    after = recalibrate_cross_fitted(method, split, n_folds=5, seed=0).after
    resamples = 40 if n > CELL_BOOTSTRAP_MIN_ITEMS else 200
    shared = after_stderrs(after, n_resamples=resamples, seed=9, top_label=method == "isotonic")
    for key, value in shared.items():
        assert value == bootstrap_stderr(key, after, n_resamples=resamples, seed=9), key


@pytest.mark.parametrize("method", METHODS)
def test_the_faster_sort_is_preparedatas_permutation(method):
    logits, targets = _documents(5000, 4, seed=5)
    data = CalibrationData.from_option_logprobs(logits, targets)
    top = TopLabel(np.round(data.confidence, 2), data.correct)
    split = top if method in TOP_LABEL_METHODS else OptionScores.build(logits, targets)
    for found in (recalibrate_cross_fitted(method, split, n_folds=5, seed=1).after, data):
        top_label = method in TOP_LABEL_METHODS and found is not data
        fast, reference = recal._prepared(found, top_label).data, PreparedData.build(found).data
        _assert_same(fast, reference)
