"""Post-hoc recalibration, always fitted on one set of items and scored on another.

Four maps, all monotone in the model's own scores, so accuracy never changes (isotonic regression and
histogram binning are only non-decreasing: they may tie confidences, which changes ranking metrics, not the
prediction):

* **Temperature scaling** (Guo et al. 2017) on per-option log-likelihoods: ``softmax(loglik / T)`` with one
  ``T > 0`` fitted by minimising the multi-class NLL of the gold option.  The NLL is convex in ``1 / T``,
  so a bracketed Newton iteration finds the global optimum.
* **Platt scaling** (Platt 1999) on the top-label confidence ``c``: ``sigmoid(a * logit(c) + b)`` fitted
  by logistic regression of correctness on ``logit(c)``, with Platt's smoothed targets
  ``(N+ + 1) / (N+ + 2)`` and ``1 / (N- + 2)`` so that perfectly separable data still give a finite fit.
  It needs only (confidence, correct), so it works for open-vocabulary and next-token tasks, whose records
  have no option log-likelihoods.  Its scores are top-label: the "NLL" of a Platt result is the binary log
  loss of correctness, not the NLL of the gold answer.
* **Isotonic regression** and **histogram binning** (Zadrozny & Elkan 2001, 2002) on the top-label
  confidence, nonparametric (see :mod:`.nonparametric`); top-label like Platt.
* **Per-option histogram binning** (``option_histogram``): histogram binning of each option position's
  probability one-vs-all, rows renormalised (netcal's multi-class ``HistogramBinning``). Multi-class like
  temperature scaling, for tasks whose options are positional (the letters A-D of MMLU) and so needs the
  same number of options in every document. Unlike the others it can change which option is most probable,
  so the "after" accuracy may differ from the model's.

Scoring a map on the items it was fitted on rewards over-fitting and makes the "after" number optimistic,
most of all on small samples; so the entry points here either take two disjoint splits
(:func:`recalibrate_held_out`) or cross-fit (:func:`recalibrate_cross_fitted`: K folds, each scored by the
map fitted on the other K - 1, optionally keeping groups such as the tokens of one document together).

Pure numpy, no I/O.  Argument checks live in the ``check_*`` functions, apart from the fitting code.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from .bootstrap import (
    CELL_BOOTSTRAP_MIN_ITEMS,
    MAX_CHUNK_ELEMENTS,
    resample_multiplicities,
)
from .cells import Cells, cell_multiplicities
from .data import CalibrationData
from .errors import CalibrationInputError
from .nonparametric import (
    HISTOGRAM_BINS,
    HistogramFit,
    IsotonicFit,
    OptionHistogramFit,
    fit_histogram,
    fit_isotonic,
    fit_isotonic_sorted,
    fit_option_histograms,
    histogram_map,
    isotonic_map,
    option_histogram_map,
)
from .prepared import PreparedData
from .ragged import RaggedRows
from .registry import get_metric
from .scoring import brier_terms, nll_terms
from .sorted_sample import SortedSample
from .validation import check_confidence_correct, check_n_bins, check_option_logprobs

RELATIVE_TEMPERATURE_RANGE = (1e-3, 1e3)
"""Fitted temperatures are searched in this range times the spread of the log-likelihoods (see
:func:`temperature_range`; ``at_bound`` says when the optimum lies outside). At the upper end the typical
option gap becomes 0.001 nats (a uniform map), at the lower end 1000 nats (a one-hot map): beyond either
the map no longer changes. An absolute range would not do: log-likelihoods summed over long options spread
over hundreds of nats, and a cap of T = 100 stopped well short of their optimum."""
PROBABILITY_CLIP = 1e-12
"""Top-label confidences are clipped to [eps, 1 - eps] before the logit and the binary log loss."""
METHODS = ("temperature", "option_histogram", "platt", "isotonic", "histogram")
TOP_LABEL_METHODS = ("platt", "isotonic", "histogram")
"""The methods that need only (confidence, correct): every task has them, token-level ones included."""


# ----------------------------------------------------------------------------------------------- inputs
@dataclass(frozen=True)
class OptionScores:
    """Per-item option log-likelihoods (ragged) and gold indices: the input of temperature scaling."""

    rows: RaggedRows
    targets: np.ndarray

    @classmethod
    def build(
        cls, logprobs: Sequence[Sequence[float]] | np.ndarray, targets: Sequence[int] | np.ndarray
    ) -> OptionScores:
        rows, checked = check_option_logprobs(logprobs, targets)
        return cls(rows, checked)

    def __len__(self) -> int:
        return len(self.rows)

    def take(self, items: np.ndarray) -> OptionScores:
        """The items at ``items`` (sorted integer indices), e.g. one cross-fitting fold."""
        matrix = dense_rows(self.rows)
        if matrix is not None:  # the same values, gathered as rows of a matrix (no per-option index array)
            return OptionScores(
                RaggedRows.from_lengths(matrix[items].ravel(), self.rows.lengths[items]), self.targets[items]
            )
        lengths = self.rows.lengths[items]
        flat = np.repeat(self.rows.starts[items], lengths) + _ranks_within(lengths)
        return OptionScores(RaggedRows.from_lengths(self.rows.values[flat], lengths), self.targets[items])


@dataclass(frozen=True)
class TopLabel:
    """Per-item top-label confidence and correctness: the input of Platt scaling."""

    confidence: np.ndarray
    correct: np.ndarray

    @classmethod
    def build(cls, confidence: object, correct: object) -> TopLabel:
        return cls(*check_confidence_correct(confidence, correct))

    def __len__(self) -> int:
        return int(self.confidence.shape[0])

    def take(self, items: np.ndarray) -> TopLabel:
        return TopLabel(self.confidence[items], self.correct[items])


Split = OptionScores | TopLabel


def _ranks_within(lengths: np.ndarray) -> np.ndarray:
    """0, 1, ..., len-1 for each row, concatenated."""
    total = int(lengths.sum())
    starts = np.zeros(lengths.shape[0], dtype=np.int64)
    np.cumsum(lengths[:-1], out=starts[1:])
    return np.arange(total, dtype=np.int64) - np.repeat(starts, lengths)


DENSE_MAX_OPTIONS = 8
"""Up to this many options per row :func:`row_sums` of a matrix reproduces ``np.add.reduceat`` to the bit."""


def dense_rows(rows: RaggedRows) -> np.ndarray | None:
    """The rows as an ``(n, K)`` matrix view when every row has the same K options stored in order (MMLU's
    A-D), else ``None``. Row-wise work on the matrix avoids ``reduceat`` and ``np.repeat``, the bulk of the
    time of temperature scaling on a million documents."""
    n = rows.lengths.shape[0]
    if n == 0:
        return None
    k = int(rows.lengths[0])
    if k > DENSE_MAX_OPTIONS or rows.values.shape[0] != n * k or not np.all(rows.lengths == k):
        return None
    if not np.array_equal(rows.starts, np.arange(n, dtype=np.int64) * k):
        return None
    return rows.values.reshape(n, k)


def row_sums(matrix: np.ndarray) -> np.ndarray:
    """Row sums of a matrix of at most :data:`DENSE_MAX_OPTIONS` columns, equal to the bit to
    :meth:`RaggedRows.row_sum` of the same rows: ``reduceat`` adds the first entry to the sum of the others,
    which numpy sums left to right below eight terms, so the association is ``a + ((b + c) + d)``."""
    if matrix.shape[1] == 1:
        return matrix[:, 0].copy()
    rest = matrix[:, 1].copy()
    for column in range(2, matrix.shape[1]):
        rest += matrix[:, column]
    return matrix[:, 0] + rest


def column_sums(columns: np.ndarray) -> np.ndarray:
    """:func:`row_sums` of ``columns.T``: the rows of a ``(K, n)`` array are the options, each contiguous, so
    every addition runs over contiguous memory (the same bits, several times faster than strided columns)."""
    if columns.shape[0] == 1:
        return columns[0].copy()
    rest = columns[1].copy()
    for row in range(2, columns.shape[0]):
        rest += columns[row]
    return columns[0] + rest


# ----------------------------------------------------------------------------------------------- checks
def check_method(method: object, split: object) -> str:
    """The method name, checked against the kind of data it is given (and per-option binning's shape)."""
    if method not in METHODS:
        raise CalibrationInputError(
            f"unknown recalibration method {method!r}; use one of {', '.join(METHODS)}"
        )
    wanted = TopLabel if method in TOP_LABEL_METHODS else OptionScores
    if not isinstance(split, wanted):
        raise CalibrationInputError(
            f"{method} scaling needs {wanted.__name__} (build it with {wanted.__name__}.build(...)), got "
            f"{type(split).__name__}"
        )
    if method == "option_histogram" and np.unique(split.rows.lengths).shape[0] > 1:  # type: ignore[union-attr]
        raise CalibrationInputError(
            "option_histogram binning needs the same number of options in every document (positional options "
            "such as A-D); these documents have "
            f"{int(split.rows.lengths.min())} to {int(split.rows.lengths.max())}; use temperature scaling"  # type: ignore[union-attr]
        )
    return str(method)


def check_folds(n_folds: object, n_units: int, unit: str) -> int:
    """``n_folds`` is an integer >= 2 and there is at least one ``unit`` (item or group) per fold."""
    if isinstance(n_folds, bool) or not isinstance(n_folds, int | np.integer) or n_folds < 2:
        raise CalibrationInputError(f"n_folds must be an integer >= 2, got {n_folds!r}; 5 is usual")
    if n_units < n_folds:
        raise CalibrationInputError(
            f"{n_folds}-fold cross-fitting needs at least {n_folds} {unit}s, got {n_units}; use fewer folds "
            "or more data"
        )
    return int(n_folds)


def check_groups(groups: object, n_items: int) -> np.ndarray:
    """One integer group id per item (e.g. the document a token belongs to)."""
    array = np.asarray(groups)
    if array.ndim != 1 or array.shape[0] != n_items:
        raise CalibrationInputError(
            f"groups must hold one id per item ({n_items}), got shape {array.shape}; pass e.g. the document "
            "index of each token"
        )
    if not np.issubdtype(array.dtype, np.integer):
        raise CalibrationInputError(f"groups has dtype {array.dtype}; pass integer group ids")
    return array.astype(np.int64)


def check_seed(seed: object) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise CalibrationInputError(f"seed must be an integer >= 0, got {seed!r}")
    return int(seed)


# ------------------------------------------------------------------------------------ temperature scaling
@dataclass(frozen=True)
class TemperatureFit:
    temperature: float
    at_bound: bool
    """True when the optimum lies outside :func:`temperature_range` and was clipped to its edge."""


def temperature_range(scores: OptionScores) -> tuple[float, float]:
    """The temperatures searched for ``scores``: :data:`RELATIVE_TEMPERATURE_RANGE` times their spread.

    The spread is the median, over items with two or more options, of the gap between the highest and the
    lowest option log-likelihood (the median, so that a few extreme items do not set the scale); 1 when
    every item is flat or has a single option, where no temperature changes anything.
    """
    rows = scores.rows
    matrix = dense_rows(rows)
    if matrix is not None:
        columns = np.ascontiguousarray(matrix.T)  # a maximum is exact in any order
        gaps = columns.max(axis=0) + (-columns).max(axis=0)
    else:
        gaps = rows.row_max(rows.values) + rows.row_max(-rows.values)  # max - min of each row
    gaps = gaps[(rows.lengths > 1) & (gaps > 0.0)]
    spread = float(np.median(gaps)) if gaps.shape[0] else 1.0
    return RELATIVE_TEMPERATURE_RANGE[0] * spread, RELATIVE_TEMPERATURE_RANGE[1] * spread


def _temperature_gradient(shifted: RaggedRows, target_values: np.ndarray, beta: float) -> tuple[float, float]:
    """First and second derivative of the mean NLL of ``softmax(beta * loglik)`` with respect to beta.

    d/dbeta = mean(E_p[l] - l_target) and d2/dbeta2 = mean(Var_p[l]) >= 0 (so the NLL is convex in beta).
    ``shifted`` holds each row minus its maximum, which changes neither derivative but keeps exp() finite.
    """
    weights = np.exp(beta * shifted.values)
    probs = weights / shifted.repeat(shifted.row_sum(weights))
    mean = shifted.row_sum(probs * shifted.values)
    var = np.maximum(shifted.row_sum(probs * shifted.values**2) - mean**2, 0.0)
    return float(np.mean(mean - target_values)), float(np.mean(var))


GRADIENT_CHUNK = 8192
"""Documents per block of the dense temperature gradient: a block's arrays stay in the CPU cache."""


def _dense_temperature_gradient(
    shifted: np.ndarray, squared: np.ndarray, target_values: np.ndarray, beta: float
) -> tuple[float, float]:
    """:func:`_temperature_gradient` on ``(K, n)`` option columns (``squared``: ``shifted ** 2``), the same
    bits: the same element-wise operations per document, sums in :func:`row_sums` order, and the two means
    over all documents at the end; computed in blocks of :data:`GRADIENT_CHUNK` documents."""
    n = shifted.shape[1]
    mean, var = np.empty(n), np.empty(n)
    for start in range(0, n, GRADIENT_CHUNK):
        block = slice(start, min(n, start + GRADIENT_CHUNK))
        columns = shifted[:, block]
        probs = beta * columns
        np.exp(probs, out=probs)
        probs /= column_sums(probs)
        product = probs * columns
        mean[block] = column_sums(product)
        np.multiply(probs, squared[:, block], out=product)
        var[block] = np.maximum(column_sums(product) - mean[block] ** 2, 0.0)
    return float(np.mean(mean - target_values)), float(np.mean(var))


@dataclass(frozen=True)
class _DenseParts:
    """What temperature scaling needs of same-width documents, per document, as ``(K, n)`` option columns:
    the log-likelihoods minus each document's maximum, their squares, the gold option's, and each document's
    max - min gap (:func:`temperature_range`). All per document, so a fold's parts are these parts' columns:
    cross-fitting computes them once for all folds."""

    shifted: np.ndarray
    squared: np.ndarray
    target_values: np.ndarray
    gaps: np.ndarray

    @classmethod
    def of(cls, matrix: np.ndarray, targets: np.ndarray) -> _DenseParts:
        columns = np.ascontiguousarray(matrix.T)
        top = columns.max(axis=0)  # a maximum is exact in any order
        shifted = columns - top
        gaps = top + (-columns).max(axis=0)
        return cls(shifted, shifted**2, shifted[targets, np.arange(shifted.shape[1])], gaps)

    def take(self, items: np.ndarray) -> _DenseParts:
        return _DenseParts(
            self.shifted[:, items], self.squared[:, items], self.target_values[items], self.gaps[items]
        )

    def fit(self, tol: float = 1e-10, max_iter: int = 200) -> TemperatureFit:
        """:func:`fit_temperature` of these documents."""

        def gradient(beta: float) -> tuple[float, float]:
            return _dense_temperature_gradient(self.shifted, self.squared, self.target_values, beta)

        return _newton_temperature(_range_of_gaps(self.gaps), gradient, tol, max_iter)


def _range_of_gaps(gaps: np.ndarray) -> tuple[float, float]:
    """:func:`temperature_range` from the max - min gap of each document with two or more options."""
    gaps = gaps[gaps > 0.0]
    spread = float(np.median(gaps)) if gaps.shape[0] else 1.0
    return RELATIVE_TEMPERATURE_RANGE[0] * spread, RELATIVE_TEMPERATURE_RANGE[1] * spread


def fit_temperature(scores: OptionScores, tol: float = 1e-10, max_iter: int = 200) -> TemperatureFit:
    """The temperature minimising the gold-option NLL of ``scores`` (a bracketed Newton search on 1/T)."""
    rows = scores.rows
    matrix = dense_rows(rows)
    if matrix is not None:
        return _DenseParts.of(matrix, scores.targets).fit(tol, max_iter)
    shifted = RaggedRows(rows.values - rows.repeat(rows.row_max(rows.values)), rows.starts, rows.lengths)
    target_values = shifted.at(shifted.values, scores.targets)

    def gradient(beta: float) -> tuple[float, float]:
        return _temperature_gradient(shifted, target_values, beta)

    return _newton_temperature(temperature_range(scores), gradient, tol, max_iter)


def _newton_temperature(
    t_range: tuple[float, float], gradient: Callable[[float], tuple[float, float]], tol: float, max_iter: int
) -> TemperatureFit:
    t_min, t_max = t_range
    low, high = 1.0 / t_max, 1.0 / t_min  # bounds on beta = 1 / T
    g_low, _ = gradient(low)
    if g_low >= 0.0:  # NLL increases from the smallest beta on: flattest allowed map (or no signal at all)
        flat = g_low == 0.0 and gradient(high)[0] == 0.0
        return TemperatureFit(1.0, False) if flat else TemperatureFit(t_max, True)
    if gradient(high)[0] <= 0.0:
        return TemperatureFit(t_min, True)
    beta = 1.0 if low < 1.0 < high else np.sqrt(low * high)
    for _ in range(max_iter):
        grad, hess = gradient(beta)
        if abs(grad) <= tol:
            break
        if grad < 0.0:
            low = beta
        else:
            high = beta
        step = beta - grad / hess if hess > 0.0 else np.nan
        # Newton inside the bracket, else bisect geometrically (the bracket spans six orders of magnitude)
        beta = step if low < step < high else float(np.sqrt(low * high))
        if high - low <= tol * beta:
            break
    return TemperatureFit(float(1.0 / beta), False)


def temperature_scaled(scores: OptionScores, temperature: float) -> CalibrationData:
    """Calibration data of ``softmax(loglik / temperature)``; temperature 1 gives the model's own."""
    if not (np.isfinite(temperature) and temperature > 0.0):
        raise CalibrationInputError(f"temperature must be finite and > 0, got {temperature!r}")
    matrix = dense_rows(scores.rows)
    if matrix is not None:
        return _dense_scaled(matrix / temperature, scores.targets)
    rows = RaggedRows(scores.rows.values / temperature, scores.rows.starts, scores.rows.lengths)
    log_probs = RaggedRows(rows.log_softmax(), rows.starts, rows.lengths)
    probs = RaggedRows(np.exp(log_probs.values), rows.starts, rows.lengths)
    predicted = rows.first_argmax(rows.values)
    return CalibrationData(
        confidence=np.minimum(probs.at(probs.values, predicted), 1.0),
        correct=(predicted == scores.targets).astype(np.float64),
        brier=brier_terms(probs, scores.targets),
        nll=nll_terms(log_probs, scores.targets),
    )


def _dense_scaled(scaled: np.ndarray, targets: np.ndarray) -> CalibrationData:
    """:func:`temperature_scaled` of an ``(n, K)`` matrix already divided by its temperature (one per row
    allowed, as in cross-fitting), computed like the ragged rows to the bit (on contiguous option columns,
    in blocks of :data:`GRADIENT_CHUNK` documents)."""
    n = scaled.shape[0]
    fields = {name: np.empty(n) for name in ("confidence", "correct", "brier", "nll")}
    for start in range(0, n, GRADIENT_CHUNK):
        block = slice(start, min(n, start + GRADIENT_CHUNK))
        columns = np.ascontiguousarray(scaled[block].T)
        items = np.arange(columns.shape[1])
        gold = targets[block]
        shifted = columns - columns.max(axis=0)
        log_probs = shifted - np.log(column_sums(np.exp(shifted)))
        probs = np.exp(log_probs)
        predicted = np.argmax(scaled[block], axis=1)  # the first maximum, as RaggedRows.first_argmax
        hot = np.zeros_like(probs)
        hot[gold, items] = 1.0
        fields["confidence"][block] = np.minimum(probs[predicted, items], 1.0)
        fields["correct"][block] = predicted == gold
        fields["brier"][block] = column_sums((probs - hot) ** 2)
        fields["nll"][block] = -log_probs[gold, items]
    return CalibrationData(**fields)


# ---------------------------------------------------------------------------------------- Platt scaling
@dataclass(frozen=True)
class PlattFit:
    slope: float
    intercept: float


def _logit(confidence: np.ndarray) -> np.ndarray:
    clipped = np.clip(confidence, PROBABILITY_CLIP, 1.0 - PROBABILITY_CLIP)
    return np.log(clipped) - np.log1p(-clipped)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return np.exp(-np.logaddexp(0.0, -z))


def _log_loss(z: np.ndarray, target: np.ndarray, other: np.ndarray | None = None) -> float:
    """Mean cross-entropy of sigmoid(z) against (possibly smoothed) targets, computed in log space.

    ``other`` is ``1 - target`` when the caller has it; the sum is built in place, with the same operations
    in the same order as ``target * softplus(-z) + (1 - target) * softplus(z)``, so the same bits."""
    other = 1.0 - target if other is None else other
    positive = np.logaddexp(0.0, -z)
    positive *= target
    negative = np.logaddexp(0.0, z)
    negative *= other
    positive += negative
    return float(np.mean(positive))


def fit_platt(top: TopLabel, tol: float = 1e-10, max_iter: int = 100) -> PlattFit:
    """Logistic regression of correctness on logit(confidence), Newton steps with backtracking."""
    return _fit_platt_logits(_logit(top.confidence), top.correct, tol, max_iter)


def _fit_platt_logits(
    x: np.ndarray, correct: np.ndarray, tol: float = 1e-10, max_iter: int = 100
) -> PlattFit:
    """:func:`fit_platt` from the logits of the confidences (cross-fitting takes them once for all folds)."""
    n_pos = float(correct.sum())
    n_neg = float(correct.shape[0]) - n_pos
    target = np.where(correct > 0.5, (n_pos + 1.0) / (n_pos + 2.0), 1.0 / (n_neg + 2.0))
    other = 1.0 - target
    params = np.array([1.0, 0.0])  # the identity map
    z = params[0] * x + params[1]
    loss = _log_loss(z, target, other)
    for _ in range(max_iter):
        p = _sigmoid(z)
        residual, weight = p - target, p * (1.0 - p)
        weight_x = weight * x
        mean_weight_x = np.mean(weight_x)
        grad = np.array([np.mean(residual * x), np.mean(residual)])
        hess = np.array([[np.mean(weight_x * x), mean_weight_x], [mean_weight_x, np.mean(weight)]])
        step = np.linalg.lstsq(hess, grad, rcond=None)[0]  # min-norm step when x is constant
        shrink = 1.0
        while shrink > 1e-8:
            candidate = params - shrink * step
            candidate_z = candidate[0] * x + candidate[1]
            new_loss = _log_loss(candidate_z, target, other)
            if new_loss <= loss:
                break
            shrink *= 0.5
        else:
            break
        improvement = loss - new_loss
        params, loss, z = candidate, new_loss, candidate_z
        if improvement <= tol * max(1.0, abs(loss)) and np.max(np.abs(grad)) <= 1e-6:
            break
    return PlattFit(float(params[0]), float(params[1]))


def top_label_data(confidence: np.ndarray, correct: np.ndarray) -> CalibrationData:
    """Top-label data of recalibrated confidences: binary Brier and binary log loss (clipped), as Platt's."""
    z = _logit(confidence)
    loss = correct * np.logaddexp(0.0, -z) + (1.0 - correct) * np.logaddexp(0.0, z)
    return CalibrationData(
        confidence=confidence, correct=correct, brier=(confidence - correct) ** 2, nll=loss
    )


def platt_scaled(top: TopLabel, fit: PlattFit | None) -> CalibrationData:
    """Top-label data after Platt scaling (``fit=None``: as given). ``nll`` is the binary log loss."""
    z = _logit(top.confidence)
    if fit is not None:
        z = fit.slope * z + fit.intercept
    confidence = top.confidence if fit is None else _sigmoid(z)  # as given: not even a round-off change
    loss = top.correct * np.logaddexp(0.0, -z) + (1.0 - top.correct) * np.logaddexp(0.0, z)
    return CalibrationData(
        confidence=confidence, correct=top.correct, brier=(confidence - top.correct) ** 2, nll=loss
    )


# ------------------------------------------------------------------------------------ held out, cross-fit
@dataclass(frozen=True)
class Recalibration:
    """A recalibration scored on items none of its fits saw.

    ``before`` and ``after`` hold the same scored items, as the model gave them and recalibrated. For
    the :data:`TOP_LABEL_METHODS` both are top-label (``nll`` is the binary log loss of correctness, with
    the same probability clipping in both). ``parameters`` is the fit (held out) or the mean of the fold fits
    (cross-fitted; ``fold_parameters`` has each one): ``temperature``; ``slope`` and ``intercept``
    (Platt); ``steps``, the number of distinct levels (isotonic); ``bins`` and ``empty_bins`` (histogram);
    ``bins`` and ``options`` (per-option histogram).
    """

    method: str
    scheme: str
    """``"held-out"`` or ``"cross-fit"``."""
    parameters: dict[str, float]
    before: CalibrationData
    after: CalibrationData
    n_fit: int
    """Items each fit saw (for cross-fitting: the smallest training part)."""
    n_folds: int = 0
    fold_parameters: tuple[dict[str, float], ...] = field(default_factory=tuple)
    at_bound: bool = False


Fit = TemperatureFit | PlattFit | IsotonicFit | HistogramFit | OptionHistogramFit

STDERR_KEYS = ("ece", "brier", "nll")


def _prepared(data: CalibrationData, top_label: bool) -> PreparedData:
    """:meth:`PreparedData.build` of ``data`` (the same permutation), sorted faster.

    ``PreparedData`` sorts on (confidence, correct, Brier, NLL), stably. A stable sort on confidence alone
    gives that order everywhere but inside runs of tied confidences, which are then re-sorted on all four keys
    (a subset: recalibrated confidences from smooth maps rarely tie). For top-label data (Brier and log loss
    functions of confidence and correctness, as every top-label recalibration's) the tie-break needs only
    correctness: wherever both tie, all four do."""
    order = np.argsort(data.confidence, kind="stable")
    ranked = data.confidence[order]
    tied = ranked[1:] == ranked[:-1]
    if tied.any():
        in_run = np.zeros(order.shape[0], dtype=bool)
        in_run[1:] |= tied
        in_run[:-1] |= tied
        at = np.flatnonzero(in_run)
        items = order[at]  # in (confidence, position) order
        if top_label:
            keys: tuple[np.ndarray, ...] = (data.correct[items], data.confidence[items])
        else:
            keys = (data.nll[items], data.brier[items], data.correct[items], data.confidence[items])
        order[at] = items[np.lexsort(keys)]
    ordered = CalibrationData(data.confidence[order], data.correct[order], data.brier[order], data.nll[order])
    return PreparedData(data=ordered, sample=SortedSample.build(ordered.confidence, ordered.correct))


def after_stderrs(
    data: CalibrationData,
    keys: Sequence[str] = STDERR_KEYS,
    n_resamples: int = 1000,
    seed: int = 1234,
    n_bins: int = 10,
    top_label: bool = False,
) -> dict[str, float]:
    """``bootstrap_stderr(key, data, n_resamples, seed, n_bins)`` for each key, the same numbers, with the
    work the keys share done once: the confidence sort, the resample draws of the item bootstrap (one
    multiplicity chunk feeds every key) and, above the cell threshold, the multinomial draws of keys whose
    cells have the same frequencies (Brier and NLL of top-label data). ``top_label=True`` says Brier and NLL
    are functions of (confidence, correct), which allows a cheaper sort (see :func:`_prepared`)."""
    infos = {key: get_metric(key) for key in keys}
    if any(info.batched is None for info in infos.values()):
        raise CalibrationInputError(
            f"after_stderrs takes batched metrics only, got {list(keys)}; use bootstrap_stderr"
        )
    n_bins = check_n_bins(n_bins)
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, int | np.integer) or n_resamples < 1:
        raise CalibrationInputError(
            f"n_resamples must be an integer >= 1, got {n_resamples!r}; 1000 is usual"
        )
    prepared = _prepared(data, top_label)
    values: dict[str, list[np.ndarray]] = {key: [] for key in keys}
    with np.errstate(invalid="ignore", divide="ignore"):
        if len(prepared) > CELL_BOOTSTRAP_MIN_ITEMS:
            draws: dict[bytes, list[np.ndarray]] = {}
            for key, info in infos.items():
                if info.mean_of is not None:
                    cells = Cells.of_values(prepared.data, info.mean_of)
                else:
                    cells = Cells.of_confidence(prepared, n_bins)
                tag = cells.frequency.tobytes()
                if tag not in draws:
                    draws[tag] = list(
                        cell_multiplicities(cells.frequency, int(n_resamples), seed, MAX_CHUNK_ELEMENTS)
                    )
                values[key] = [info.batched(cells.prepared, chunk, n_bins) for chunk in draws[tag]]
        else:
            for chunk in resample_multiplicities(len(prepared), int(n_resamples), seed):
                for key, info in infos.items():
                    values[key].append(info.batched(prepared, chunk, n_bins))
    found = {}
    for key in keys:
        every = np.concatenate(values[key])
        every = every[~np.isnan(every)]
        found[key] = float(np.std(every, ddof=1)) if every.shape[0] >= 2 else float("nan")
    return found


