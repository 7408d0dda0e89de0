"""Conformal answer sets: MAPIE's sets, an independent loop implementation, and the coverage guarantee."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lm_eval_calib.metrics import (
    CalibrationInputError,
    OptionScores,
    conformal_cross_fitted,
    conformal_held_out,
)
from lm_eval_calib.metrics.conformal import (
    RESULT_KEYS,
    answer_sets,
    aps_uniforms,
    bootstrap_mean_stderr,
    calibration_scores,
    conformal_results,
    conformal_threshold,
    option_probabilities,
)
from lm_eval_calib.metrics.recalibration import fold_of_units


def _documents(n: int, seed: int, options: int | tuple[int, int] = 4, temperature: float = 1.7):
    """Option log-likelihoods (lm-eval-like: large negative sums) with the gold option drawn from a flatter
    softmax than the model's (an over-confident model); ``options`` fixed or a (low, high) range."""
    rng = np.random.default_rng(seed)
    counts = (
        np.full(n, options) if isinstance(options, int) else rng.integers(options[0], options[1] + 1, size=n)
    )
    logits, targets = [], []
    for k in counts:
        row = rng.normal(size=k) * 2.0 - 10.0
        p = np.exp((row - row.max()) / temperature)
        logits.append(row)
        targets.append(int(rng.choice(k, p=p / p.sum())))
    return logits, np.array(targets)


# ------------------------------------------------------------------- an independent loop implementation
def _softmax(row: np.ndarray) -> np.ndarray:
    e = np.exp(row - row.max())
    return e / e.sum()


def _loop_score(p: np.ndarray, option: int, score: str, u: float) -> float:
    if score == "lac":
        return 1.0 - p[option]
    ranked = sorted(range(len(p)), key=lambda j: (-p[j], j))
    above = 0.0
    for j in ranked:
        if j == option:
            return above + u * p[option]
        above += p[j]
    raise AssertionError


def _loop_set(p: np.ndarray, score: str, threshold: float) -> list[int]:
    if score == "lac":
        return [j for j in range(len(p)) if 1.0 - p[j] <= threshold]
    kept, mass = [], 0.0
    for j in sorted(range(len(p)), key=lambda j: (-p[j], j)):
        if mass >= threshold:
            break
        kept.append(j)
        mass += p[j]
    return sorted(kept)


def _loop_threshold(scores: list[float], alpha: float) -> float:
    rank = math.ceil((len(scores) + 1) * (1 - alpha) - 1e-9)
    return math.inf if rank > len(scores) else sorted(scores)[rank - 1]


def _loop_sets(logits, targets, cal_items, test_items, score, alpha, uniforms):
    probs = [_softmax(np.asarray(row)) for row in logits]
    threshold = _loop_threshold(
        [_loop_score(probs[i], targets[i], score, uniforms[i]) for i in cal_items], alpha
    )
    return {i: _loop_set(probs[i], score, threshold) for i in test_items}


@pytest.mark.parametrize("score", ["lac", "aps"])
@pytest.mark.parametrize("alpha", [0.05, 0.1, 0.3])
def test_held_out_and_cross_fitted_sets_equal_a_loop_implementation(score, alpha):
    logits, targets = _documents(600, seed=int(alpha * 100), options=(2, 7))
    documents = OptionScores.build(logits, targets)
    cal, test = documents.take(np.arange(400)), documents.take(np.arange(400, 600))
    held = conformal_held_out(cal, test, score, alpha, seed=5)
    expected = _loop_sets(logits, targets, range(400), range(400, 600), score, alpha, aps_uniforms(400, 5))
    assert held.sets() == [expected[i] for i in range(400, 600)]
    assert held.coverage == np.mean([targets[i] in expected[i] for i in range(400, 600)])
    assert held.mean_size == np.mean([len(expected[i]) for i in range(400, 600)])

    crossed = conformal_cross_fitted(documents, score, alpha, n_folds=4, seed=9)
    fold, uniforms = fold_of_units(600, 4, 9), aps_uniforms(600, 9)
    sets = crossed.sets()
    for k in range(4):
        inside = np.flatnonzero(fold == k)
        expected = _loop_sets(logits, targets, np.flatnonzero(fold != k), inside, score, alpha, uniforms)
        assert [sets[i] for i in inside] == [expected[i] for i in inside]
    np.testing.assert_array_equal(crossed.fold, fold)
    assert crossed.coverage == np.mean([targets[i] in sets[i] for i in range(600)])


