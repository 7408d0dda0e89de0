"""Structural properties of the metrics, the bin statistics, CalibrationData and the registry."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from lm_eval_calib.metrics import (
    METRICS,
    SMALL_SAMPLE_THRESHOLD,
    CalibrationData,
    PreparedData,
    accuracy,
    aurc,
    auroc,
    bin_statistics,
    compute_metric,
    debiased_calibration_error,
    expected_calibration_error,
    known_metrics,
    maximum_calibration_error,
    rms_calibration_error,
    selective_accuracy,
    small_sample_warning,
)

BINNED = (expected_calibration_error, maximum_calibration_error, rms_calibration_error)


def random_sample(seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    conf = rng.beta(5, 2, size=n)
    return conf, (rng.random(n) < conf**1.5).astype(float)


def test_perfectly_calibrated_bins_give_zero_error() -> None:
    # Each equal-width bin holds 10 items at one confidence c with exactly 10c correct.
    conf = np.repeat([0.05, 0.3, 0.5, 0.7, 1.0], 10)
    correct = np.concatenate([np.arange(10) < round(10 * c) for c in (0.05, 0.3, 0.5, 0.7, 1.0)])
    correct[:10] = np.arange(10) < 1  # 0.05 * 10 is 0.5: shift that bin to 0.1 instead
    conf[:10] = 0.1
    for scheme in ("width", "mass"):
        for metric in BINNED:
            assert metric(conf, correct, 10, scheme) == pytest.approx(0.0, abs=1e-15)


def test_known_ece_value_by_hand() -> None:
    conf = np.array([0.15, 0.15, 0.95, 0.95])
    correct = np.array([0, 0, 1, 0])
    # bin 1: conf .15, acc 0 -> gap .15 ; bin 9: conf .95, acc .5 -> gap .45
    assert expected_calibration_error(conf, correct) == pytest.approx(0.5 * 0.15 + 0.5 * 0.45, abs=1e-15)
    assert maximum_calibration_error(conf, correct) == pytest.approx(0.45, abs=1e-15)
    assert rms_calibration_error(conf, correct) == pytest.approx(np.sqrt(0.5 * 0.15**2 + 0.5 * 0.45**2))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_permutation_invariance_and_bounds(seed: int) -> None:
    conf, correct = random_sample(seed, 700)
    conf = np.round(conf, 2)  # ties make order-dependence visible if it existed
    perm = np.random.default_rng(seed + 10).permutation(700)
    for scheme in ("width", "mass"):
        for metric in (*BINNED, debiased_calibration_error):
            value = metric(conf, correct, 10, scheme)
            assert 0.0 <= value <= 1.0
            assert metric(conf[perm], correct[perm], 10, scheme) == pytest.approx(value, abs=1e-13)
    for metric in (auroc, aurc):
        value = metric(conf, correct)
        assert 0.0 <= value <= 1.0
        assert metric(conf[perm], correct[perm]) == pytest.approx(value, abs=1e-13)


def test_debiased_below_plug_in_for_well_calibrated_model() -> None:
    # The bias correction subtracts a non-negative variance term from every bin with >= 2 items.
    conf, correct = random_sample(3, 5000)
    correct = (np.random.default_rng(4).random(5000) < conf).astype(float)
    plug_in = rms_calibration_error(conf, correct, 10, "mass")
    debiased = debiased_calibration_error(conf, correct, 10, "mass")
    assert debiased < plug_in


def test_boundary_conventions_for_equal_width() -> None:
    stats = bin_statistics([0.0, 0.1, 0.5, 0.99, 1.0], [1, 0, 1, 1, 1], n_bins=10)
    # left-closed bins: 0.0 -> bin 0, 0.1 -> bin 1, 0.5 -> bin 5, 0.99 and 1.0 -> bin 9
    assert stats.count.tolist() == [1, 1, 0, 0, 0, 1, 0, 0, 0, 2]
    assert np.allclose(stats.lower, np.linspace(0, 0.9, 10)) and stats.upper[-1] == 1.0
    assert stats.mean_confidence[9] == pytest.approx(0.995)
    assert np.isnan(stats.accuracy[2])


def test_equal_mass_bins_sizes_ties_and_small_n() -> None:
    conf = np.linspace(0.01, 0.99, 23)
    stats = bin_statistics(conf, np.ones(23), n_bins=5, scheme="mass")
    assert stats.count.tolist() == [5, 5, 5, 4, 4]  # np.array_split sizes: larger groups first
    assert stats.lower[0] == conf[0] and stats.upper[0] == conf[4]
    tied = bin_statistics([0.2, 0.5, 0.5, 0.5, 0.9, 0.9], np.ones(6), n_bins=3, scheme="mass")
    # groups by position {0,1},{2,3},{4,5}; the 0.5 run starts in group 0, so all 0.5s join it
    assert tied.count.tolist() == [4, 0, 2]
    assert np.isnan(tied.mean_confidence[1]) and np.isnan(tied.lower[1])
    small = bin_statistics([0.3, 0.6, 0.9], [1, 0, 1], n_bins=10, scheme="mass")
    assert small.count.tolist() == [1, 1, 1] + [0] * 7


@pytest.mark.parametrize("scheme", ["width", "mass"])
def test_bin_statistics_is_what_the_ece_uses(scheme: str) -> None:
    conf, correct = random_sample(7, 999)
    stats = bin_statistics(conf, correct, n_bins=12, scheme=scheme)
    full = stats.count > 0
    ece = np.sum(stats.count[full] / 999 * np.abs(stats.accuracy[full] - stats.mean_confidence[full]))
    assert expected_calibration_error(conf, correct, 12, scheme) == pytest.approx(ece, abs=1e-14)
    assert stats.count.sum() == 999


def test_from_option_logprobs_matches_manual_softmax_and_argmax_ties() -> None:
    rows = [[-1.0, -2.0, -0.5], [-3.0, -3.0], [-7.25], [-2.0, -1.0, -1.0, -4.0], [-1000.0, -1001.0]]
    targets = [2, 1, 0, 2, 0]
    data = CalibrationData.from_option_logprobs(rows, targets)
    for i, (row, target) in enumerate(zip(rows, targets, strict=True)):
        row = np.array(row)
        probs = np.exp(row - row.max()) / np.exp(row - row.max()).sum()
        predicted = int(np.argmax(row))  # first index among ties
        assert data.confidence[i] == pytest.approx(probs[predicted], abs=1e-15)
        assert data.correct[i] == float(predicted == target)
        assert data.brier[i] == pytest.approx(np.sum((probs - np.eye(len(row))[target]) ** 2), abs=1e-14)
        assert data.nll[i] == pytest.approx(-np.log(probs[target]), abs=1e-13)
    assert data.correct.tolist() == [1.0, 0.0, 1.0, 0.0, 1.0]  # ties [-3,-3] and [.., -1, -1, ..] pick first
    assert data.confidence[2] == 1.0 and data.nll[2] == 0.0


def test_nll_from_log_softmax_survives_tiny_probabilities() -> None:
    data = CalibrationData.from_option_logprobs([[0.0, -800.0]], [1])
    assert data.nll[0] == pytest.approx(800.0)  # exp(-800) underflows to 0 in probability space


def test_from_top_label_and_concatenate() -> None:
    top = CalibrationData.from_top_label([0.9, 0.2], [True, False], nll=[0.1, 3.0])
    assert top.brier.tolist() == pytest.approx([0.01, 0.04])
    assert np.isnan(CalibrationData.from_top_label([0.5], [1]).nll).all()
    multi = CalibrationData.from_option_logprobs([[-1.0, -2.0]], [0])
    joined = CalibrationData.concatenate([top, multi])
    assert len(joined) == 3
    assert joined.correct.tolist() == [1.0, 0.0, 1.0]
    assert joined.nll[2] == multi.nll[0]


def test_selective_accuracy_and_aurc_tie_handling() -> None:
    conf = np.array([0.9, 0.9, 0.8, 0.1])
    correct = np.array([1, 0, 1, 0])
    assert selective_accuracy(conf, correct, 0.25) == pytest.approx(0.5)  # expected over the 0.9 tie
    assert selective_accuracy(conf, correct, 0.75) == pytest.approx(2 / 3)
    assert selective_accuracy(conf, correct, 1.0) == pytest.approx(0.5)
    # risks: k=1: .5, k=2: .5, k=3: 1/3, k=4: .5
    assert aurc(conf, correct) == pytest.approx((0.5 + 0.5 + 1 / 3 + 0.5) / 4)
    assert selective_accuracy(np.arange(10) / 10, np.arange(10) >= 7, 0.3) == 1.0  # 0.3 * 10 -> 3 items


def test_auroc_single_class_warns_and_returns_nan() -> None:
    with pytest.warns(RuntimeWarning, match="all 3 items are correct"):
        assert np.isnan(auroc([0.2, 0.5, 0.9], [1, 1, 1]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert auroc([0.2, 0.9], [0, 1]) == 1.0


def test_registry_keys_order_and_compute() -> None:
    assert known_metrics() == [
        "acc",
        "ece",
        "ece_em",
        "ece_debiased",
        "mce",
        "rmsce",
        "smece",
        "brier",
        "nll",
        "auroc",
        "aurc",
        "prr",
    ]
    rng = np.random.default_rng(0)
    data = CalibrationData.from_option_logprobs(rng.normal(size=(400, 4)), rng.integers(0, 4, size=400))
    prepared = PreparedData.build(data)
    for key, info in METRICS.items():
        value = compute_metric(key, data, n_bins=10)
        low, high = info.range
        assert low <= value <= high, key
        if info.batched is not None:  # the point estimate is the batched formula at B = 1
            assert info.batched(prepared, None, 10)[0] == pytest.approx(value, abs=1e-12), key
    assert compute_metric("acc", data) == accuracy(data.correct)
    assert compute_metric("ece_em", data, 15) == expected_calibration_error(
        data.confidence, data.correct, 15, "mass"
    )
    assert METRICS["auroc"].higher_is_better and not METRICS["ece"].higher_is_better


def test_small_sample_warning() -> None:
    message = small_sample_warning("ece", 120)
    assert message is not None and "120" in message and "--limit" in message and "biased upward" in message
    assert small_sample_warning("ece", SMALL_SAMPLE_THRESHOLD) is None
    assert small_sample_warning("brier", 10) is None