def _option_matrix(scores: OptionScores) -> np.ndarray:
    """The softmax over each document's options as an (n, K) matrix (all documents have K options)."""
    rows = scores.rows
    matrix = dense_rows(rows)
    if matrix is None:
        return np.exp(rows.log_softmax()).reshape(len(scores), -1)
    shifted = matrix - matrix.max(axis=1)[:, None]
    return np.exp(shifted - np.log(row_sums(np.exp(shifted)))[:, None])


def option_histogram_scaled(scores: OptionScores, fit: OptionHistogramFit) -> CalibrationData:
    """Multi-class data after per-option histogram binning; the prediction is the new first argmax."""
    matrix = _option_matrix(scores)
    if matrix.shape[1] != fit.n_options:
        raise CalibrationInputError(
            f"per-option histograms were fitted on {fit.n_options} options but these documents have "
            f"{matrix.shape[1]}; fit and score on the same task"
        )
    probs = option_histogram_map(fit, matrix)
    predicted = np.argmax(probs, axis=1)
    gold = probs[np.arange(len(scores)), scores.targets]
    if probs.shape[1] <= DENSE_MAX_OPTIONS:
        hot = np.zeros_like(probs)
        hot[np.arange(len(scores)), scores.targets] = 1.0
        brier = row_sums((probs - hot) ** 2)
    else:
        brier = brier_terms(RaggedRows.from_lengths(probs.ravel(), scores.rows.lengths), scores.targets)
    return CalibrationData(
        confidence=probs[np.arange(len(scores)), predicted],
        correct=(predicted == scores.targets).astype(np.float64),
        brier=brier,
        nll=-np.log(np.maximum(gold, PROBABILITY_CLIP)),
    )


