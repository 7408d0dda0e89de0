"""Is model B better calibrated than model A on the same documents? A paired, document-level bootstrap.

Comparing two ECEs by their separate error bars is too conservative when both models answered the same
questions (their errors are correlated through the questions) and wrong when the items inside a document are
correlated (the tokens of a ``calib_clm`` article). So both samples are resampled *together*, by document:
each resample draws documents with replacement and every item of a drawn document comes along, in both
models at once. One item per document (MMLU, facts) makes this the ordinary paired item bootstrap; a model
pair with different tokenizers still pairs, because documents, not tokens, are what is drawn.

The interval is the percentile interval of (metric(B) - metric(A)) over resamples.

A study states ten or more claims at once, so each claim also gets a p-value and the family a Holm
correction (:func:`holm_adjust`). The p-value is the test inversion of that same percentile interval: the
smallest ``alpha`` at which the ``1 - alpha`` interval would be decisive for the claim (exclude 0 for
``higher``/``lower``; lie wholly inside or wholly outside ``±margin`` for ``same``). So a raw verdict at 95%
and ``p < 0.05`` say the same thing, and Holm's adjusted p-value reads on the same scale. Counts use the
Monte Carlo ``(k + 1) / (B + 1)`` rule, so B resamples never claim ``p`` below ``2 / (B + 1)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .bootstrap import MAX_CHUNK_ELEMENTS, SMECE_MAX_RESAMPLES, resample_multiplicities
from .calibration_error import smooth_calibration_error
from .data import CalibrationData
from .errors import CalibrationInputError
from .prepared import PreparedData
from .registry import get_metric
from .validation import check_n_bins


@dataclass(frozen=True)
class PairedDifference:
    """``value_b - value_a`` with a percentile bootstrap interval over documents."""

    key: str
    value_a: float
    value_b: float
    difference: float
    low: float
    high: float
    level: float
    n_documents: int
    n_resamples: int
    differences: np.ndarray | None = field(default=None, repr=False, compare=False)
    """The resampled differences behind the interval (what :meth:`p_value` counts); None when unknown."""

    def _draws(self) -> np.ndarray:
        if self.differences is None:
            raise CalibrationInputError(
                "this PairedDifference carries no resampled differences; compute it with paired_difference"
            )
        d = np.asarray(self.differences, dtype=float)
        return d[~np.isnan(d)]

    def _one_sided(self, expect: str, margin: float | None) -> tuple[float, float]:
        """(p for *supported*, p for *contradicted*), each before the cap at 1; see :meth:`p_value`."""
        d = self._draws()

        def share(mask: np.ndarray) -> float:
            return (np.count_nonzero(mask) + 1.0) / (d.size + 1.0)

        if expect == "same":
            if margin is None or not margin > 0:
                raise CalibrationInputError(f"expect 'same' needs a margin > 0, got {margin!r}")
            inside = 2.0 * max(share(d <= -margin), share(d >= margin))
            outside = 2.0 * min(share(d <= margin), share(d >= -margin))
            return inside, outside
        if expect not in ("higher", "lower"):
            raise CalibrationInputError(f"expect must be 'higher', 'lower' or 'same', got {expect!r}")
        above, below = 2.0 * share(d <= 0), 2.0 * share(d >= 0)  # evidence that B - A > 0, resp. < 0
        return (above, below) if expect == "higher" else (below, above)

    def p_value(self, expect: str, margin: float | None = None) -> float:
        """The smallest ``alpha`` at which the ``1 - alpha`` percentile interval makes the verdict decisive.

        ``higher``/``lower`` (two-sided, since a claim can also be contradicted): ``2 * min(P(d <= 0),
        P(d >= 0))`` over the resampled differences ``d``. ``same`` with ``margin`` M: the interval lies
        inside ±M once ``alpha >= 2 * max(P(d <= -M), P(d >= M))`` (TOST, each side at ``alpha / 2``, like
        the 95% interval rule) and wholly outside once ``alpha > 2 * min(P(d <= M), P(d >= -M))``; the p-value
        is the smaller of the two (for a given true difference only one of those two errors is possible).
        Each share is ``(k + 1) / (B + 1)``; the result is capped at 1.
        """
        return float(min(1.0, *self._one_sided(expect, margin)))

    def decision(self, expect: str, margin: float | None = None) -> str:
        """The decisive verdict (*supported* or *contradicted*) whose evidence :meth:`p_value` measures."""
        supported, contradicted = self._one_sided(expect, margin)
        return "supported" if supported <= contradicted else "contradicted"

    def verdict(self, expect: str, margin: float | None = None) -> str:
        """How the interval reads against a claim about B - A.

        ``"higher"``/``"lower"``: *supported* when the interval excludes 0 on the expected side,
        *contradicted* when it excludes 0 on the other side, else *inconclusive*.
        ``"same"`` (an equivalence check; needs ``margin`` > 0): *supported* when the whole interval lies
        within [-margin, margin], *contradicted* when it lies wholly outside that band, else *inconclusive*.
        A claim that B "keeps" A's calibration is "same", not "not higher": an interval that merely includes
        0 says nothing when it is wide.
        """
        if expect == "same":
            if margin is None or not margin > 0:
                raise CalibrationInputError(f"expect 'same' needs a margin > 0, got {margin!r}")
            if -margin <= self.low and self.high <= margin:
                return "supported"
            if self.low > margin or self.high < -margin:
                return "contradicted"
            return "inconclusive"
        if expect not in ("higher", "lower"):
            raise CalibrationInputError(f"expect must be 'higher', 'lower' or 'same', got {expect!r}")
        if self.low > 0:
            return "supported" if expect == "higher" else "contradicted"
        if self.high < 0:
            return "supported" if expect == "lower" else "contradicted"
        return "inconclusive"


def _check_groups(name: str, groups: object, n_items: int) -> np.ndarray:
    array = np.asarray(groups)
    if array.ndim != 1 or array.shape[0] != n_items:
        raise CalibrationInputError(
            f"{name} must give one document index per item ({n_items} items), got shape {array.shape}"
        )
    if not np.issubdtype(array.dtype, np.integer) or (array.size and array.min() < 0):
        raise CalibrationInputError(f"{name} must hold document indices 0..D-1 (non-negative integers)")
    return array.astype(np.int64)


@dataclass(frozen=True)
class _Side:
    """One model's items, sorted once for the batched metrics, and each item's document index."""

    data: CalibrationData
    groups: np.ndarray
    prepared: PreparedData
    order: np.ndarray  # sorted position -> item, the order PreparedData sorts items into

    @classmethod
    def build(cls, data: CalibrationData, groups: np.ndarray) -> _Side:
        order = np.argsort(data.confidence, kind="stable")
        return cls(data, groups, PreparedData.build(data), order)

    def metric(self, key: str, doc_rows: np.ndarray, n_bins: int) -> np.ndarray:
        """The metric under each row of document multiplicities (rows x documents)."""
        info = get_metric(key)
        item_rows = doc_rows[:, self.groups]  # every item inherits its document's multiplicity
        if info.batched is None:  # smECE: relplot has no batched form
            conf, correct = self.data.confidence, self.data.correct
            return np.array(
                [smooth_calibration_error(np.repeat(conf, r), np.repeat(correct, r)) for r in item_rows]
            )
        return info.batched(self.prepared, item_rows[:, self.order], n_bins)


def paired_difference(
    key: str,
    a: CalibrationData,
    b: CalibrationData,
    groups_a: object | None = None,
    groups_b: object | None = None,
    n_resamples: int = 1000,
    seed: int = 1234,
    n_bins: int = 10,
    level: float = 0.95,
) -> PairedDifference:
    """metric(b) - metric(a) and its paired document-bootstrap interval.

    ``groups_a``/``groups_b`` give each item's document index (0..D-1, the same D documents in both); omit
    them when every item is its own document, which needs ``len(a) == len(b)`` with item i the same question.
    smECE is resampled at most 100 times (relplot has no batched form).
    """
    n_bins = check_n_bins(n_bins)
    if isinstance(level, bool) or not isinstance(level, int | float) or not 0.0 < level < 1.0:
        raise CalibrationInputError(f"level must be in (0, 1), got {level!r}; e.g. 0.95")
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, int) or n_resamples < 2:
        raise CalibrationInputError(f"n_resamples must be an integer >= 2, got {n_resamples!r}")
    if groups_a is None and groups_b is None:
        if len(a) != len(b):
            raise CalibrationInputError(
                f"the two samples have {len(a)} and {len(b)} items; pair them by document (groups_a, "
                "groups_b) or evaluate both models on the same documents"
            )
        groups_a = groups_b = np.arange(len(a))
    elif groups_a is None or groups_b is None:
        raise CalibrationInputError("pass both groups_a and groups_b, or neither")
    ga, gb = _check_groups("groups_a", groups_a, len(a)), _check_groups("groups_b", groups_b, len(b))
    n_docs = int(max(ga.max(), gb.max())) + 1
    missing = np.setdiff1d(np.arange(n_docs), np.intersect1d(ga, gb))
    if missing.size:
        raise CalibrationInputError(
            f"document {int(missing[0])} has items in only one of the two samples ({missing.size} such "
            "documents); both models must be scored on the same documents"
        )
    if get_metric(key).batched is None:
        n_resamples = min(n_resamples, SMECE_MAX_RESAMPLES)
    info = get_metric(key)
    value_a, value_b = info.compute(a, n_bins), info.compute(b, n_bins)
    side_a, side_b = _Side.build(a, ga), _Side.build(b, gb)
    rows_per_chunk = max(1, MAX_CHUNK_ELEMENTS // max(len(a), len(b)))
    diffs = []
    with np.errstate(invalid="ignore", divide="ignore"):
        for doc_chunk in resample_multiplicities(n_docs, n_resamples, seed):
            for start in range(0, doc_chunk.shape[0], rows_per_chunk):
                rows = doc_chunk[start : start + rows_per_chunk]
                diffs.append(side_b.metric(info.key, rows, n_bins) - side_a.metric(info.key, rows, n_bins))
    values = np.concatenate(diffs)
    values = values[~np.isnan(values)]
    tail = 100.0 * (1.0 - level) / 2.0
    low, high = np.percentile(values, [tail, 100.0 - tail]) if values.size else (np.nan, np.nan)
    return PairedDifference(
        key=info.key,
        value_a=float(value_a),
        value_b=float(value_b),
        difference=float(value_b - value_a),
        low=float(low),
        high=float(high),
        level=float(level),
        n_documents=n_docs,
        n_resamples=int(values.size),
        differences=values,
    )


def holm_adjust(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (family-wise error), in the order given.

    Sort ascending; the i-th smallest (1-based) is multiplied by ``m - i + 1``, then made non-decreasing
    (a running maximum) and capped at 1. A claim "holds after correction" when its adjusted p-value is below
    the level. Holm needs no independence between the claims (the claims of one study share models and
    documents), and it is uniformly more powerful than Bonferroni.
    """
    values = np.asarray(list(p_values), dtype=float)
    if values.size == 0:
        return []
    if np.isnan(values).any() or (values < 0).any() or (values > 1).any():
        raise CalibrationInputError(f"p-values must lie in [0, 1], got {values.tolist()}")
    m = values.size
    order = np.argsort(values, kind="stable")
    scaled = np.minimum(1.0, (m - np.arange(m)) * values[order])
    adjusted = np.empty(m)
    adjusted[order] = np.maximum.accumulate(scaled)
    return adjusted.tolist()