def _given_probabilities(n_classes: int):
    """A prefit scikit-learn classifier whose input is already the probability matrix."""
    from sklearn.base import BaseEstimator, ClassifierMixin

    class GivenProbabilities(ClassifierMixin, BaseEstimator):
        def fit(self, X, y):
            self.classes_ = np.arange(n_classes)
            return self

        def predict_proba(self, X):
            return np.asarray(X)

        def predict(self, X):
            return np.argmax(X, axis=1)

    return GivenProbabilities().fit(None, None)


@pytest.mark.parametrize("n_options", [4, 10])
@pytest.mark.parametrize("alpha", [0.05, 0.1, 0.2])
def test_sets_and_thresholds_are_mapies(n_options, alpha):
    pytest.importorskip("mapie", minversion="1.0")
    from mapie.classification import SplitConformalClassifier

    logits, targets = _documents(2500, seed=n_options, options=n_options)
    documents = OptionScores.build(logits, targets)
    cal, test = documents.take(np.arange(1500)), documents.take(np.arange(1500, 2500))
    p_cal = option_probabilities(cal).values.reshape(-1, n_options)
    p_test = option_probabilities(test).values.reshape(-1, n_options)
    for score in ("lac", "aps"):
        mapie = SplitConformalClassifier(
            _given_probabilities(n_options),
            confidence_level=1 - alpha,
            conformity_score=score,
            prefit=True,
            random_state=11,
        )
        mapie.conformalize(p_cal, cal.targets)
        params = {"include_last_label": True} if score == "aps" else None
        _, expected = mapie.predict_set(p_test, conformity_score_params=params)
        # MAPIE's APS score is cumulative mass minus U * p (U from RandomState); ours adds (1 - U) * p to the
        # mass above: the same number for the same draw
        uniforms = 1.0 - np.random.RandomState(11).uniform(size=1500) if score == "aps" else None
        threshold = conformal_threshold(calibration_scores(cal, score, uniforms), alpha)
        quantile = mapie._mapie_classifier.conformity_score_function_.quantiles_[0]
        assert threshold == pytest.approx(quantile, abs=1e-9)
        ours = answer_sets(test, score, threshold).values.reshape(-1, n_options) > 0.5
        np.testing.assert_array_equal(ours, expected[:, :, 0])


def test_lac_coverage_over_many_seeds_is_one_minus_alpha():
    """Exchangeable documents: coverage averages 1 - alpha (within 0.01) and no run is 3 stderrs short."""
    alpha, held_out, crossed = 0.1, [], []
    for seed in range(200):
        rng = np.random.default_rng(seed)
        logits = rng.normal(size=(6000, 4)) * 2.0
        p = np.exp(logits / 1.7)
        p /= p.sum(axis=1, keepdims=True)
        targets = (rng.uniform(size=(6000, 1)) > np.cumsum(p, axis=1)).sum(
            axis=1
        )  # gold ~ the flatter softmax
        documents = OptionScores.build(logits, targets)
        cal, test = documents.take(np.arange(5000)), documents.take(np.arange(5000, 6000))
        result = conformal_held_out(cal, test, "lac", alpha)
        coverage_se, _ = result.stderrs(n_resamples=200, seed=seed)
        assert result.coverage >= 1 - alpha - 3 * coverage_se, seed
        held_out.append(result.coverage)
        crossed.append(conformal_cross_fitted(documents, "lac", alpha, n_folds=5, seed=seed).coverage)
    assert abs(np.mean(held_out) - (1 - alpha)) < 0.01
    assert abs(np.mean(crossed) - (1 - alpha)) < 0.01
    assert 0.005 < np.std(held_out) < 0.03  # the runs do vary: the check above is not vacuous
    assert np.mean(crossed) >= 1 - alpha - 3 * np.std(crossed) / np.sqrt(len(crossed))


