"""Temperature, Platt, isotonic and histogram recalibration: optimal fits, the maps of scikit-learn and
netcal, and never scored on the items they were fitted on."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from netcal.binning import HistogramBinning
from scipy.optimize import minimize, minimize_scalar
from sklearn.isotonic import IsotonicRegression

from lm_eval_calib.metrics import (
    CalibrationData,
    CalibrationInputError,
    OptionScores,
    TopLabel,
    compute_metric,
    fit_platt,
    fit_temperature,
    platt_scaled,
    recalibrate_cross_fitted,
    recalibrate_held_out,
    temperature_scaled,
)
from lm_eval_calib.metrics.nonparametric import (
    _stack_pava,
    fit_histogram,
    fit_isotonic,
    histogram_map,
    isotonic_map,
    pool_adjacent_violators,
)
from lm_eval_calib.metrics.recalibration import fold_of_units, temperature_range, top_label_data


def _ragged_sample(n: int, true_temperature: float, seed: int) -> tuple[list[np.ndarray], list[int]]:
    """Option log-likelihoods whose gold option is drawn from softmax(loglik / true_temperature)."""
    rng = np.random.default_rng(seed)
    logits, targets = [], []
    for k in rng.integers(2, 7, size=n):
        row = rng.normal(size=k) * 3.0 - 20.0  # lm-eval style: large negative sums
        p = np.exp((row - row.max()) / true_temperature)
        logits.append(row)
        targets.append(int(rng.choice(k, p=p / p.sum())))
    return logits, targets


def test_temperature_is_the_nll_minimiser_and_recovers_the_generating_one():
    logits, targets = _ragged_sample(20_000, true_temperature=2.5, seed=0)
    scores = OptionScores.build(logits, targets)
    fit = fit_temperature(scores)

    def nll(t: float) -> float:
        return float(temperature_scaled(scores, t).nll.mean())

    bounds = temperature_range(scores)
    reference = minimize_scalar(nll, bounds=bounds, method="bounded", options={"xatol": 1e-10})
    assert fit.temperature == pytest.approx(reference.x, rel=1e-6) and not fit.at_bound
    assert nll(fit.temperature) <= nll(fit.temperature * 1.001) and nll(fit.temperature) <= nll(
        0.999 * fit.temperature
    )
    assert fit.temperature == pytest.approx(2.5, rel=0.05)


def test_temperature_one_is_the_model_and_no_temperature_changes_a_prediction():
    logits, targets = _ragged_sample(500, true_temperature=1.0, seed=1)
    scores = OptionScores.build(logits, targets)
    own = CalibrationData.from_option_logprobs(logits, targets)
    at_one = temperature_scaled(scores, 1.0)
    for name in ("confidence", "correct", "brier", "nll"):
        np.testing.assert_allclose(getattr(at_one, name), getattr(own, name), rtol=0, atol=1e-12)
    for t in (0.05, 0.7, 3.0, 80.0):
        np.testing.assert_array_equal(temperature_scaled(scores, t).correct, own.correct)
    with pytest.raises(CalibrationInputError, match="temperature must be finite and > 0"):
        temperature_scaled(scores, 0.0)


def test_temperature_bounds_and_no_signal():
    sharp = OptionScores.build([[0.0, -50.0, -60.0]] * 30, [0] * 30)  # always right with a wide margin
    fit = fit_temperature(sharp)
    assert fit.at_bound and fit.temperature == temperature_range(sharp)[0]
    wrong = OptionScores.build([[0.0, -1.0]] * 30, [1] * 30)  # always wrong: as flat as allowed
    fit = fit_temperature(wrong)
    assert fit.at_bound and fit.temperature == temperature_range(wrong)[1]
    # At the upper bound the map is uniform to within 1e-3, whatever the scale of the log-likelihoods.
    flattest = temperature_scaled(wrong, temperature_range(wrong)[1])
    assert abs(flattest.confidence - 0.5).max() < 1e-3
    flat = OptionScores.build([[-3.0, -3.0, -3.0]] * 10, [0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
    assert fit_temperature(flat).temperature == 1.0 and not fit_temperature(flat).at_bound


def test_temperature_is_not_clamped_for_log_likelihoods_spread_over_hundreds_of_nats():
    """A fixed bound of 100 once gave ECE 0.205 where the optimum (T about 250) gives about 0.01."""
    rng = np.random.default_rng(5)
    logits, targets = [], []
    for _ in range(4000):
        row = rng.normal(size=4) * 400.0 - 3000.0  # option log-likelihoods hundreds of nats apart
        p = np.exp((row - row.max()) / 250.0)
        logits.append(row)
        targets.append(int(rng.choice(4, p=p / p.sum())))
    fit_on = OptionScores.build(logits[:2000], targets[:2000])
    score_on = OptionScores.build(logits[2000:], targets[2000:])
    fit = fit_temperature(fit_on)
    assert not fit.at_bound and fit.temperature == pytest.approx(250.0, rel=0.1)
    low, high = temperature_range(fit_on)
    assert low < fit.temperature < high
    result = recalibrate_held_out("temperature", fit_on, score_on)
    assert not result.at_bound and compute_metric("ece", result.after) < 0.03
    assert compute_metric("ece", temperature_scaled(score_on, 100.0)) > 0.1  # what the old bound gave


def test_the_temperature_range_scales_with_the_spread_of_the_log_likelihoods():
    logits, targets = _ragged_sample(300, true_temperature=1.0, seed=6)
    base = OptionScores.build(logits, targets)
    scaled = OptionScores.build([row * 1000.0 for row in logits], targets)
    np.testing.assert_allclose(temperature_range(scaled), np.multiply(temperature_range(base), 1000.0))
    assert fit_temperature(scaled).temperature == pytest.approx(1000.0 * fit_temperature(base).temperature)


def test_platt_is_the_smoothed_logistic_fit():
    rng = np.random.default_rng(2)
    confidence = rng.uniform(0.05, 0.99, size=3000)
    correct = (rng.uniform(size=3000) < confidence**2).astype(float)  # over-confident
    top = TopLabel.build(confidence, correct)
    fit = fit_platt(top)
    x = np.log(confidence) - np.log1p(-confidence)
    n_pos, n_neg = correct.sum(), (1 - correct).sum()
    y = np.where(correct > 0, (n_pos + 1) / (n_pos + 2), 1 / (n_neg + 2))

    def loss(ab: np.ndarray) -> float:
        z = ab[0] * x + ab[1]
        return float(np.mean(y * np.logaddexp(0, -z) + (1 - y) * np.logaddexp(0, z)))

    reference = minimize(loss, [1.0, 0.0], method="BFGS", options={"gtol": 1e-12})
    np.testing.assert_allclose([fit.slope, fit.intercept], reference.x, atol=1e-5)
    after = platt_scaled(top, fit)
    assert compute_metric("ece", after) < 0.5 * compute_metric("ece", platt_scaled(top, None))
    np.testing.assert_array_equal(platt_scaled(top, None).confidence, confidence)  # "before" is the input


def test_held_out_fits_on_one_split_and_scores_the_other():
    logits, targets = _ragged_sample(4000, true_temperature=2.0, seed=3)
    fit_on = OptionScores.build(logits[:1500], targets[:1500])
    score_on = OptionScores.build(logits[1500:], targets[1500:])
    result = recalibrate_held_out("temperature", fit_on, score_on)
    assert result.parameters["temperature"] == fit_temperature(fit_on).temperature
    assert result.n_fit == 1500 and len(result.after) == 2500 and result.scheme == "held-out"
    expected = temperature_scaled(score_on, result.parameters["temperature"])
    np.testing.assert_array_equal(result.after.confidence, expected.confidence)
    np.testing.assert_array_equal(result.before.confidence, temperature_scaled(score_on, 1.0).confidence)
    assert compute_metric("ece", result.after) < compute_metric("ece", result.before)
    assert result.after.nll.mean() < result.before.nll.mean()


@pytest.mark.parametrize("method", ["temperature", "platt"])
def test_cross_fit_scores_each_fold_with_the_fit_of_the_other_folds(method):
    logits, targets = _ragged_sample(1000, true_temperature=2.0, seed=4)
    scores = OptionScores.build(logits, targets)
    own = temperature_scaled(scores, 1.0)
    split = scores if method == "temperature" else TopLabel.build(own.confidence, own.correct)
    groups = np.arange(1000) // 7  # e.g. documents of 7 tokens: a group never straddles folds
    result = recalibrate_cross_fitted(method, split, n_folds=5, seed=11, groups=groups)
    unit_fold = fold_of_units(len(np.unique(groups)), 5, 11)
    fold = unit_fold[groups]
    sizes = np.bincount(unit_fold)
    assert sizes.sum() == 143 and sizes.max() - sizes.min() <= 1
    for k in range(5):
        train, test = np.flatnonzero(fold != k), np.flatnonzero(fold == k)
        if method == "temperature":
            t = fit_temperature(scores.take(train)).temperature
            assert result.fold_parameters[k]["temperature"] == t
            expected = temperature_scaled(scores.take(test), t).confidence
        else:
            fit = fit_platt(split.take(train))
            assert result.fold_parameters[k] == {"slope": fit.slope, "intercept": fit.intercept}
            expected = platt_scaled(split.take(test), fit).confidence
        np.testing.assert_array_equal(result.after.confidence[test], expected)
    np.testing.assert_array_equal(result.before.confidence, own.confidence)  # caller's item order
    np.testing.assert_array_equal(result.after.correct, own.correct)


def test_take_keeps_ragged_rows_intact():
    scores = OptionScores.build([[-1.0, -2.0], [-3.0, -4.0, -5.0], [-6.0]], [1, 2, 0])
    part = scores.take(np.array([0, 2]))
    np.testing.assert_array_equal(part.rows.values, [-1.0, -2.0, -6.0])
    np.testing.assert_array_equal(part.targets, [1, 0])


def test_bad_arguments_are_named():
    scores = OptionScores.build([[-1.0, -2.0]] * 12, [0] * 6 + [1] * 6)
    top = TopLabel.build([0.6] * 12, [1] * 6 + [0] * 6)
    with pytest.raises(CalibrationInputError, match="unknown recalibration method 'beta'"):
        recalibrate_cross_fitted("beta", scores)
    with pytest.raises(CalibrationInputError, match="platt scaling needs TopLabel"):
        recalibrate_held_out("platt", scores, scores)
    with pytest.raises(CalibrationInputError, match="isotonic scaling needs TopLabel"):
        recalibrate_cross_fitted("isotonic", scores)
    with pytest.raises(CalibrationInputError, match="n_folds must be an integer >= 2"):
        recalibrate_cross_fitted("histogram", top, n_folds=1)
    with pytest.raises(CalibrationInputError, match="needs at least 13 items, got 12"):
        recalibrate_cross_fitted("isotonic", top, n_folds=13)
    with pytest.raises(CalibrationInputError, match="n_folds must be an integer >= 2"):
        recalibrate_cross_fitted("platt", top, n_folds=1)
    with pytest.raises(CalibrationInputError, match="needs at least 5 groups, got 2"):
        recalibrate_cross_fitted("platt", top, n_folds=5, groups=np.array([0] * 6 + [1] * 6))
    with pytest.raises(CalibrationInputError, match="groups must hold one id per item"):
        recalibrate_cross_fitted("platt", top, groups=np.arange(3))
    with pytest.raises(CalibrationInputError, match="seed must be an integer >= 0"):
        recalibrate_cross_fitted("temperature", scores, seed=-1)
    with pytest.raises(CalibrationInputError, match="targets"):
        OptionScores.build([[-1.0, -2.0]], [2])


def _over_confident(n: int, seed: int, ties: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Real-looking top-label data: confidences in [0.25, 1) (some rounded to 2 decimals, as many tied
    confidences as a 4-option task gives) and correctness drawn at confidence**2."""
    rng = np.random.default_rng(seed)
    confidence = rng.uniform(0.25, 1.0, size=n)
    if ties:
        confidence[: n // 5] = np.round(confidence[: n // 5], 2)
    return confidence, (rng.uniform(size=n) < confidence**2).astype(float)


@pytest.mark.parametrize("seed", range(4))
def test_isotonic_is_scikit_learns_map(seed):
    confidence, correct = _over_confident(3000, seed)
    fit = fit_isotonic(confidence, correct)
    reference = IsotonicRegression(out_of_bounds="clip").fit(confidence, correct)
    new = np.random.default_rng(100 + seed).uniform(0.0, 1.0, size=2000)  # inside, between and outside
    for points in (confidence, new):
        np.testing.assert_allclose(isotonic_map(fit, points), reference.predict(points), rtol=0, atol=1e-9)
    assert np.all(np.diff(fit.y) >= 0) and fit.n_steps < 100  # a monotone step function, few levels


def test_pava_is_the_least_squares_monotone_fit():
    rng = np.random.default_rng(5)
    values, weights = rng.normal(size=40), rng.uniform(0.5, 3.0, size=40)
    fitted = pool_adjacent_violators(values, weights)
    assert np.all(np.diff(fitted) >= -1e-15)
    loss = float(np.sum(weights * (fitted - values) ** 2))
    for _ in range(200):  # no monotone perturbation does better
        other = np.maximum.accumulate(fitted + rng.normal(scale=0.05, size=40))
        assert np.sum(weights * (other - values) ** 2) >= loss - 1e-12


def test_vectorised_pava_passes_end_where_the_stack_loop_ends():
    rng = np.random.default_rng(6)
    confidence = np.sort(rng.uniform(size=50_000))
    noisy = (rng.uniform(size=50_000) < confidence).astype(float)
    cascade = np.concatenate([np.arange(20_000.0), [0.0]])  # one merge per vectorised pass: handed over
    for values in (noisy, cascade, rng.normal(size=5000)):
        weights = rng.integers(1, 4, size=values.shape[0]).astype(float)
        np.testing.assert_allclose(
            pool_adjacent_violators(values, weights), _stack_pava(values, weights), rtol=0, atol=1e-12
        )


@pytest.mark.parametrize("n_bins", [5, 10, 15])
def test_histogram_binning_is_netcals_map(n_bins):
    confidence, correct = _over_confident(3000, n_bins)
    confidence[:40] = np.random.default_rng(0).uniform(0.0, 0.05, size=40)  # and empty bins in between
    fit = fit_histogram(confidence, correct, n_bins)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # netcal's own deprecation chatter
        reference = HistogramBinning(bins=n_bins).fit(confidence, correct)
        new = np.random.default_rng(n_bins).uniform(0.0, 1.0, size=2000)
        expected = reference.transform(new)
    np.testing.assert_allclose(histogram_map(fit, new), expected, rtol=0, atol=1e-9)
    edges = np.linspace(0.0, 1.0, n_bins + 1)  # bin k is [edges[k], edges[k + 1]), the last one closed
    for k in range(n_bins):
        inside = (confidence >= edges[k]) & ((confidence < edges[k + 1]) | (k == n_bins - 1))
        expected_value = correct[inside].mean() if inside.any() else (edges[k] + edges[k + 1]) / 2
        assert fit.values[k] == pytest.approx(expected_value, abs=1e-12) and fit.counts[k] == inside.sum()


def test_histogram_bins_are_half_open_and_empty_bins_keep_their_midpoint():
    fit = fit_histogram(np.array([0.1, 0.2, 0.2, 0.95, 1.0]), np.array([1.0, 0.0, 1.0, 0.0, 1.0]), 10)
    np.testing.assert_array_equal(fit.counts, [0, 1, 2, 0, 0, 0, 0, 0, 0, 2])
    assert fit.values[2] == 0.5 and fit.values[9] == 0.5 and fit.values[4] == 0.45
    np.testing.assert_array_equal(histogram_map(fit, np.array([0.2, 0.1999, 1.0])), [0.5, 1.0, 0.5])


@pytest.mark.parametrize("method", ["isotonic", "histogram"])
def test_nonparametric_maps_go_through_the_same_held_out_and_cross_fitted_paths(method):
    confidence, correct = _over_confident(4000, 7)
    top = TopLabel.build(confidence, correct)
    fit_on, score_on = top.take(np.arange(1500)), top.take(np.arange(1500, 4000))
    fitted = (
        isotonic_map(fit_isotonic(fit_on.confidence, fit_on.correct), score_on.confidence)
        if method == "isotonic"
        else histogram_map(fit_histogram(fit_on.confidence, fit_on.correct), score_on.confidence)
    )
    held = recalibrate_held_out(method, fit_on, score_on)
    np.testing.assert_array_equal(held.after.confidence, fitted)
    np.testing.assert_array_equal(held.before.confidence, score_on.confidence)
    expected = top_label_data(fitted, score_on.correct)
    np.testing.assert_array_equal(held.after.nll, expected.nll)
    assert compute_metric("ece", held.after) < 0.5 * compute_metric("ece", held.before)
    assert held.after.brier.mean() < held.before.brier.mean()

    crossed = recalibrate_cross_fitted(method, top, n_folds=5, seed=3)
    fold = fold_of_units(4000, 5, 3)
    for k in range(5):
        train, test = np.flatnonzero(fold != k), np.flatnonzero(fold == k)
        one = recalibrate_held_out(method, top.take(train), top.take(test))
        np.testing.assert_array_equal(crossed.after.confidence[test], one.after.confidence)
        assert crossed.fold_parameters[k] == one.parameters
    np.testing.assert_array_equal(crossed.before.confidence, confidence)
    assert compute_metric("ece", crossed.after) < 0.5 * compute_metric("ece", crossed.before)


def test_a_map_to_zero_or_one_costs_a_clipped_log_loss_not_infinity():
    data = top_label_data(np.array([0.0, 1.0, 1.0]), np.array([1.0, 0.0, 1.0]))
    assert np.all(np.isfinite(data.nll)) and data.nll[0] == pytest.approx(-np.log(1e-12), rel=1e-6)
    assert data.nll[2] == pytest.approx(0.0, abs=1e-11)


def _four_options(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """MMLU-like documents: 4 positional options, gold drawn from a flatter softmax (over-confidence)."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, 4)) * 2.0 - 12.0
    p = np.exp((logits - logits.max(axis=1, keepdims=True)) / 1.7)
    p /= p.sum(axis=1, keepdims=True)
    return logits, (rng.uniform(size=(n, 1)) > np.cumsum(p, axis=1)).sum(axis=1)


def test_per_option_histogram_binning_is_netcals_multi_class_map():
    logits, targets = _four_options(3000, 8)
    scores = OptionScores.build(logits, targets)
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    new_logits, new_targets = _four_options(1000, 9)
    new = OptionScores.build(new_logits, new_targets)
    new_probs = np.exp(new_logits - new_logits.max(axis=1, keepdims=True))
    new_probs /= new_probs.sum(axis=1, keepdims=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = HistogramBinning(bins=10).fit(probs, targets).transform(new_probs)
    result = recalibrate_held_out("option_histogram", scores, new)
    np.testing.assert_allclose(result.after.confidence, expected.max(axis=1), rtol=0, atol=1e-9)
    np.testing.assert_array_equal(result.after.correct, np.argmax(expected, axis=1) == new_targets)
    gold = expected[np.arange(1000), new_targets]
    np.testing.assert_allclose(result.after.nll, -np.log(gold), rtol=0, atol=1e-9)
    np.testing.assert_allclose(
        result.after.brier, ((expected - np.eye(4)[new_targets]) ** 2).sum(axis=1), rtol=0, atol=1e-9
    )
    np.testing.assert_array_equal(result.before.confidence, temperature_scaled(new, 1.0).confidence)
    assert result.after.brier.mean() < result.before.brier.mean()
    crossed = recalibrate_cross_fitted("option_histogram", scores, n_folds=5, seed=1)
    assert crossed.parameters == {"bins": 10.0, "options": 4.0}
    ragged = OptionScores.build([[-1.0, -2.0], [-1.0, -2.0, -3.0]] * 5, [0] * 10)
    with pytest.raises(CalibrationInputError, match="same number of options in every document"):
        recalibrate_cross_fitted("option_histogram", ragged)
