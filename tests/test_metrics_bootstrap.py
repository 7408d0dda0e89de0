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