def test_stderrs_are_the_bootstrap_of_a_mean():
    rng = np.random.default_rng(3)
    covered = (rng.uniform(size=2000) < 0.9).astype(float)
    se = bootstrap_mean_stderr(covered, 2000, seed=1)
    assert se == pytest.approx(np.sqrt(covered.mean() * (1 - covered.mean()) / 2000), rel=0.08)
    loop = [covered[rng.integers(0, 2000, size=2000)].mean() for _ in range(500)]
    assert se == pytest.approx(np.std(loop, ddof=1), rel=0.15)


def test_summary_sets_and_an_alpha_too_small_for_the_sample():
    logits, targets = _documents(50, seed=1)
    documents = OptionScores.build(logits, targets)
    everything = conformal_cross_fitted(documents, "lac", alpha=0.01, n_folds=5)  # rank 40 * 0.99 + 1 > 40
    assert all(math.isinf(t) for t in everything.thresholds) and everything.coverage == 1.0
    assert everything.mean_size == 4.0 and everything.sets()[0] == [0, 1, 2, 3]
    summary = conformal_cross_fitted(documents, "aps", alpha=0.2, n_folds=5).summary(n_resamples=100)
    assert set(summary) == {"coverage", "coverage_stderr", "set_size", "set_size_stderr"}
    assert 0 < summary["coverage_stderr"] < 0.2 and summary["set_size"] >= 1.0  # APS sets are never empty


def test_bad_options_are_clear_errors():
    logits, targets = _documents(20, seed=2)
    documents = OptionScores.build(logits, targets)
    for alpha in (0, 1, 1.5, -0.1, True, "0.1"):
        with pytest.raises(CalibrationInputError, match=r"alpha must be a number in \(0, 1\)"):
            conformal_cross_fitted(documents, alpha=alpha)
    with pytest.raises(CalibrationInputError, match="n_folds must be an integer >= 2"):
        conformal_cross_fitted(documents, n_folds=1)
    with pytest.raises(CalibrationInputError, match="needs at least 21 documents, got 20"):
        conformal_cross_fitted(documents, n_folds=21)
    with pytest.raises(CalibrationInputError, match="unknown conformal score 'raps'"):
        conformal_held_out(documents, documents, score="raps")
    with pytest.raises(CalibrationInputError, match="seed must be an integer >= 0"):
        conformal_cross_fitted(documents, seed=-3)


def test_conformal_results_is_what_a_task_reports():
    logits, targets = _documents(300, seed=7, options=(3, 5))
    numbers, sets = conformal_results(logits, targets, alpha=0.2, n_folds=5, seed=2, n_resamples=200)
    assert set(numbers) == {k for key in RESULT_KEYS for k in (key, key + "_stderr")}
    documents = OptionScores.build(logits, targets)
    for score in ("lac", "aps"):
        expected = conformal_cross_fitted(documents, score, 0.2, 5, 2)
        assert numbers[f"conformal_coverage_{score}"] == expected.coverage
        assert numbers[f"conformal_set_size_{score}_stderr"] == expected.stderrs(200, 1234)[1]
        assert sets[score] == expected.sets()
    with pytest.raises(CalibrationInputError, match="alpha must be a number"):
        conformal_results(logits, targets, alpha=1.0)
    with pytest.raises(CalibrationInputError, match="needs at least 500 documents, got 300"):
        conformal_results(logits, targets, n_folds=500)
