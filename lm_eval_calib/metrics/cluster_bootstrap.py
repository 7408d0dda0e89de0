"""Cluster bootstrap: resample whole documents, for samples with many correlated items per document.

The tokens of one ``calib_clm`` article share its topic, style and difficulty, so they are not independent
items: resampling tokens one by one (:mod:`.bootstrap`) treats 60 articles of 4,000 tokens as 240,000
independent draws and gives standard errors far too small. Here a resample draws D documents with
replacement out of the D documents and takes every item of each drawn document (as often as it was drawn);
the metric is computed from that pooled resample exactly as from the original sample (for binned metrics the
bins are recomputed on the resample: equal-mass edges move with it).

The contract is the item bootstrap's: seeded, ``n_resamples`` resamples (at most 100 for smECE), the same
random stream (:func:`.bootstrap.resample_multiplicities` over D documents instead of n items), ``nan`` where
a metric is undefined on a resample, the sample standard deviation as the stderr.

* **Order of documents.** Draws pick positions in a canonical document order: documents sorted by their
  mean confidence, then mean correctness, mean Brier, mean NLL, then size (the item bootstrap's sort key,
  :class:`.prepared.PreparedData`, applied to document means). So the result does not depend on the order the
  documents came in (records gathered from several processes, a report's file order), and a sample of
  one-item documents is resampled draw for draw as the item bootstrap resamples it: with one item per
  document this IS the item bootstrap, and :func:`cluster_bootstrap_values` simply calls it.
* **Speed.** The metrics that depend on the items only through per-document sums are computed from
  per-document sufficient statistics: the means (accuracy, Brier, NLL: each document's sum and size) and the
  equal-width binned metrics (ECE, MCE, RMS-CE: each document's count, summed confidence and number correct
  per bin, which is all :func:`.binning.bin_totals` needs), so a resample costs O(D), not O(n). The rest
  (equal-mass bins, AUROC, AURC, PRR) need the resample's order of items; every item gets its document's
  multiplicity through one index array (no per-resample sort, no per-resample draw of n items) and the
  batched metric runs on those weights. smECE loops over at most 100 resamples, as in the item bootstrap.
  All of it is exact: the same numbers (to rounding) as concatenating the drawn documents and computing the
  metric on them, which ``tests/metrics/test_cluster_bootstrap.py`` checks against a plain loop.
* **Large samples.** Above :data:`.bootstrap.CELL_BOOTSTRAP_MIN_ITEMS` items the four order-based metrics use
  the item bootstrap's confidence cells at that size (:mod:`.cells`): the documents are still drawn exactly
  (each cell gets the drawn documents' items in it), only the values inside a cell (1/2048 of the items)
  are pooled. The sums-based metrics stay exact at any size.
* Documents without items (a record with no tokens) hold nothing to resample and are not counted in D.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
from scipy import sparse

from .binning import width_bin_index
from .bootstrap import (
    CELL_BOOTSTRAP_MIN_ITEMS,
    MAX_CHUNK_ELEMENTS,
    SMECE_MAX_RESAMPLES,
    _check_n_resamples,
    bootstrap_values,
    check_level,
    percentile_interval_of,
    resample_multiplicities,
    stderr_of,
)
from .calibration_error import smooth_calibration_error
from .cells import MAX_GROUPS
from .data import CalibrationData
from .errors import CalibrationInputError
from .prepared import PreparedData
from .registry import MetricInfo, get_metric
from .validation import check_n_bins

FIELDS = ("confidence", "correct", "brier", "nll")

WIDTH_BINNED = frozenset({"ece", "mce", "rmsce"})
"""Metrics that depend on the items only through equal-width bin totals (count, summed confidence, number
correct per bin). A test checks that their per-document path equals the item path on the same weights."""


def document_groups(sizes: object) -> np.ndarray:
    """Each item's document index (0..D-1) from the number of items of each document, in item order."""
    counts = np.asarray(sizes)
    if counts.ndim != 1 or not np.issubdtype(counts.dtype, np.integer) or (counts.size and counts.min() < 0):
        raise CalibrationInputError(
            f"sizes must be a flat list of item counts (integers >= 0), got {sizes!r}"
        )
    return np.repeat(np.arange(counts.shape[0], dtype=np.int64), counts)


def _check_groups(groups: object, n_items: int) -> np.ndarray:
    array = np.asarray(groups)
    if array.ndim != 1 or array.shape[0] != n_items:
        raise CalibrationInputError(
            f"groups must give one document label per item ({n_items} items), got shape {array.shape}; "
            "e.g. document_groups(items per document)"
        )
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise CalibrationInputError(f"groups must hold integer document labels, got dtype {array.dtype}")
    return array.astype(np.int64)


