"""Split-conformal answer sets for multiple choice: options to keep so the gold one is in at rate 1 - alpha.

A score ``s(x, y)`` says how unusual option ``y`` is as the answer to ``x`` under the model's option
probabilities ``p`` (the softmax of the option log-likelihoods). On n calibration documents the threshold is
the ``ceil((n + 1)(1 - alpha))``-th smallest gold-option score (``+inf``, every option, when that exceeds
n), and a new document's set keeps the options whose score is within it. If calibration and test documents
are exchangeable, the gold option is in the set with probability at least 1 - alpha (Vovk et al. 2005;
Angelopoulos & Bates 2021, "A gentle introduction to conformal prediction", section 1). Two scores:

* **LAC** (least ambiguous set-valued classifier, Sadinle et al. 2019): ``s = 1 - p_y``; keeps every option
  with ``p_y >= 1 - threshold``. The smallest sets on average; a set may be empty (the document then counts as
  uncovered, size 0).
* **APS** (adaptive prediction sets, Romano et al. 2020): options ranked by decreasing probability (ties by
  option order); the set takes options in that order until their mass reaches the threshold, the option
  that crosses it included, so it is never empty and larger where the model is unsure. The calibration
  score of the gold option is Romano et al.'s randomised one, the mass ranked above it plus ``U`` times its
  own probability (``U`` uniform on [0, 1], seeded), as MAPIE computes it: with the deterministic score (the
  mass at and above the gold option) the threshold is so high that sets reach far past 1 - alpha (0.995
  instead of 0.9 on a 4-option test, 3.7 options per set). The set itself is deterministic (MAPIE's
  ``include_last_label=True``), so coverage stays at least 1 - alpha for every draw of ``U``.

Coverage is guaranteed on average over documents, not per category: the report's per-category coverage shows
where it fails conditionally.

Fitting schemes, as for recalibration: **held out** (threshold from a calibration run, e.g.
``calib_mmlu_val``, applied to the test run) or **cross-fitted** within one run (K seeded folds over
documents; each fold's sets use the threshold of the other K - 1 folds, so no document calibrates its own
set). Standard errors are bootstrap over documents with the thresholds held fixed: they measure how the
coverage and size of these sets vary with the documents drawn, not the calibration noise.

Checked against MAPIE's ``SplitConformalClassifier`` (LAC and APS with ``include_last_label=True``) and an
independent loop implementation in the tests. MAPIE compares with a 1e-8 tolerance, we compare exactly; the
two differ only for a score within 1e-8 of the threshold.

Pure numpy, no I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .errors import CalibrationInputError
from .ragged import RaggedRows
from .recalibration import OptionScores, check_folds, check_seed, fold_of_units

SCORES = ("lac", "aps")
DEFAULT_ALPHA = 0.1
DEFAULT_RESAMPLES = 1000


def check_alpha(alpha: object) -> float:
    """``alpha`` is a number strictly between 0 and 1 (the tolerated miss rate)."""
    if isinstance(alpha, bool) or not isinstance(alpha, int | float | np.floating) or not 0.0 < alpha < 1.0:
        raise CalibrationInputError(
            f"conformal alpha must be a number in (0, 1), got {alpha!r}; 0.1 asks for sets that hold the "
            "gold option 90% of the time"
        )
    return float(alpha)


def check_score(score: object) -> str:
    if score not in SCORES:
        raise CalibrationInputError(f"unknown conformal score {score!r}; use one of {', '.join(SCORES)}")
    return str(score)


# ---------------------------------------------------------------------------------------------- scores
def option_probabilities(scores: OptionScores) -> RaggedRows:
    """Each document's softmax over its own option log-likelihoods (ragged)."""
    rows = scores.rows
    return RaggedRows(np.exp(rows.log_softmax()), rows.starts, rows.lengths)


def _mass_at_or_above(probs: RaggedRows) -> tuple[np.ndarray, np.ndarray]:
    """Per option: the mass of the options ranked above it, and that mass plus its own (APS order).

    Rows are ranked in groups of equal option count, each group as one matrix (a stable sort of -p per row:
    ties keep option order), so the cumulative sums are per row and exact to round-off within the row.
    """
    above = np.empty_like(probs.values)
    for length in np.unique(probs.lengths):
        rows = np.flatnonzero(probs.lengths == length)
        flat = (probs.starts[rows][:, None] + np.arange(length)).ravel()
        matrix = probs.values[flat].reshape(-1, length)
        order = np.argsort(-matrix, axis=1, kind="stable")
        ranked = np.take_along_axis(matrix, order, axis=1)
        exclusive = np.cumsum(ranked, axis=1) - ranked
        block = np.empty_like(matrix)
        np.put_along_axis(block, order, exclusive, axis=1)
        above[flat] = block.ravel()
    return above, above + probs.values


def aps_uniforms(n_documents: int, seed: int) -> np.ndarray:
    """The seeded ``U`` of each document's randomised APS score (a stream apart from the folds')."""
    return np.random.default_rng((check_seed(seed), 1)).random(n_documents)


