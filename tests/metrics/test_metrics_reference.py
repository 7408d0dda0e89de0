"""Metric values against independent implementations (torchmetrics, netcal, calibration, sklearn, torch,
relplot) on randomised inputs, including ragged option counts.  Tolerance 1e-9 unless noted."""

from __future__ import annotations

import calibration
import numpy as np
import pytest
import relplot
import torch
from netcal.metrics import ECE, MCE
from sklearn.metrics import brier_score_loss, roc_auc_score
from torchmetrics.functional.classification import binary_auroc, binary_calibration_error

from lm_eval_calib.metrics import (
    CalibrationData,
    aurc,
    auroc,
    brier_score,
    debiased_calibration_error,
    expected_calibration_error,
    maximum_calibration_error,
    negative_log_likelihood,
    rms_calibration_error,
    selective_accuracy,
    smooth_calibration_error,
)

TOL = 1e-9
CASES = [(seed, n) for seed in (0, 1, 2) for n in (57, 800, 3001)]


def ragged_logprobs(seed: int, n: int, min_options: int = 1, max_options: int = 6):
    """Per-item option log-likelihoods with 1..6 options, skewed so confidences spread over [0, 1]."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(min_options, max_options + 1, size=n)
    scale = rng.uniform(0.2, 4.0, size=n)
    rows = [rng.normal(size=k) * s - 8.0 for k, s in zip(counts, scale, strict=True)]
    targets = np.array([rng.integers(0, k) for k in counts])
    return rows, targets


def top_label(seed: int, n: int, min_options: int = 1):
    data = CalibrationData.from_option_logprobs(*ragged_logprobs(seed, n, min_options))
    return data.confidence, data.correct


def padded(rows, fill: float) -> np.ndarray:
    width = max(len(r) for r in rows)
    out = np.full((len(rows), width), fill)
    for i, row in enumerate(rows):
        out[i, : len(row)] = row
    return out


@pytest.mark.parametrize(("seed", "n"), CASES)
@pytest.mark.parametrize("n_bins", [10, 15])
def test_binned_errors_match_torchmetrics(seed: int, n: int, n_bins: int) -> None:
    # >= 2 options so no confidence is exactly 1.0: torchmetrics puts 1.0 in an extra bin of its own.
    conf, correct = top_label(seed, n, min_options=2)
    assert conf.max() < 1.0
    preds, target = torch.tensor(conf, dtype=torch.float64), torch.tensor(correct, dtype=torch.int64)
    for ours, norm in (
        (expected_calibration_error, "l1"),
        (maximum_calibration_error, "max"),
        (rms_calibration_error, "l2"),
    ):
        reference = binary_calibration_error(preds, target, n_bins=n_bins, norm=norm).item()
        assert ours(conf, correct, n_bins) == pytest.approx(reference, abs=TOL)


@pytest.mark.parametrize(("seed", "n"), CASES)
@pytest.mark.parametrize("n_bins", [10, 15])
def test_ece_mce_match_netcal(seed: int, n: int, n_bins: int) -> None:
    conf, correct = top_label(seed, n)  # includes 1-option items: confidence exactly 1.0 -> last bin
    assert (conf == 1.0).any()
    assert expected_calibration_error(conf, correct, n_bins) == pytest.approx(
        ECE(bins=n_bins).measure(conf, correct.astype(int)), abs=TOL
    )
    assert maximum_calibration_error(conf, correct, n_bins) == pytest.approx(
        MCE(bins=n_bins).measure(conf, correct.astype(int)), abs=TOL
    )


@pytest.mark.parametrize(("seed", "n"), CASES)
def test_ece_matches_calibration_package_equal_width(seed: int, n: int) -> None:
    # calibration.get_ece uses right-closed bins; identical to ours unless a confidence sits on an edge.
    conf, correct = top_label(seed, n, min_options=2)
    reference = calibration.get_ece(conf, correct.astype(int), num_bins=10)
    assert expected_calibration_error(conf, correct, 10, "width") == pytest.approx(reference, abs=TOL)


@pytest.mark.parametrize(("seed", "n"), [*CASES, (3, 7)])
@pytest.mark.parametrize("n_bins", [10, 15])
def test_equal_mass_ece_matches_calibration_package(seed: int, n: int, n_bins: int) -> None:
    # Same partition as calibration.get_equal_bins (np.array_split, ties kept together); n=7 < n_bins too.
    conf, correct = top_label(seed, n)
    reference = calibration.get_ece_em(conf, correct.astype(int), num_bins=n_bins)
    assert expected_calibration_error(conf, correct, n_bins, "mass") == pytest.approx(reference, abs=TOL)


def test_equal_mass_ece_with_heavy_ties_matches_calibration_package() -> None:
    rng = np.random.default_rng(5)
    conf = rng.choice([0.25, 0.5, 0.6, 0.75, 0.9, 1.0], size=500, p=[0.1, 0.4, 0.1, 0.2, 0.1, 0.1])
    correct = (rng.random(500) < conf).astype(float)
    for n_bins in (3, 10, 15):
        reference = calibration.get_ece_em(conf, correct.astype(int), num_bins=n_bins)
        assert expected_calibration_error(conf, correct, n_bins, "mass") == pytest.approx(reference, abs=TOL)
        reference = calibration.lower_bound_scaling_ce(
            conf,
            correct.astype(int),
            p=2,
            debias=True,
            num_bins=n_bins,
            binning_scheme=calibration.get_equal_bins,
        )
        assert debiased_calibration_error(conf, correct, n_bins) == pytest.approx(reference, abs=TOL)


@pytest.mark.parametrize(("seed", "n"), CASES)
@pytest.mark.parametrize("n_bins", [5, 10, 15])
def test_debiased_matches_calibration_package_binary_setup(seed: int, n: int, n_bins: int) -> None:
    # 1-D probs = binary setup: calibration runs ce_1d(confidence, correct) with equal-mass bins,
    # i.e. unbiased_l2_ce = sqrt(max(sum_b w_b [(conf_b - acc_b)^2 - acc_b(1-acc_b)/(|B_b|-1)], 0)).
    conf, correct = top_label(seed, n)
    reference = calibration.lower_bound_scaling_ce(
        conf,
        correct.astype(int),
        p=2,
        debias=True,
        num_bins=n_bins,
        binning_scheme=calibration.get_equal_bins,
    )
    assert debiased_calibration_error(conf, correct, n_bins, "mass") == pytest.approx(reference, abs=TOL)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_debiased_matches_calibration_top_label_multiclass(seed: int) -> None:
    # The user-facing call: get_calibration_error(p=2, debias=True, mode="top-label") on (n, k) probabilities.
    # For continuous probabilities it uses 15 equal-mass bins on (max prob, argmax == label).
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(2000, 4)) * 2.0
    labels = rng.integers(0, 4, size=2000)
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    reference = calibration.get_calibration_error(probs, labels, p=2, debias=True, mode="top-label")
    data = CalibrationData.from_option_logprobs(logits, labels)
    assert debiased_calibration_error(data.confidence, data.correct, 15) == pytest.approx(reference, abs=TOL)


@pytest.mark.parametrize(("seed", "n"), CASES)
def test_brier_matches_sklearn(seed: int, n: int) -> None:
    rows, targets = ragged_logprobs(seed, n)
    probs = [np.exp(r - r.max()) / np.exp(r - r.max()).sum() for r in rows]
    # Padding with probability 0 adds (0 - 0)^2 = 0, so the padded multiclass Brier equals the ragged one.
    table = padded(probs, 0.0)
    reference = brier_score_loss(targets, table, labels=np.arange(table.shape[1]), scale_by_half=False)
    assert brier_score(probs, targets) == pytest.approx(reference, abs=TOL)
    assert CalibrationData.from_option_logprobs(rows, targets).brier.mean() == pytest.approx(
        reference, abs=TOL
    )
    # Top-label (binary) Brier of the open-vocabulary constructor.
    data = CalibrationData.from_option_logprobs(rows, targets)
    top = CalibrationData.from_top_label(data.confidence, data.correct)
    assert top.brier.mean() == pytest.approx(brier_score_loss(data.correct, data.confidence), abs=TOL)


@pytest.mark.parametrize(("seed", "n"), CASES)
def test_nll_matches_torch_cross_entropy(seed: int, n: int) -> None:
    rows, targets = ragged_logprobs(seed, n)
    logits = torch.tensor(padded(rows, -np.inf), dtype=torch.float64)
    reference = torch.nn.functional.cross_entropy(logits, torch.tensor(targets)).item()
    assert negative_log_likelihood(rows, targets) == pytest.approx(reference, abs=TOL)
    assert CalibrationData.from_option_logprobs(rows, targets).nll.mean() == pytest.approx(reference, abs=TOL)
    probs = [np.exp(r - r.max()) / np.exp(r - r.max()).sum() for r in rows]
    assert negative_log_likelihood(probs, targets) == pytest.approx(reference, abs=1e-9)


@pytest.mark.parametrize(("seed", "n"), CASES)
@pytest.mark.parametrize("decimals", [None, 1])  # rounding to 1 decimal creates many ties
def test_auroc_matches_sklearn_and_torchmetrics(seed: int, n: int, decimals: int | None) -> None:
    conf, correct = top_label(seed, n)
    if decimals is not None:
        conf = np.round(conf, decimals)
    assert auroc(conf, correct) == pytest.approx(roc_auc_score(correct, conf), abs=TOL)
    # torchmetrics' binary_auroc returns float32 even for float64 inputs (its ROC counts are float32), so
    # 1e-6 is the tightest tolerance it allows; sklearn above is the float64 reference at 1e-9.
    reference = binary_auroc(
        torch.tensor(conf, dtype=torch.float64), torch.tensor(correct, dtype=torch.int64)
    )
    assert reference.dtype == torch.float32
    assert auroc(conf, correct) == pytest.approx(reference.item(), abs=1e-6)


def aurc_quadratic(conf: np.ndarray, correct: np.ndarray) -> float:
    """Reference AURC by brute force: for each k, the k most confident items, ties broken in expectation."""
    n = conf.shape[0]
    wrong = 1.0 - correct
    threshold_sorted = np.sort(conf)[::-1]
    risks = []
    for k in range(1, n + 1):
        t = threshold_sorted[k - 1]
        above = conf > t
        tied = conf == t
        errors = wrong[above].sum() + (k - above.sum()) * wrong[tied].mean()
        risks.append(errors / k)
    return float(np.mean(risks))


@pytest.mark.parametrize(("seed", "n"), [(0, 50), (1, 300), (2, 1000)])
@pytest.mark.parametrize("decimals", [None, 1])
def test_aurc_matches_quadratic_loop(seed: int, n: int, decimals: int | None) -> None:
    conf, correct = top_label(seed, n)
    if decimals is not None:
        conf = np.round(conf, decimals)
    assert aurc(conf, correct) == pytest.approx(aurc_quadratic(conf, correct), abs=TOL)


@pytest.mark.parametrize("seed", [0, 1])
def test_aurc_and_selective_accuracy_match_calibration_selective_stats_without_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    conf = rng.random(1000)
    correct = (rng.random(1000) < conf).astype(float)
    area, acc_at_10pct = calibration.get_selective_stats(conf, correct)
    assert aurc(conf, correct) == pytest.approx(1.0 - area, abs=TOL)
    # calibration reports the accuracy of the int(0.1 n) + 1 most confident items.
    assert selective_accuracy(conf, correct, 101 / 1000) == pytest.approx(acc_at_10pct, abs=TOL)


@pytest.mark.parametrize(("seed", "n"), [(0, 57), (1, 800), (2, 3001)])
def test_smooth_ece_equals_relplot(seed: int, n: int) -> None:
    conf, correct = top_label(seed, n)
    assert smooth_calibration_error(conf, correct) == relplot.smECE(conf, correct)