@dataclass(frozen=True)
class Documents:
    """A sample's items with their documents in the canonical order (module doc), ready to be resampled.

    The sorted view of the items is built on first use only: the metrics resampled through per-document
    sums never need it, and sorting is most of the cost of preparing a token task's sample."""

    data: CalibrationData
    document: np.ndarray
    """(n,) canonical document index of each item in ``data``'s order."""
    sizes: np.ndarray
    """(D,) items of each document, canonical order."""

    @property
    def n_documents(self) -> int:
        return int(self.sizes.shape[0])

    @classmethod
    def build(cls, data: CalibrationData, groups: object) -> Documents:
        labels = _check_groups(groups, len(data))
        if len(data) == 0:
            raise CalibrationInputError("no items to resample; score at least one document")
        _, label_index = np.unique(labels, return_inverse=True)  # documents in label order
        sizes = np.bincount(label_index).astype(np.int64)
        means = [np.bincount(label_index, weights=getattr(data, name)) / sizes for name in FIELDS]
        canonical = np.lexsort((sizes, means[3], means[2], means[1], means[0]))  # last key is primary
        rank = np.empty_like(canonical)
        rank[canonical] = np.arange(canonical.shape[0])
        return cls(data=data, document=rank[label_index], sizes=sizes[canonical])

    @cached_property
    def prepared(self) -> PreparedData:
        """The items sorted as the batched metrics need them (:class:`.prepared.PreparedData`)."""
        return PreparedData.build(self.data)

    @cached_property
    def item_order(self) -> np.ndarray:
        """(n,) the item of ``data`` at each position of ``prepared`` (PreparedData's sort key)."""
        data = self.data
        return np.lexsort((data.nll, data.brier, data.correct, data.confidence))

    @cached_property
    def sorted_document(self) -> np.ndarray:
        """(n,) canonical document index of each item in ``prepared``'s order."""
        return self.document[self.item_order]

    def item_weights(self, document_rows: np.ndarray) -> np.ndarray:
        """(B, n) item multiplicities in ``prepared``'s order: every item takes its document's."""
        return document_rows[:, self.sorted_document]


@dataclass(frozen=True)
class _Cells:
    """Pseudo-items standing for groups (cells) of items, and how many items of each document each holds.

    A cell's pseudo-item carries the mean values of its items; weighting it by the number of its items the
    resample holds (document multiplicities x ``counts``) gives every metric that only sums items within
    cells the resample's sums."""

    prepared: PreparedData
    counts: sparse.csc_array
    """(D, K) items of each document in each cell, cells in ``prepared``'s order."""

    @classmethod
    def build(cls, docs: Documents, cell: np.ndarray, clip_confidence: bool) -> _Cells:
        """Cells of the items by ``cell`` (one label per item in ``docs.data``'s order; split by correct)."""
        data = docs.data
        _, cell = np.unique(2 * cell + data.correct.astype(np.int64), return_inverse=True)
        size = np.bincount(cell)
        means = {name: np.bincount(cell, weights=getattr(data, name)) / size for name in FIELDS}
        if clip_confidence:  # a mean can round past the values it averages; keep it inside its bin
            low, high = np.full(size.shape[0], np.inf), np.full(size.shape[0], -np.inf)
            np.minimum.at(low, cell, data.confidence)
            np.maximum.at(high, cell, data.confidence)
            means["confidence"] = np.clip(means["confidence"], low, high)
        order = np.lexsort((means["nll"], means["brier"], means["correct"], means["confidence"]))
        position = np.empty_like(order)
        position[order] = np.arange(order.shape[0])
        counts = sparse.csc_array(
            (np.ones(len(data)), (docs.document, position[cell])), shape=(docs.n_documents, size.shape[0])
        )
        counts.sum_duplicates()
        pooled = CalibrationData(*(means[name][order] for name in FIELDS))
        return cls(PreparedData.build(pooled), counts)  # already in PreparedData's order: the sort keeps it

    def weights(self, document_rows: np.ndarray) -> np.ndarray:
        """(B, K) items of each cell in each resample."""
        return (self.counts.T @ document_rows.T.astype(np.float64)).T


