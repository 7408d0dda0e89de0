"""Bootstrap: determinism, batched == scalar on the same resample, sanity of the standard error, speed."""

from __future__ import annotations

import numpy as np
import pytest

from lm_eval_calib.metrics import (
    METRICS,
    CalibrationData,
    PreparedData,
    bootstrap_interval,
    bootstrap_stderr,
    bootstrap_values,
    compute_metric,
    resample_multiplicities,
)
from lm_eval_calib.metrics import bootstrap as bootstrap_module
from lm_eval_calib.metrics.cells import Cells
from lm_eval_calib.metrics.ranking import aurc_batched, risk_coverage_curve


def make_data(seed: int, n: int, ties: bool = False) -> CalibrationData:
    rng = np.random.default_rng(seed)
    counts = rng.integers(2, 6, size=n)
    rows = [rng.normal(size=k) * rng.uniform(0.3, 3.0) for k in counts]
    if ties:
        rows = [np.round(r, 0) for r in rows]
    targets = np.array([rng.integers(0, k) for k in counts])
    return CalibrationData.from_option_logprobs(rows, targets)


def test_resample_multiplicities_are_deterministic_and_sum_to_n() -> None:
    first = np.concatenate(list(resample_multiplicities(37, 250, seed=9)))
    again = np.concatenate(list(resample_multiplicities(37, 250, seed=9)))
    other = np.concatenate(list(resample_multiplicities(37, 250, seed=10)))
    assert first.shape == (250, 37) and (first.sum(axis=1) == 37).all()
    assert np.array_equal(first, again) and not np.array_equal(first, other)


@pytest.mark.parametrize("key", list(METRICS))
def test_deterministic_per_seed(key: str) -> None:
    data = make_data(0, 300)
    n = 30 if key == "smece" else 200
    assert bootstrap_stderr(key, data, n, seed=3) == bootstrap_stderr(key, data, n, seed=3)
    assert bootstrap_stderr(key, data, n, seed=3) != bootstrap_stderr(key, data, n, seed=4)


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("key", [k for k, info in METRICS.items() if info.batched is not None])
def test_batched_equals_scalar_on_same_resample(key: str, ties: bool) -> None:
    data = make_data(1, 400, ties=ties)
    prepared = PreparedData.build(data)
    chunk = next(resample_multiplicities(len(data), 5, seed=2))
    batched = METRICS[key].batched(prepared, chunk, 10)
    for row, value in zip(chunk, batched, strict=True):
        resampled = CalibrationData(
            *(np.repeat(getattr(prepared.data, f), row) for f in ("confidence", "correct", "brier", "nll"))
        )
        assert value == pytest.approx(compute_metric(key, resampled, 10), abs=1e-12)
    values = bootstrap_values(key, data, n_resamples=5, seed=2)
    assert np.allclose(values, batched, atol=1e-12, equal_nan=True)


@pytest.mark.parametrize("key", ["ece_em", "ece_debiased", "auroc", "aurc"])
def test_batched_handles_items_drawn_zero_times_at_the_ends(key: str) -> None:
    data = make_data(5, 50)
    prepared = PreparedData.build(data)
    weights = np.ones((2, 50), dtype=np.int64)
    weights[0, -3:], weights[0, :3] = 0, 2  # most confident items never drawn
    weights[1, :4], weights[1, -4:] = 0, 2  # least confident items never drawn
    for row, value in zip(weights, METRICS[key].batched(prepared, weights, 10), strict=True):
        fields = ("confidence", "correct", "brier", "nll")
        resampled = CalibrationData(*(np.repeat(getattr(prepared.data, f), row) for f in fields))
        assert value == pytest.approx(compute_metric(key, resampled, 10), abs=1e-12)


def test_smece_bootstrap_loops_over_at_most_100_resamples() -> None:
    data = make_data(2, 200)
    values = bootstrap_values("smece", data, n_resamples=1000, seed=0)
    assert values.shape == (100,)
    row = next(resample_multiplicities(len(data), 1, seed=0))[0]
    prepared = PreparedData.build(data)
    resampled = CalibrationData(
        *(np.repeat(getattr(prepared.data, f), row) for f in ("confidence", "correct", "brier", "nll"))
    )
    assert values[0] == compute_metric("smece", resampled)


def test_brier_stderr_close_to_analytic() -> None:
    data = make_data(3, 5000)
    analytic = data.brier.std(ddof=1) / np.sqrt(5000)
    assert bootstrap_stderr("brier", data, n_resamples=1000, seed=1234) == pytest.approx(analytic, rel=0.10)


def test_interval_brackets_point_estimate() -> None:
    data = make_data(4, 2000)
    low, high = bootstrap_interval("ece", data, n_resamples=500, level=0.9)
    assert low < compute_metric("ece", data) < high
    narrow = bootstrap_interval("ece", data, n_resamples=500, level=0.5)
    assert low < narrow[0] < narrow[1] < high


def test_single_item_does_not_crash() -> None:
    data = CalibrationData.from_top_label([0.7], [1], nll=[0.3])
    assert bootstrap_stderr("ece", data, n_resamples=50) == 0.0  # every resample is the same item
    assert bootstrap_stderr("brier", data, n_resamples=50) == 0.0
    assert np.isnan(bootstrap_stderr("auroc", data, n_resamples=50))  # undefined with one class
    assert bootstrap_stderr("smece", data, n_resamples=5) == 0.0
    assert np.isnan(bootstrap_stderr("ece", data, n_resamples=1))


