"""Argument checks, kept apart from the numerical code so that every metric sees clean float64 arrays.

Metrics on NaN or out-of-range inputs do not fail loudly: ECE happily averages a NaN into a bin or drops it,
and a log-likelihood passed where a probability was expected yields a plausible-looking number.  So all public
entry points funnel through these checks and fail with a :class:`CalibrationInputError` that says which
value is bad and what to do about it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .errors import CalibrationInputError
from .ragged import RaggedRows

ROW_SUM_TOLERANCE = 1e-6


def _as_1d(name: str, values: object, *, allow_bool: bool = True) -> np.ndarray:
    try:
        array = np.asarray(values)
    except ValueError as exc:  # ragged nested lists
        raise CalibrationInputError(
            f"{name} could not be read as a 1-D array ({exc}); pass a flat list"
        ) from exc
    if array.ndim != 1:
        raise CalibrationInputError(
            f"{name} must be 1-D (one value per item) but has shape {array.shape}; flatten it or pass one "
            "value per item"
        )
    if array.dtype == np.bool_ and allow_bool:
        return array.astype(np.float64)
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise CalibrationInputError(
            f"{name} has dtype {array.dtype}; pass numbers (floats, ints or booleans)"
        )
    return array.astype(np.float64)


def _check_non_empty(name: str, array: np.ndarray) -> None:
    if array.shape[0] == 0:
        raise CalibrationInputError(
            f"{name} is empty; metrics need at least one scored item: check that the task produced results "
            "(e.g. --limit > 0 and the right task name)"
        )


def _check_finite(name: str, array: np.ndarray, hint: str) -> None:
    for label, bad in (("NaN", np.isnan(array)), ("infinite", np.isinf(array))):
        count = int(bad.sum())
        if count:
            first = int(np.flatnonzero(bad)[0])
            raise CalibrationInputError(
                f"{name} has {count} {label} value{'s' if count > 1 else ''} (first at index {first}); {hint}"
            )


def check_correct(correct: object) -> np.ndarray:
    """Validate per-item correctness flags and return them as float64 0.0/1.0."""
    array = _as_1d("correct", correct)
    _check_non_empty("correct", array)
    _check_finite("correct", array, "correctness must be 0/1: check how correct was computed")
    bad = (array != 0.0) & (array != 1.0)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise CalibrationInputError(
            f"correct has {int(bad.sum())} values other than 0/1 (first at index {first}: "
            f"{float(array[first])}); pass booleans or 0/1 integers, e.g. correct = (argmax == target)"
        )
    return array


def check_confidence(confidence: object) -> np.ndarray:
    """Validate top-label confidences and return them as float64 in [0, 1]."""
    array = _as_1d("confidence", confidence)
    _check_non_empty("confidence", array)
    _check_finite("confidence", array, "metrics need finite probabilities: check the model's log-likelihoods")
    bad = (array < 0.0) | (array > 1.0)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise CalibrationInputError(
            f"confidence has {int(bad.sum())} values outside [0, 1] (first at index {first}: "
            f"{float(array[first])}); pass probabilities, not log-likelihoods or logits (apply "
            "exp/softmax first)"
        )
    return array


def check_confidence_correct(confidence: object, correct: object) -> tuple[np.ndarray, np.ndarray]:
    """Validate a (confidence, correct) pair: 1-D, same non-zero length, finite, in range."""
    conf = check_confidence(confidence)
    corr = check_correct(correct)
    if conf.shape[0] != corr.shape[0]:
        raise CalibrationInputError(
            f"confidence has {conf.shape[0]} items but correct has {corr.shape[0]}; pass exactly one "
            "correctness flag per confidence value"
        )
    return conf, corr


def check_targets(targets: object, n_rows: int, lengths: np.ndarray, rows_name: str) -> np.ndarray:
    """Validate one integer target option index per row, each within that row's option count."""
    array = np.asarray(targets)
    if array.ndim != 1:
        raise CalibrationInputError(
            f"targets must be 1-D (one option index per item) but has shape {array.shape}; pass a flat list"
        )
    if array.shape[0] != n_rows:
        raise CalibrationInputError(
            f"targets has {array.shape[0]} entries but {rows_name} has {n_rows} rows; pass exactly one "
            "target index per item"
        )
    if array.dtype == np.bool_ or not np.issubdtype(array.dtype, np.integer):
        raise CalibrationInputError(
            f"targets has dtype {array.dtype}; targets are option indices and must be integers (cast with "
            "np.asarray(targets, dtype=int) if they are whole numbers)"
        )
    array = array.astype(np.int64)
    bad = (array < 0) | (array >= lengths)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise CalibrationInputError(
            f"targets[{first}] = {int(array[first])} but {rows_name} row {first} has {int(lengths[first])} "
            f"options (valid 0..{int(lengths[first]) - 1}); {int(bad.sum())} target(s) out of range: "
            "check the gold index of those items"
        )
    return array