def _fit(method: str, split: Split) -> tuple[Fit, dict[str, float], bool]:
    """The fitted map, its parameters for the tables, and whether it stopped at a search bound."""
    if method == "temperature":
        fit = fit_temperature(split)  # type: ignore[arg-type]
        return fit, {"temperature": fit.temperature}, fit.at_bound
    if method == "platt":
        platt = fit_platt(split)  # type: ignore[arg-type]
        return platt, {"slope": platt.slope, "intercept": platt.intercept}, False
    if method == "option_histogram":
        per_option = fit_option_histograms(_option_matrix(split), split.targets, HISTOGRAM_BINS)  # type: ignore[arg-type, union-attr]
        return per_option, {"bins": float(HISTOGRAM_BINS), "options": float(per_option.n_options)}, False
    if method == "isotonic":
        iso = fit_isotonic(split.confidence, split.correct)  # type: ignore[union-attr]
        return iso, {"steps": float(iso.n_steps)}, False
    hist = fit_histogram(split.confidence, split.correct, HISTOGRAM_BINS)  # type: ignore[union-attr]
    return hist, {"bins": float(hist.n_bins), "empty_bins": float(np.sum(hist.counts == 0))}, False


def _apply(method: str, split: Split, fit: Fit | None) -> CalibrationData:
    """``split`` as the model gave it (``fit=None``) or mapped by ``fit``."""
    if method == "temperature" or (method == "option_histogram" and fit is None):
        temperature = 1.0 if fit is None else fit.temperature  # type: ignore[union-attr]
        return temperature_scaled(split, temperature)  # type: ignore[arg-type]
    if method == "option_histogram":
        return option_histogram_scaled(split, fit)  # type: ignore[arg-type]
    if method == "platt" or fit is None:  # every top-label method starts from the same "before"
        return platt_scaled(split, fit)  # type: ignore[arg-type]
    if isinstance(fit, IsotonicFit):
        return top_label_data(isotonic_map(fit, split.confidence), split.correct)  # type: ignore[union-attr]
    return top_label_data(histogram_map(fit, split.confidence), split.correct)  # type: ignore[arg-type, union-attr]


