"""Proper scoring rules (Brier, NLL) and accuracy: means of per-item terms.

These are plain means, so the batched form is a weighted mean along the last axis of a ``(B, n)``
multiplicity matrix.  The per-item terms are kept separately (see :mod:`.data`) because the bootstrap needs
them, and because the open-vocabulary case only has a top-label Brier term.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

from .errors import CalibrationInputError
from .ragged import RaggedRows
from .validation import (
    ROW_SUM_TOLERANCE,
    check_correct,
    check_option_logprobs,
    check_option_probs,
)


def weighted_mean(per_item: np.ndarray, multiplicity: np.ndarray | None) -> np.ndarray:
    """Mean of per-item values under each of ``B`` weightings, shape ``(B,)``."""
    if multiplicity is None:
        return np.array([per_item.mean()])
    weights = np.asarray(multiplicity, dtype=np.float64).reshape(-1, per_item.shape[0])
    total, weight = (
        weights @ np.stack([per_item, np.ones_like(per_item)], axis=1)
    ).T  # one pass over weights
    return total / weight


def brier_terms(probs: RaggedRows, targets: np.ndarray) -> np.ndarray:
    """Per item sum_k (p_k - 1[k == y])^2 over that item's own options (no padding)."""
    return probs.row_sum((probs.values - probs.one_hot(targets)) ** 2)


def nll_terms(log_probs: RaggedRows, targets: np.ndarray) -> np.ndarray:
    """Per item -log p(target) read off normalised log-probabilities (not the log of rounded probs)."""
    return -log_probs.at(log_probs.values, targets)


def brier_score(probs: Sequence[Sequence[float]] | np.ndarray, targets: Sequence[int] | np.ndarray) -> float:
    """Multi-class Brier score, mean over items of sum_k (p_k - 1[k == y])^2; in [0, 2]."""
    rows, targets = check_option_probs(probs, targets)
    return float(weighted_mean(brier_terms(rows, targets), None)[0])


def _looks_like_probs(rows: RaggedRows) -> bool:
    in_range = bool(np.all((rows.values >= 0.0) & (rows.values <= 1.0)))
    return in_range and bool(np.all(np.abs(rows.row_sum(rows.values) - 1.0) <= ROW_SUM_TOLERANCE))


def negative_log_likelihood(
    logprobs_or_probs: Sequence[Sequence[float]] | np.ndarray,
    targets: Sequence[int] | np.ndarray,
    kind: Literal["auto", "logprobs", "probs"] = "auto",
) -> float:
    """Mean of -log p(target) over items.

    ``kind="logprobs"`` takes per-option log-likelihoods (any finite reals, e.g. lm-eval's summed continuation
    log-likelihoods) and renormalises them over the item's options with a log-softmax; ``kind="probs"`` takes
    normalised probabilities.  ``"auto"`` treats the input as probabilities only when every entry is in [0, 1]
    and every row sums to 1, otherwise as log-likelihoods; lm-eval log-likelihoods are <= 0 and so can never
    be mistaken for probabilities, but pass ``kind`` explicitly for logits.  A target probability of 0 gives
    ``inf``.
    """
    if kind not in ("auto", "logprobs", "probs"):
        raise CalibrationInputError(f"unknown kind {kind!r}; use 'auto', 'logprobs' or 'probs'")
    rows, targets = check_option_logprobs(logprobs_or_probs, targets)
    if kind == "probs" or (kind == "auto" and _looks_like_probs(rows)):
        rows, targets = check_option_probs(logprobs_or_probs, targets)
        with np.errstate(divide="ignore"):
            log_probs = RaggedRows(np.log(rows.values), rows.starts, rows.lengths)
    else:
        log_probs = RaggedRows(rows.log_softmax(), rows.starts, rows.lengths)
    return float(weighted_mean(nll_terms(log_probs, targets), None)[0])


def accuracy(correct: object) -> float:
    """Fraction of items answered correctly."""
    return float(weighted_mean(check_correct(correct), None)[0])
