"""Pure-numpy calibration metrics for language-model evaluation (after Zhu et al. 2023).

Start from :class:`CalibrationData` (per-item confidence, correctness, Brier and NLL terms), then use
:func:`compute_metric` / :data:`METRICS` for point estimates and :func:`bootstrap_stderr` for error bars.  The
individual metric functions take plain arrays for use outside the harness.
"""

from .binning import BinStats, bin_statistics
from .bootstrap import bootstrap_interval, bootstrap_stderr, bootstrap_values, resample_multiplicities
from .calibration_error import (
    debiased_calibration_error,
    expected_calibration_error,
    maximum_calibration_error,
    rms_calibration_error,
    smooth_calibration_error,
)
from .conformal import ConformalSets, conformal_cross_fitted, conformal_held_out, conformal_results
from .data import CalibrationData
from .decomposition import Decomposition, calibration_refinement, cross_fitted_decompositions
from .degenerate import DEGENERATE_FLOOR, Degeneracy, degenerate_confidence
from .errors import CalibrationInputError
from .prepared import PreparedData
from .ranking import aurc, auroc, selective_accuracy
from .recalibration import (
    OptionScores,
    Recalibration,
    TopLabel,
    fit_platt,
    fit_temperature,
    platt_scaled,
    recalibrate_cross_fitted,
    recalibrate_held_out,
    temperature_scaled,
)
from .registry import (
    METRICS,
    SMALL_SAMPLE_THRESHOLD,
    MetricInfo,
    compute_metric,
    known_metrics,
    small_sample_warning,
)
from .scoring import accuracy, brier_score, negative_log_likelihood
from .selective import (
    RiskCoverage,
    prediction_rejection_ratio,
    risk_coverage_points,
    selective_accuracies,
)
from .validation import check_confidence_correct, check_option_logprobs, check_option_probs

__all__ = [
    "DEGENERATE_FLOOR",
    "METRICS",
    "SMALL_SAMPLE_THRESHOLD",
    "BinStats",
    "CalibrationData",
    "CalibrationInputError",
    "ConformalSets",
    "Decomposition",
    "Degeneracy",
    "MetricInfo",
    "OptionScores",
    "PreparedData",
    "Recalibration",
    "RiskCoverage",
    "TopLabel",
    "accuracy",
    "aurc",
    "auroc",
    "bin_statistics",
    "bootstrap_interval",
    "bootstrap_stderr",
    "bootstrap_values",
    "brier_score",
    "calibration_refinement",
    "check_confidence_correct",
    "check_option_logprobs",
    "check_option_probs",
    "compute_metric",
    "conformal_cross_fitted",
    "conformal_held_out",
    "conformal_results",
    "cross_fitted_decompositions",
    "debiased_calibration_error",
    "degenerate_confidence",
    "expected_calibration_error",
    "fit_platt",
    "fit_temperature",
    "known_metrics",
    "maximum_calibration_error",
    "negative_log_likelihood",
    "platt_scaled",
    "prediction_rejection_ratio",
    "recalibrate_cross_fitted",
    "recalibrate_held_out",
    "resample_multiplicities",
    "risk_coverage_points",
    "rms_calibration_error",
    "selective_accuracies",
    "selective_accuracy",
    "small_sample_warning",
    "smooth_calibration_error",
    "temperature_scaled",
]