def recalibrate_held_out(method: str, fit_on: Split, score_on: Split) -> Recalibration:
    """Fit ``method`` on ``fit_on``, score it on ``score_on``: two disjoint splits (e.g. MMLU val -> test)."""
    check_method(method, fit_on)
    check_method(method, score_on)
    fit, parameters, at_bound = _fit(method, fit_on)
    return Recalibration(
        method=method,
        scheme="held-out",
        parameters=parameters,
        before=_apply(method, score_on, None),
        after=_apply(method, score_on, fit),
        n_fit=len(fit_on),
        at_bound=at_bound,
    )


def fold_of_units(n_units: int, n_folds: int, seed: int) -> np.ndarray:
    """A fold number per unit: a seeded random permutation dealt round-robin, so fold sizes differ by <= 1."""
    order = np.random.default_rng(seed).permutation(n_units)
    folds = np.empty(n_units, dtype=np.int64)
    folds[order] = np.arange(n_units) % n_folds
    return folds


def _fold_fits(
    method: str, split: Split, folds: Sequence[tuple[np.ndarray, np.ndarray]]
) -> list[tuple[Fit, dict[str, float], bool]]:
    """One fit per fold on its training items. Isotonic regression and Platt scaling share work across
    folds (one sort, one logit of all confidences); the fits equal :func:`_fit` on each fold to the bit."""
    if method == "isotonic":
        order = np.argsort(split.confidence, kind="stable")  # type: ignore[union-attr]
        fold_of_sorted = np.empty(len(split), dtype=np.int64)
        for k, (_, test) in enumerate(folds):
            fold_of_sorted[test] = k
        fold_of_sorted = fold_of_sorted[order]
        fits: list[tuple[Fit, dict[str, float], bool]] = []
        for k in range(len(folds)):
            train = order[fold_of_sorted != k]  # the training items, already in confidence order
            iso = fit_isotonic_sorted(split.confidence[train], split.correct[train])  # type: ignore[union-attr]
            fits.append((iso, {"steps": float(iso.n_steps)}, False))
        return fits
    if method == "platt":
        logits = _logit(split.confidence)  # type: ignore[union-attr]
        found = []
        for train, _ in folds:
            platt = _fit_platt_logits(logits[train], split.correct[train])  # type: ignore[union-attr]
            found.append((platt, {"slope": platt.slope, "intercept": platt.intercept}, False))
        return found  # type: ignore[return-value]
    matrix = dense_rows(split.rows) if method == "temperature" else None  # type: ignore[union-attr]
    if matrix is not None:
        parts = _DenseParts.of(matrix, split.targets)  # type: ignore[union-attr]
        found = []
        for train, _ in folds:
            fit = parts.take(train).fit()
            found.append((fit, {"temperature": fit.temperature}, fit.at_bound))
        return found  # type: ignore[return-value]
    return [_fit(method, split.take(train)) for train, _ in folds]