def _confidence_cells(docs: Documents, n_bins: int) -> np.ndarray:
    """Each item's group among the confidence-sorted items, as :class:`.cells.Cells` groups them: the runs
    of equal confidence when there are at most ``MAX_GROUPS`` of them, else ``MAX_GROUPS`` near-equal-count
    groups also cut at the equal-width bin edges (labels in ``docs.data``'s order)."""
    sample = docs.prepared.sample
    n = len(sample)
    if sample.run_starts.shape[0] <= MAX_GROUPS:
        starts = sample.run_starts
    else:
        edges = np.searchsorted(sample.confidence, np.linspace(0.0, 1.0, n_bins + 1), side="left")
        starts = np.unique(np.concatenate([np.arange(MAX_GROUPS) * n // MAX_GROUPS, edges]))
        starts = starts[starts < n]
    group_sorted = np.repeat(np.arange(starts.shape[0]), np.diff(np.append(starts, n)))
    group = np.empty(n, dtype=np.int64)
    group[docs.item_order] = group_sorted
    return group


def _cells_for(info: MetricInfo, docs: Documents, n_bins: int, cell_min_items: int) -> _Cells | None:
    """Where the metric allows it, cells that make a resample cost O(cells) instead of O(items) (module doc);
    None for the item path."""
    if info.mean_of is not None:  # a mean: each document's sum and size, exact
        return _Cells.build(docs, docs.document, clip_confidence=False)
    if info.key in WIDTH_BINNED:  # each document's totals per equal-width bin, exact
        bins = width_bin_index(docs.data.confidence, n_bins)
        return _Cells.build(docs, docs.document * n_bins + bins, clip_confidence=True)
    if len(docs.data) > cell_min_items:  # as the item bootstrap above this size: shared confidence cells
        return _Cells.build(docs, _confidence_cells(docs, n_bins), clip_confidence=True)
    return None


def _by_total(batched, prepared: PreparedData, weights: np.ndarray, n_bins: int) -> np.ndarray:
    """The batched metric, called once per resample size: document resamples differ in their number of
    items, and the risk-coverage metrics (AURC, PRR) take every row of one call to have the same total
    weight (the item bootstrap's resamples all have n)."""
    totals = np.rint(weights.sum(axis=1)).astype(np.int64)
    out = np.empty(weights.shape[0])
    for total in np.unique(totals):
        same = np.flatnonzero(totals == total)
        out[same] = batched(prepared, weights[same], n_bins)
    return out


def _values(
    info: MetricInfo, docs: Documents, n_resamples: int, seed: int, n_bins: int, cell_min_items: int
) -> np.ndarray:
    """The metric on each document resample (the general path; module doc)."""
    cells = _cells_for(info, docs, n_bins, cell_min_items) if info.batched is not None else None
    sums_only = info.mean_of is not None or info.key in WIDTH_BINNED
    width = len(cells.prepared) if cells is not None else len(docs.prepared)
    rows_per_chunk = max(1, MAX_CHUNK_ELEMENTS // width)
    values = []
    for document_chunk in resample_multiplicities(docs.n_documents, n_resamples, seed):
        for start in range(0, document_chunk.shape[0], rows_per_chunk):
            rows = document_chunk[start : start + rows_per_chunk]
            if cells is not None and sums_only:  # means, equal-width bins: any total weight per row
                values.append(info.batched(cells.prepared, cells.weights(rows), n_bins))
            elif cells is not None:
                values.append(_by_total(info.batched, cells.prepared, cells.weights(rows), n_bins))
            elif info.batched is not None:
                values.append(_by_total(info.batched, docs.prepared, docs.item_weights(rows), n_bins))
            else:  # smECE: relplot has no batched form
                conf, correct = docs.data.confidence, docs.data.correct
                item_rows = rows[:, docs.document]
                values.append(
                    np.array(
                        [
                            smooth_calibration_error(np.repeat(conf, r), np.repeat(correct, r))
                            for r in item_rows
                        ]
                    )
                )
    return np.concatenate(values)


def cluster_bootstrap_values(
    key: str,
    data: CalibrationData,
    groups: object,
    n_resamples: int = 1000,
    seed: int = 1234,
    n_bins: int = 10,
) -> np.ndarray:
    """The metric on each document resample (``nan`` where undefined); smECE gives at most 100 values.

    ``groups`` gives each item's document label (any integers; :func:`document_groups` builds them from the
    items per document). With one item per document this is :func:`.bootstrap.bootstrap_values` itself.
    """
    info = get_metric(key)
    n_resamples, n_bins = _check_n_resamples(n_resamples), check_n_bins(n_bins)
    docs = Documents.build(data, groups)
    if docs.n_documents == len(data):
        return bootstrap_values(key, data, n_resamples, seed, n_bins)
    if info.batched is None:
        n_resamples = min(n_resamples, SMECE_MAX_RESAMPLES)
    with np.errstate(invalid="ignore", divide="ignore"):
        return _values(info, docs, n_resamples, seed, n_bins, CELL_BOOTSTRAP_MIN_ITEMS)


def cluster_bootstrap_stderr(
    key: str,
    data: CalibrationData,
    groups: object,
    n_resamples: int = 1000,
    seed: int = 1234,
    n_bins: int = 10,
) -> float:
    """Document-bootstrap standard error: sample std (ddof=1) of the metric over document resamples."""
    return stderr_of(cluster_bootstrap_values(key, data, groups, n_resamples, seed, n_bins))


def cluster_bootstrap_interval(
    key: str,
    data: CalibrationData,
    groups: object,
    n_resamples: int = 1000,
    seed: int = 1234,
    n_bins: int = 10,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile interval over document resamples (the same resamples as the stderr)."""
    check_level(level)
    values = cluster_bootstrap_values(key, data, groups, n_resamples, seed, n_bins)
    return percentile_interval_of(values, level)
