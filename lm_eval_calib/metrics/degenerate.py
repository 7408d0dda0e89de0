"""Degenerate confidences: samples on which the calibration metrics are computed correctly but say nothing.

Some confidence estimators collapse on some tasks: the sequence probability of a long generated answer is a
product of many token probabilities (``1e-10`` and below), a broken or saturated model gives every answer
probability 1, a constant estimator gives every answer the same value. The metrics then print numbers that
look like findings and are not: ECE ``0.0000`` for answers that are all wrong at confidence ``1e-10`` (the
"calibration" of a model that is never right and says so), AUROC ``NaN``, a reliability diagram of one
point.

:func:`degenerate_confidence` names each such condition with a stable ``code`` and a message that says what
the numbers mean and what to do. It is pure (no I/O, no logging): lm-eval's aggregation logs the messages
once per task and estimator (:mod:`lm_eval_calib.record_metrics`), and a report can show the codes.

The conditions (each on all items of one task, estimator and filter):

``single_class``
    Every answer is correct, or every answer is wrong: AUROC is undefined (NaN), AURC is 0 or 1, and every
    calibration error only measures how far the confidences are from 1 or 0.
``tiny_confidence``
    Every confidence is below :data:`DEGENERATE_FLOOR`: all items fall in the lowest bin, so ECE is the
    accuracy and nothing else.
``saturated_confidence``
    Every confidence is above ``1 - DEGENERATE_FLOOR``: ECE is the error rate and nothing else.
``constant_confidence``
    Every confidence is the same value (and not already one of the two above): confidence cannot rank
    answers (AUROC 0.5) and ECE is ``|accuracy - confidence|``.
"""

from __future__ import annotations

from dataclasses import dataclass

from .validation import check_confidence_correct

__all__ = ["DEGENERATE_FLOOR", "Degeneracy", "degenerate_confidence"]

DEGENERATE_FLOOR = 1e-6
"""Confidences below this (or above ``1 -`` this) carry no information that the metrics can read."""

_SEQPROB_HINT = (
    "Typical of the sequence probability of long answers (seqprob): use a length-normalised estimator "
    "(seqprob_mean) or ptrue/verbal for calibration."
)


@dataclass(frozen=True)
class Degeneracy:
    """One degenerate condition: ``code`` (stable, see the module docstring) and a message for a reader."""

    code: str
    message: str


def degenerate_confidence(confidence: object, correct: object) -> list[Degeneracy]:
    """The degenerate conditions of one sample (empty when the metrics are informative).

    ``confidence`` and ``correct`` are per-item arrays as the metrics take them (validated the same way: a
    non-empty sample).
    """
    conf, corr = check_confidence_correct(confidence, correct)
    n = int(conf.shape[0])
    flags = []
    accuracy = float(corr.mean())
    lowest, highest = float(conf.min()), float(conf.max())
    if highest < DEGENERATE_FLOOR:
        flags.append(
            Degeneracy(
                "tiny_confidence",
                f"all {n} confidences are below {DEGENERATE_FLOOR:g} (the largest is {highest:.3g}): every "
                f"item falls in the lowest bin, so ECE is just the accuracy ({accuracy:.4f}) and says "
                f"nothing about calibration (the reliability diagram holds one point at 0). {_SEQPROB_HINT}",
            )
        )
    elif lowest > 1.0 - DEGENERATE_FLOOR:
        flags.append(
            Degeneracy(
                "saturated_confidence",
                f"all {n} confidences are above 1 - {DEGENERATE_FLOOR:g} (the smallest is {lowest:.9g}): "
                f"ECE is just the error rate ({1.0 - accuracy:.4f}) and confidence cannot rank answers. "
                "Check the model's answers (an empty answer scores 1.0) and prefer another estimator.",
            )
        )
    elif highest == lowest and n > 1:
        flags.append(
            Degeneracy(
                "constant_confidence",
                f"all {n} confidences are equal ({lowest:.6g}): confidence cannot rank answers (AUROC is "
                f"0.5) and ECE is just |accuracy - confidence| = {abs(accuracy - lowest):.4f}.",
            )
        )
    n_right = int(corr.sum())
    if n_right in (0, n):
        which, target = ("correct", 1) if n_right else ("wrong", 0)
        flags.append(
            Degeneracy(
                "single_class",
                f"AUROC is undefined (NaN): all {n} answers are {which}, so confidence has nothing to "
                f"separate, and the calibration errors only measure how far confidence is from {target}. "
                "Evaluate more items (a larger --limit) or a task the model gets partly right.",
            )
        )
    return flags