def _cross_fitted_after(
    method: str,
    split: Split,
    fold: np.ndarray,
    folds: Sequence[tuple[np.ndarray, np.ndarray]],
    fits: list[Fit],
) -> CalibrationData:
    """Every item recalibrated by its fold's map, in the caller's item order.

    Temperature scaling on same-width options divides each row by its fold's temperature and scales all rows
    in one pass; the other maps are applied fold by fold and the pieces put back in place."""
    matrix = dense_rows(split.rows) if method == "temperature" else None  # type: ignore[union-attr]
    if matrix is not None:
        temperatures = np.array([f.temperature for f in fits])  # type: ignore[union-attr]
        return _dense_scaled(matrix / temperatures[fold][:, None], split.targets)  # type: ignore[union-attr]
    n = len(split)
    fields = {name: np.empty(n, dtype=np.float64) for name in ("confidence", "correct", "brier", "nll")}
    for (_, test), fit in zip(folds, fits, strict=True):
        piece = _apply(method, split.take(test), fit)
        for name, values in fields.items():
            values[test] = getattr(piece, name)
    return CalibrationData(**fields)


def recalibrate_cross_fitted(
    method: str, split: Split, n_folds: int = 5, seed: int = 0, groups: np.ndarray | None = None
) -> Recalibration:
    """K-fold cross-fitting: every item is recalibrated by the map fitted on the other folds.

    ``groups`` (one integer per item) keeps a group's items in one fold, e.g. the tokens of one document,
    whose errors are correlated; without it every item is its own group.
    """
    check_method(method, split)
    seed = check_seed(seed)
    if groups is None:
        unit_of_item = np.arange(len(split), dtype=np.int64)
        n_units = len(split)
    else:
        _, unit_of_item = np.unique(check_groups(groups, len(split)), return_inverse=True)
        n_units = int(unit_of_item.max()) + 1
    n_folds = check_folds(n_folds, n_units, "item" if groups is None else "group")
    fold = fold_of_units(n_units, n_folds, seed)[unit_of_item]
    folds = [(np.flatnonzero(fold != k), np.flatnonzero(fold == k)) for k in range(n_folds)]
    fits = _fold_fits(method, split, folds)
    fold_parameters = [parameters for _, parameters, _ in fits]
    at_bound = any(bound for _, _, bound in fits)
    n_fit = min([len(split)] + [int(train.shape[0]) for train, _ in folds])
    # "before" is row-wise (or item-wise), so the whole split at once equals the folds pooled, to the bit
    before = _apply(method, split, None)
    after = _cross_fitted_after(method, split, fold, folds, [f for f, _, _ in fits])
    mean = {key: float(np.mean([p[key] for p in fold_parameters])) for key in fold_parameters[0]}
    return Recalibration(
        method=method,
        scheme="cross-fit",
        parameters=mean,
        before=before,
        after=after,
        n_fit=n_fit,
        n_folds=n_folds,
        fold_parameters=tuple(fold_parameters),
        at_bound=at_bound,
    )