def _flatten_rows(name: str, rows: Sequence[Sequence[float]] | np.ndarray) -> RaggedRows:
    if isinstance(rows, np.ndarray) and rows.ndim == 2 and rows.dtype != object:
        values, lengths = rows, np.full(rows.shape[0], rows.shape[1], dtype=np.int64)
        if not np.issubdtype(rows.dtype, np.number) or np.issubdtype(rows.dtype, np.complexfloating):
            raise CalibrationInputError(f"{name} has dtype {rows.dtype}; pass real numbers")
    else:
        arrays = []
        for i, row in enumerate(rows):
            try:
                array = np.asarray(row, dtype=np.float64)
            except (TypeError, ValueError) as exc:
                raise CalibrationInputError(
                    f"{name} row {i} could not be read as numbers ({exc}); pass one list of floats per item"
                ) from exc
            if array.ndim != 1:
                raise CalibrationInputError(
                    f"{name} row {i} has shape {array.shape}; each row must be a flat list with one value "
                    "per option"
                )
            arrays.append(array)
        lengths = np.fromiter((a.shape[0] for a in arrays), dtype=np.int64, count=len(arrays))
        values = np.concatenate(arrays) if arrays else np.zeros(0)
    if lengths.shape[0] == 0:
        raise CalibrationInputError(
            f"{name} is empty; metrics need at least one scored item: check that the task produced results"
        )
    empty = lengths == 0
    if empty.any():
        raise CalibrationInputError(
            f"{name} row {int(np.flatnonzero(empty)[0])} has no options ({int(empty.sum())} empty row(s)); "
            "every item needs at least one scored option"
        )
    ragged = RaggedRows.from_lengths(np.asarray(values, dtype=np.float64).ravel(), lengths)
    finite = np.isfinite(ragged.values)
    if not finite.all():
        first = int(np.flatnonzero(~finite)[0])
        row = int(ragged.row_of(first))
        raise CalibrationInputError(
            f"{name} has {int((~finite).sum())} non-finite values (first: "
            f"{float(ragged.values[first])} in row {row}, option {first - int(ragged.starts[row])}); "
            "metrics need finite scores: check the model's log-likelihoods for overflow or masked options"
        )
    return ragged


def check_option_logprobs(
    logprobs: Sequence[Sequence[float]] | np.ndarray, targets: Sequence[int] | np.ndarray
) -> tuple[RaggedRows, np.ndarray]:
    """Validate ragged per-item option log-likelihoods (any finite reals) and their target indices."""
    rows = _flatten_rows("logprobs", logprobs)
    return rows, check_targets(targets, len(rows), rows.lengths, "logprobs")


def check_option_probs(
    probs: Sequence[Sequence[float]] | np.ndarray, targets: Sequence[int] | np.ndarray
) -> tuple[RaggedRows, np.ndarray]:
    """Validate ragged per-item option probabilities: in [0, 1] and each row summing to 1 within 1e-6."""
    rows = _flatten_rows("probs", probs)
    outside = (rows.values < 0.0) | (rows.values > 1.0)
    if outside.any():
        first = int(np.flatnonzero(outside)[0])
        row = int(rows.row_of(first))
        raise CalibrationInputError(
            f"probs row {row} has value {float(rows.values[first])} outside [0, 1] "
            f"({int(outside.sum())} such value(s)); pass probabilities, or pass log-likelihoods to the "
            "logprob variant instead"
        )
    sums = rows.row_sum(rows.values)
    off = np.abs(sums - 1.0) > ROW_SUM_TOLERANCE
    if off.any():
        row = int(np.flatnonzero(off)[0])
        raise CalibrationInputError(
            f"probs row {row} sums to {float(sums[row]):.6g}, not 1 (tolerance {ROW_SUM_TOLERANCE:g}; "
            f"{int(off.sum())} such row(s)); normalise each row (p / p.sum()) or pass log-likelihoods "
            "to the logprob variant"
        )
    return rows, check_targets(targets, len(rows), rows.lengths, "probs")


def check_n_bins(n_bins: object) -> int:
    if isinstance(n_bins, bool) or not isinstance(n_bins, int | np.integer) or n_bins < 1:
        raise CalibrationInputError(
            f"n_bins must be an integer >= 1, got {n_bins!r}; 10 or 15 are usual choices"
        )
    return int(n_bins)