def make_tokens(seed: int, n: int) -> CalibrationData:
    """Next-token-like items: float32 top-1 probabilities piled up near 1, overconfident, heavy-tailed NLL."""
    rng = np.random.default_rng(seed)
    conf = np.clip(1 - rng.beta(0.3, 3.0, n) * 0.9, 0.05, 1.0).astype(np.float32).astype(np.float64)
    correct = rng.random(n) < conf**1.3
    nll = np.where(correct, -np.log(conf), -np.log(conf) + rng.exponential(3.0, n))
    return CalibrationData.from_top_label(conf, correct, nll=nll)


BATCHED = [k for k, info in METRICS.items() if info.batched is not None]


def test_cell_bootstrap_matches_item_bootstrap(monkeypatch: pytest.MonkeyPatch) -> None:
    # Both are bootstrap estimates: a standard error from R resamples has a Monte-Carlo relative error of
    # about 1/sqrt(2R), so their ratio has sqrt(1/(2 * 800) + 1/(2 * 270)) = 5.0% (as with 400 resamples
    # each); 15% is three of those. An item resample costs ~15x a cell one, so the items get fewer.
    # 110,000 items: above the threshold, and far more distinct confidences than cells (about 50 items each).
    data = make_tokens(0, bootstrap_module.CELL_BOOTSTRAP_MIN_ITEMS + 10_000)
    assert len(data) > bootstrap_module.CELL_BOOTSTRAP_MIN_ITEMS
    cells = {key: bootstrap_values(key, data, 800, seed=1) for key in BATCHED}
    monkeypatch.setattr(bootstrap_module, "CELL_BOOTSTRAP_MIN_ITEMS", 10**9)
    for key in BATCHED:
        items = bootstrap_values(key, data, 270, seed=2)
        assert np.std(cells[key], ddof=1) == pytest.approx(np.std(items, ddof=1), rel=0.15), key
        # Same centre too: the means of both bootstrap distributions agree within a standard error.
        assert abs(cells[key].mean() - items.mean()) < np.std(items, ddof=1), key


@pytest.mark.parametrize("key", ["acc", "brier", "nll"])
def test_cell_bootstrap_of_a_mean_matches_its_ideal_stderr(key: str) -> None:
    # The ideal bootstrap standard error of a mean is the population std / sqrt(n); with 1000 resamples the
    # estimate has a 2.2% Monte-Carlo error, 10% is 4.5 of those.
    data = make_tokens(1, 150_000)
    ideal = getattr(data, key if key != "acc" else "correct").std() / np.sqrt(len(data))
    assert bootstrap_stderr(key, data, 1000, seed=5) == pytest.approx(ideal, rel=0.10)


def test_cell_bootstrap_is_deterministic_per_seed() -> None:
    data = make_tokens(2, 120_000)
    for key in BATCHED:
        first = bootstrap_values(key, data, 50, seed=3)
        assert first.shape == (50,)
        assert np.array_equal(first, bootstrap_values(key, data, 50, seed=3))
        assert not np.array_equal(first, bootstrap_values(key, data, 50, seed=4))


def test_cells_reproduce_the_point_estimate() -> None:
    # At their own frequencies, cells give the exact per-bin totals of equal-width bins; with few distinct
    # confidences (exact cells) every confidence metric is reproduced.
    rng = np.random.default_rng(6)
    conf = rng.uniform(0.25, 1.0, 150_000)
    for rounded in (False, True):
        c = np.round(conf, 3) if rounded else conf
        data = CalibrationData.from_top_label(c, rng.random(c.shape[0]) < c)
        cells = Cells.of_confidence(PreparedData.build(data), 10)
        assert cells.exact == rounded and cells.frequency.sum() == len(data)
        for key in BATCHED:
            if METRICS[key].mean_of is not None:
                continue
            value = METRICS[key].batched(cells.prepared, cells.frequency[None, :], 10)[0]
            exact = rounded or key in ("ece", "mce", "rmsce")
            assert value == pytest.approx(compute_metric(key, data), abs=1e-12 if exact else 1e-3), key


@pytest.mark.parametrize("key", BATCHED)
def test_item_bootstrap_unchanged_up_to_the_threshold(key: str) -> None:
    n = bootstrap_module.CELL_BOOTSTRAP_MIN_ITEMS
    data = make_tokens(3, n)
    prepared = PreparedData.build(data)
    expected = np.concatenate(
        [METRICS[key].batched(prepared, chunk, 10) for chunk in resample_multiplicities(n, 3, seed=8)]
    )
    assert np.array_equal(bootstrap_values(key, data, 3, seed=8), expected, equal_nan=True)


def test_aurc_closed_form_equals_mean_of_risk_coverage_curve() -> None:
    data = make_data(7, 300, ties=True)
    sample = PreparedData.build(data).sample
    weights = np.concatenate([np.ones((1, 300), dtype=np.int64), next(resample_multiplicities(300, 20, 1))])
    curve = risk_coverage_curve(sample, weights).mean(axis=1)
    assert np.allclose(aurc_batched(sample, weights), curve, rtol=0, atol=1e-13)


def test_stderr_depends_on_the_items_not_their_order():
    """Records gathered from several ranks arrive interleaved; the stderr must not change with the order."""
    rng = np.random.default_rng(7)
    confidence = rng.choice([0.25, 0.5, 0.75], size=400)  # many ties, as for tokens of a random model
    correct = (rng.random(400) < confidence).astype(float)
    brier = (confidence - correct) ** 2
    nll = -np.log(np.where(correct == 1, confidence, 1 - confidence))
    data = CalibrationData(confidence=confidence, correct=correct, brier=brier, nll=nll)
    p = rng.permutation(400)
    other = CalibrationData(confidence=confidence[p], correct=correct[p], brier=brier[p], nll=nll[p])
    for key in ("acc", "ece", "brier", "auroc"):
        assert bootstrap_stderr(key, data, 200, seed=3) == bootstrap_stderr(key, other, 200, seed=3), key