def calibration_scores(scores: OptionScores, score: str, uniforms: np.ndarray | None = None) -> np.ndarray:
    """The gold option's conformal score per document: ``1 - p_gold`` (LAC) or the randomised APS score.

    ``uniforms`` (one per document in [0, 1]) are APS's ``U``; ``None`` draws them with seed 0.
    """
    return _calibration_scores(scores, score, uniforms, option_probabilities(scores), None)


def _calibration_scores(
    scores: OptionScores,
    score: str,
    uniforms: np.ndarray | None,
    probs: RaggedRows,
    above: np.ndarray | None,
) -> np.ndarray:
    """:func:`calibration_scores` from probabilities (and APS ranks) already computed."""
    gold = probs.at(probs.values, scores.targets)
    if check_score(score) == "lac":
        return 1.0 - gold
    above = _mass_at_or_above(probs)[0] if above is None else above
    u = aps_uniforms(len(scores), 0) if uniforms is None else np.asarray(uniforms, dtype=np.float64)
    if u.shape != gold.shape:
        raise CalibrationInputError(
            f"uniforms must hold one value per document ({gold.shape[0]}), got {u.shape}"
        )
    return probs.at(above, scores.targets) + u * gold


def conformal_threshold(gold_scores: np.ndarray, alpha: float) -> float:
    """The ``ceil((n + 1)(1 - alpha))``-th smallest score, ``inf`` when that rank exceeds n."""
    alpha = check_alpha(alpha)
    n = int(gold_scores.shape[0])
    if n == 0:
        raise CalibrationInputError("conformal calibration needs at least one document, got none")
    rank = math.ceil(round((n + 1) * (1.0 - alpha), 9))
    if rank > n:
        return float("inf")
    return float(np.partition(gold_scores, rank - 1)[rank - 1])


def answer_sets(scores: OptionScores, score: str, threshold: float) -> RaggedRows:
    """Membership (1.0 / 0.0) of every option in its document's set at ``threshold`` (ragged)."""
    if check_score(score) == "lac":
        member = 1.0 - option_probabilities(scores).values <= threshold
    else:
        above, _ = _mass_at_or_above(option_probabilities(scores))
        member = above < threshold  # the first option whose inclusive mass reaches the threshold is kept
    rows = scores.rows
    return RaggedRows(member.astype(np.float64), rows.starts, rows.lengths)


# ------------------------------------------------------------------------------------------------ results
@dataclass(frozen=True)
class ConformalSets:
    """Answer sets of a run's documents and what they achieve.

    ``members`` holds each document's set as 0/1 per option (ragged, in the caller's document order);
    ``covered`` and ``size`` are per document. ``thresholds`` has one entry (held out) or one per fold
    (cross-fitted; ``fold`` says which fold each document was in, else all zeros).
    """

    score: str
    alpha: float
    scheme: str
    """``"held-out"`` or ``"cross-fit"``."""
    members: RaggedRows
    covered: np.ndarray
    size: np.ndarray
    thresholds: tuple[float, ...]
    fold: np.ndarray
    n_calibration: int
    """Documents each threshold was calibrated on (cross-fitted: the smallest training part)."""

    def __len__(self) -> int:
        return int(self.covered.shape[0])

    @property
    def coverage(self) -> float:
        return float(self.covered.mean())

    @property
    def mean_size(self) -> float:
        return float(self.size.mean())

    def sets(self) -> list[list[int]]:
        """Each document's set as option indices, e.g. for the records."""
        flags = self.members.values > 0.5
        local = np.arange(flags.shape[0]) - self.members.repeat(self.members.starts)
        bounds = np.append(self.members.starts, flags.shape[0])
        return [local[a:b][flags[a:b]].tolist() for a, b in zip(bounds[:-1], bounds[1:], strict=True)]

    def stderrs(self, n_resamples: int = DEFAULT_RESAMPLES, seed: int = 1234) -> tuple[float, float]:
        """Bootstrap standard errors of (coverage, mean set size) over documents."""
        return (
            bootstrap_mean_stderr(self.covered, n_resamples, seed),
            bootstrap_mean_stderr(self.size, n_resamples, seed),
        )

    def summary(self, n_resamples: int = DEFAULT_RESAMPLES, seed: int = 1234) -> dict[str, float]:
        coverage_se, size_se = self.stderrs(n_resamples, seed)
        return {
            "coverage": self.coverage,
            "coverage_stderr": coverage_se,
            "set_size": self.mean_size,
            "set_size_stderr": size_se,
        }


def bootstrap_mean_stderr(
    values: np.ndarray, n_resamples: int = DEFAULT_RESAMPLES, seed: int = 1234
) -> float:
    """Bootstrap standard error of the mean of a per-document value with few distinct values.

    Drawing n documents with replacement and averaging depends only on how many draws hit each distinct
    value, a multinomial over the distinct values: the same distribution as the item bootstrap, at O(K) per
    resample for K distinct values (2 for coverage, the option count + 1 for set size).
    """
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, int) or n_resamples < 2:
        raise CalibrationInputError(
            f"n_resamples must be an integer >= 2, got {n_resamples!r}; 1000 is usual"
        )
    distinct, counts = np.unique(np.asarray(values, dtype=np.float64), return_counts=True)
    n = int(counts.sum())
    draws = np.random.default_rng(seed).multinomial(n, counts / n, size=n_resamples)
    return float(np.std(draws @ distinct / n, ddof=1))


def _sets_at(scores: OptionScores, score: str, threshold: float) -> tuple[RaggedRows, np.ndarray, np.ndarray]:
    members = answer_sets(scores, score, threshold)
    return members, members.at(members.values, scores.targets), members.row_sum(members.values)


def conformal_held_out(
    calibrate_on: OptionScores,
    score_on: OptionScores,
    score: str = "lac",
    alpha: float = DEFAULT_ALPHA,
    seed: int = 0,
) -> ConformalSets:
    """Threshold from ``calibrate_on`` (e.g. the val split's run), sets for ``score_on``.

    ``seed`` draws APS's ``U`` (LAC draws nothing).
    """
    score, alpha, seed = check_score(score), check_alpha(alpha), check_seed(seed)
    gold = calibration_scores(calibrate_on, score, aps_uniforms(len(calibrate_on), seed))
    threshold = conformal_threshold(gold, alpha)
    members, covered, size = _sets_at(score_on, score, threshold)
    return ConformalSets(
        score=score,
        alpha=alpha,
        scheme="held-out",
        members=members,
        covered=covered,
        size=size,
        thresholds=(threshold,),
        fold=np.zeros(len(score_on), dtype=np.int64),
        n_calibration=len(calibrate_on),
    )


def conformal_cross_fitted(
    scores: OptionScores, score: str = "lac", alpha: float = DEFAULT_ALPHA, n_folds: int = 5, seed: int = 0
) -> ConformalSets:
    """K seeded folds over documents; each fold's sets use the threshold of the other folds' documents.

    The folds are the same as cross-fitted recalibration's for the same seed (:func:`.fold_of_units`);
    ``seed`` also draws APS's ``U``.
    """
    score, alpha, seed = check_score(score), check_alpha(alpha), check_seed(seed)
    n_folds = check_folds(n_folds, len(scores), "document")
    fold = fold_of_units(len(scores), n_folds, seed)
    probs = option_probabilities(scores)
    above = _mass_at_or_above(probs)[0] if score == "aps" else None
    gold = _calibration_scores(scores, score, aps_uniforms(len(scores), seed), probs, above)
    thresholds = tuple(conformal_threshold(gold[fold != k], alpha) for k in range(n_folds))
    per_option = probs.repeat(np.asarray(thresholds)[fold])
    member = 1.0 - probs.values <= per_option if above is None else above < per_option
    members = RaggedRows(member.astype(np.float64), probs.starts, probs.lengths)
    return ConformalSets(
        score=score,
        alpha=alpha,
        scheme="cross-fit",
        members=members,
        covered=members.at(members.values, scores.targets),
        size=members.row_sum(members.values),
        thresholds=thresholds,
        fold=fold,
        n_calibration=int(min(np.sum(fold != k) for k in range(n_folds))),
    )


def result_key(quantity: str, score: str) -> str:
    """``conformal_coverage_lac``, ``conformal_set_size_aps``: the lm-eval result keys of the sets."""
    return f"conformal_{quantity}_{check_score(score)}"


RESULT_KEYS = tuple(result_key(q, s) for s in SCORES for q in ("coverage", "set_size"))
"""Result keys of :func:`conformal_results` (each also with ``_stderr``); coverage is higher-is-better
only up to 1 - alpha, set size lower is better."""


def conformal_results(
    logprobs: object,
    targets: object,
    alpha: float = DEFAULT_ALPHA,
    n_folds: int = 5,
    seed: int = 0,
    n_resamples: int = DEFAULT_RESAMPLES,
    bootstrap_seed: int = 1234,
) -> tuple[dict[str, float], dict[str, list[list[int]]]]:
    """What a multiple-choice task reports: cross-fitted LAC and APS sets of one run's documents.

    ``logprobs``: per document, its option log-likelihoods (ragged); ``targets``: the gold option index.
    Returns the numbers under :data:`RESULT_KEYS` (and ``<key>_stderr``) and, per score, each document's set
    as option indices in the order given (for the records). All arguments are checked before any work.
    """
    alpha, seed = check_alpha(alpha), check_seed(seed)
    scores = OptionScores.build(logprobs, targets)  # type: ignore[arg-type]
    check_folds(n_folds, len(scores), "document")
    numbers: dict[str, float] = {}
    sets: dict[str, list[list[int]]] = {}
    for score in SCORES:
        result = conformal_cross_fitted(scores, score, alpha, n_folds, seed)
        summary = result.summary(n_resamples, bootstrap_seed)
        for quantity, value in (("coverage", "coverage"), ("set_size", "set_size")):
            numbers[result_key(quantity, score)] = summary[value]
            numbers[result_key(quantity, score) + "_stderr"] = summary[value + "_stderr"]
        sets[score] = result.sets()
    return numbers, sets
